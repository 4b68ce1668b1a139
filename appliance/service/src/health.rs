//! Health as a contract: the conditions that need someone (a ledger that fails its check, a model
//! package refused, a full state disk, a case that could not be processed), each set where it is
//! found and cleared when it clears. The heartbeat reports them (`conditions`, `last_error`),
//! `crlm fleet watch` shows their word (LEDGER, MODEL, DISK FULL, FAILED) and the panel its
//! problem screen.
//!
//! Messages carry no patient data: pseudonyms, counts and the box's own paths only.

use crlm_mqtt::{Condition, ConditionCode};
use crlm_panel::state::ProblemView;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

#[derive(Default)]
pub struct Health {
    conditions: Mutex<BTreeMap<ConditionCode, String>>,
}

impl Health {
    /// Set (or update) a condition; true when it is new.
    pub fn set(&self, code: ConditionCode, message: impl Into<String>) -> bool {
        self.conditions.lock().map(|mut c| c.insert(code, message.into()).is_none()).unwrap_or(false)
    }

    /// Clear a condition; true when it was set.
    pub fn clear(&self, code: ConditionCode) -> bool {
        self.conditions.lock().map(|mut c| c.remove(&code).is_some()).unwrap_or(false)
    }

    pub fn has(&self, code: ConditionCode) -> bool {
        self.conditions.lock().map(|c| c.contains_key(&code)).unwrap_or(false)
    }

    /// Every condition, most pressing first (the order of [`ConditionCode`]).
    pub fn list(&self) -> Vec<Condition> {
        self.conditions
            .lock()
            .map(|c| c.iter().map(|(code, message)| Condition { code: *code, message: message.clone() }).collect())
            .unwrap_or_default()
    }

    /// The panel's problem screen for the most pressing condition.
    pub fn problem(&self) -> Option<ProblemView> {
        let c = self.list().into_iter().next()?;
        let (title, action) = match c.code {
            ConditionCode::Ledger => (
                "Ledger check failed: predictions held",
                "Files are still received. Call support: the ledger must be checked (crlm ledger verify).",
            ),
            ConditionCode::Model => (
                "Model package refused: predictions held",
                "Files are still received. Call support: a valid, signed model package must be installed (crlm model verify), then the service restarted.",
            ),
            ConditionCode::DiskFull => {
                ("State disk full", "Call support: free space on the state disk. Nothing received is lost.")
            }
            ConditionCode::Failed => {
                ("A case could not be processed", "The next cases go on. Call support with the case pseudonym.")
            }
        };
        Some(ProblemView {
            title: title.into(),
            what: c.message,
            action: action.into(),
            code: format!("health.{}", code_name(c.code)),
        })
    }
}

fn code_name(code: ConditionCode) -> &'static str {
    match code {
        ConditionCode::Ledger => "ledger",
        ConditionCode::Model => "model",
        ConditionCode::DiskFull => "disk_full",
        ConditionCode::Failed => "failed",
    }
}

/// Does an error's text say the disk is full (SQLite's SQLITE_FULL, the kernel's ENOSPC)?
pub fn is_disk_full(error: &str) -> bool {
    error.contains("database or disk is full") || error.contains("No space left on device")
}

/// The state disk's condition: `Some(message)` when it has less than `min_free_mb` free.
pub fn state_disk_low(state: &Path, min_free_mb: u64) -> Option<String> {
    let free = crlm_drivers::health::disk_free_bytes(state)?;
    (free < min_free_mb.saturating_mul(1 << 20))
        .then(|| format!("the state disk has {} MB free (state.min_free_mb = {min_free_mb})", free >> 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_set_listed_most_pressing_first_and_cleared() {
        let h = Health::default();
        assert!(h.problem().is_none());
        assert!(h.set(ConditionCode::Failed, "case P-1 could not be processed"));
        assert!(h.set(ConditionCode::DiskFull, "0 MB free"));
        assert!(!h.set(ConditionCode::DiskFull, "1 MB free"), "an update is not new");
        let codes: Vec<_> = h.list().iter().map(|c| c.code).collect();
        assert_eq!(codes, [ConditionCode::DiskFull, ConditionCode::Failed]);
        assert_eq!(h.problem().map(|p| p.title), Some("State disk full".into()));
        assert!(h.clear(ConditionCode::DiskFull) && !h.clear(ConditionCode::DiskFull));
        assert_eq!(h.list().len(), 1);
        assert!(is_disk_full("state: database or disk is full") && !is_disk_full("locked"));
        // The reserve: no disk has u64::MAX MB free, and every disk has more than 0.
        assert!(state_disk_low(Path::new("/"), u64::MAX).is_some());
        assert!(state_disk_low(Path::new("/"), 0).is_none());
    }
}

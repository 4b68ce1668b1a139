//! Quarantine: a JSON reason file per bad file or ineligible case, naming the file, the check
//! that failed and what staff should do. In `move` mode the file also leaves the share.
//! Reason files are versioned and written atomically; they stay on the box (they name files,
//! and file names may carry identifiers).

use crlm_config::QuarantineMode;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const RECORD_VERSION: u32 = 1;

/// One quarantine record, as written to `<quarantine>/<id>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineRecord {
    pub version: u32,
    pub id: String,
    pub created_at: String,
    /// Path relative to the share; `None` for a case-level record (ineligible case).
    pub file: Option<String>,
    pub case: Option<String>,
    pub kind: String,
    pub check: String,
    pub reason: String,
    pub action: String,
    pub sha256: Option<String>,
    /// Where the file was moved (move mode).
    pub moved_to: Option<String>,
}

pub struct Quarantine {
    pub dir: PathBuf,
    pub mode: QuarantineMode,
}

impl Quarantine {
    /// Write the record; in move mode, first move the file out of the share.
    pub fn record(&self, share_root: &Path, mut rec: QuarantineRecord) -> std::io::Result<PathBuf> {
        crlm_core::fsutil::ensure_dir(&self.dir, 0o750)?;
        if self.mode == QuarantineMode::Move
            && let Some(rel) = &rec.file
        {
            let src = share_root.join(rel);
            let name = Path::new(rel).file_name().map(|n| n.to_os_string()).unwrap_or_default();
            let dest_dir = self.dir.join(&rec.id);
            crlm_core::fsutil::ensure_dir(&dest_dir, 0o750)?;
            let dest = dest_dir.join(name);
            // The source must still be a plain file (no symlink swapped in since the check).
            let is_plain = std::fs::symlink_metadata(&src).map(|m| m.file_type().is_file()).unwrap_or(false);
            if is_plain {
                if std::fs::rename(&src, &dest).is_err() {
                    // Another file system (an NFS share): copy, sync, then remove.
                    std::fs::copy(&src, &dest)?;
                    std::fs::File::open(&dest)?.sync_all()?;
                    std::fs::remove_file(&src)?;
                }
                crlm_core::fsutil::sync_dir(&dest_dir)?;
                rec.moved_to = Some(dest.display().to_string());
            }
        }
        let path = self.dir.join(format!("{}.json", rec.id));
        let json = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
        crlm_core::fsutil::write_atomic(&path, &json, 0o640)?;
        Ok(path)
    }
}

/// A record id that sorts by time: `20261126T194501Z-000123`.
pub fn record_id(seq: i64) -> String {
    format!("{}-{seq:06}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
}

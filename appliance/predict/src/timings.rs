//! Where a case's time went: named steps in milliseconds, in the order they ran.

use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt;

/// Steps in ms, in order: the preparation's `gather` (`crlm predict` only), `ct`, `clinical`,
/// `slide`, then `model` and `total` when the model ran; the service adds its own `files`,
/// `ledger` and `outputs`. Serialises (and displays) as a JSON object of step to ms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings(Vec<(&'static str, f64)>);

impl Timings {
    /// A step's time, added after those before it (a step named twice keeps its last time).
    pub fn push(&mut self, step: &'static str, ms: f64) {
        self.0.retain(|(s, _)| *s != step);
        self.0.push((step, ms));
    }

    /// A step's time, added before every other.
    pub fn push_front(&mut self, step: &'static str, ms: f64) {
        self.0.retain(|(s, _)| *s != step);
        self.0.insert(0, (step, ms));
    }

    /// The time of one step, if it ran.
    pub fn get(&self, step: &str) -> Option<f64> {
        self.0.iter().find(|(s, _)| *s == step).map(|(_, ms)| *ms)
    }

    /// Another set of timings' steps after these.
    pub fn extend(&mut self, other: Timings) {
        for (step, ms) in other.0 {
            self.push(step, ms);
        }
    }
}

impl<const N: usize> From<[(&'static str, f64); N]> for Timings {
    fn from(steps: [(&'static str, f64); N]) -> Self {
        let mut t = Timings::default();
        for (step, ms) in steps {
            t.push(step, ms);
        }
        t
    }
}

impl Serialize for Timings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (step, ms) in &self.0 {
            m.serialize_entry(step, ms)?;
        }
        m.end()
    }
}

/// The JSON object, as in the service's log line (`timings_ms={"files":1.2,...}`).
impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_order_and_a_repeated_step_its_last_time() {
        let mut t = Timings::from([("ct", 10.0), ("clinical", 0.5)]);
        t.push_front("gather", 2.0);
        t.push("model", 30.0);
        t.push("ct", 11.0);
        assert_eq!(t.get("ct"), Some(11.0));
        assert_eq!(t.get("slide"), None);
        assert_eq!(t.to_string(), r#"{"gather":2.0,"clinical":0.5,"model":30.0,"ct":11.0}"#);
        let v: serde_json::Value = serde_json::from_str(&t.to_string()).unwrap();
        assert_eq!(v["model"], 30.0);
    }
}

//! When is a file complete? Its size and modification time must stay unchanged for the quiet
//! window (or a done-marker says so). Pure logic over explicit times, so it is tested against a
//! model with random write sequences.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the file looked like at one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Changed recently: wait.
    Wait,
    /// Unchanged for the quiet window (or marked done): check its content.
    Stable,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    obs: Observation,
    since: f64,
    incomplete_since: Option<f64>,
}

/// Per-path memory of the last observation and since when it has been unchanged.
#[derive(Debug, Default)]
pub struct StabilityTracker {
    tracks: HashMap<PathBuf, Track>,
}

impl StabilityTracker {
    /// Record an observation at time `now` (seconds, monotonic) and judge it.
    pub fn observe(&mut self, path: &Path, obs: Observation, now: f64, quiet: f64, marked_done: bool) -> Verdict {
        let t = self
            .tracks
            .entry(path.to_path_buf())
            .and_modify(|t| {
                if t.obs != obs {
                    *t = Track { obs, since: now, incomplete_since: None };
                }
            })
            .or_insert(Track { obs, since: now, incomplete_since: None });
        if marked_done || now - t.since >= quiet { Verdict::Stable } else { Verdict::Wait }
    }

    /// The content check said "incomplete": how long has this unchanged version been so?
    pub fn incomplete_for(&mut self, path: &Path, now: f64) -> f64 {
        match self.tracks.get_mut(path) {
            Some(t) => now - *t.incomplete_since.get_or_insert(now),
            None => 0.0,
        }
    }

    /// Forget paths not seen in the latest scan (deleted or moved).
    pub fn retain_seen(&mut self, seen: &std::collections::HashSet<PathBuf>) {
        self.tracks.retain(|p, _| seen.contains(p));
    }

    pub fn forget(&mut self, path: &Path) {
        self.tracks.remove(path);
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random writes and scans against a model: the tracker says Stable exactly when the model's
    /// last change is at least `quiet` old (or the file is marked done).
    #[test]
    fn tracker_matches_model_under_random_writes() {
        let quiet = 3.0;
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = StabilityTracker::default();
            let p = Path::new("f");
            let mut obs = Observation { size: 0, mtime_ns: 0, ino: 1 };
            let mut now = 0.0f64;
            let mut first_seen_version: Option<f64> = None;
            let mut changed_since_scan = true;
            for _ in 0..60 {
                now += rng.random_range(0.1..2.0);
                if rng.random_bool(0.3) {
                    obs.size += rng.random_range(1..100);
                    obs.mtime_ns = (now * 1e9) as i64;
                    changed_since_scan = true;
                }
                let marked = rng.random_bool(0.05);
                let v = t.observe(p, obs, now, quiet, marked);
                if changed_since_scan {
                    first_seen_version = Some(now);
                    changed_since_scan = false;
                }
                let model = marked || now - first_seen_version.unwrap_or(now) >= quiet;
                assert_eq!(v == Verdict::Stable, model, "seed {seed} at {now}");
            }
        }
    }

    #[test]
    fn incomplete_clock_restarts_when_the_file_changes() {
        let mut t = StabilityTracker::default();
        let p = Path::new("f");
        let o1 = Observation { size: 10, mtime_ns: 1, ino: 1 };
        t.observe(p, o1, 0.0, 1.0, false);
        assert_eq!(t.incomplete_for(p, 2.0), 0.0);
        assert_eq!(t.incomplete_for(p, 5.0), 3.0);
        t.observe(p, Observation { size: 11, ..o1 }, 6.0, 1.0, false);
        assert_eq!(t.incomplete_for(p, 7.0), 0.0);
    }
}

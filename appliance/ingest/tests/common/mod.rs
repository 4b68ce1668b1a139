//! What the ingest test files share.

use crlm_ingest::Ingestor;
use crlm_state::CaseRow;
use std::time::{Duration, Instant};

/// Scan until `done` holds for the cases, or fail after `secs`.
pub fn scan_until(ing: &mut Ingestor, secs: f64, done: impl Fn(&[CaseRow]) -> bool) -> Vec<CaseRow> {
    let start = Instant::now();
    loop {
        ing.scan_once().unwrap();
        let rows = ing.database().cases().unwrap();
        if done(&rows) {
            return rows;
        }
        assert!(start.elapsed().as_secs_f64() < secs, "timed out; cases: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

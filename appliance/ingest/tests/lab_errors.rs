//! Lab staff's mistakes (issue 21, defect 10): an incomplete file in a folder marked READY, and
//! the same slide exported under two patients.

mod common;
use common::scan_until;
use crlm_config::Config;
use crlm_ingest::Ingestor;
use crlm_models::synth::{SampleCase, write_sample_case};
use crlm_state::CaseState;
use std::time::{Duration, Instant};

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.share.path = dir.join("share");
    cfg.state.path = dir.join("state");
    std::fs::create_dir_all(&cfg.share.path).unwrap();
    cfg.share.quiet_seconds = 0.3;
    cfg.cases.partial_after_seconds = 1.5;
    cfg
}

/// The first file under `dir` whose extension is `ext`.
fn try_find(dir: &std::path::Path, ext: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = try_find(&p, ext) {
                return Some(f);
            }
        } else if p.extension().is_some_and(|x| x == ext) {
            return Some(p);
        }
    }
    None
}

fn find(dir: &std::path::Path, ext: &str) -> std::path::PathBuf {
    try_find(dir, ext).unwrap_or_else(|| panic!("no .{ext} under {}", dir.display()))
}

/// The folder says it is complete (READY), so an incomplete file in it will not be completed:
/// it is quarantined at once, not after `incomplete_timeout_seconds` (600 s by default).
#[test]
fn an_incomplete_file_in_a_ready_folder_is_quarantined_at_once() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path());
    cfg.share.incomplete_timeout_seconds = 3600.0;
    let dir = cfg.share.path.join("case-ready");
    write_sample_case(&dir, &SampleCase::new("PAT-READY")).unwrap();
    // A CT image preallocated and never written (a copy that died), then READY.
    let dcm = find(&dir, "dcm");
    let len = std::fs::metadata(&dcm).unwrap().len();
    std::fs::write(dcm.with_file_name("IM-zeros.dcm"), vec![0u8; len as usize]).unwrap();
    std::fs::write(dir.join("READY"), b"").unwrap();
    let mut ing = Ingestor::open(&cfg).unwrap();
    let start = Instant::now();
    while ing.database().quarantine_rows().unwrap().is_empty() {
        ing.scan_once().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "still waiting on the incomplete file");
        std::thread::sleep(Duration::from_millis(100));
    }
    let q = ing.database().quarantine_rows().unwrap();
    assert!(q[0].2.contains("marked READY"), "{q:?}");
    let rows = scan_until(&mut ing, 10.0, |r| r.len() == 1 && r[0].state != CaseState::Waiting);
    assert_eq!(rows[0].state, CaseState::Complete, "{rows:#?}");
}

/// A slide byte-identical to another patient's was marked `duplicate` and the second case went on
/// with its slide "missing", without a word. Now the case says why and the scan reports it for
/// the alert.
#[test]
fn the_same_slide_under_two_patients_is_named_on_the_case_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let first = cfg.share.path.join("case-1");
    write_sample_case(&first, &SampleCase::new("PAT-ONE")).unwrap();
    let mut ing = Ingestor::open(&cfg).unwrap();
    scan_until(&mut ing, 20.0, |r| r.len() == 1 && r[0].state != CaseState::Waiting);
    let second = cfg.share.path.join("case-2");
    write_sample_case(&second, &SampleCase { with_slide: false, ..SampleCase::new("PAT-TWO") }).unwrap();
    let slide = ["svs", "tif", "tiff"].iter().find_map(|x| try_find(&first, x)).expect("the first case's slide");
    std::fs::copy(&slide, second.join(slide.file_name().unwrap())).unwrap();
    let mut reported = Vec::new();
    let start = Instant::now();
    loop {
        let r = ing.scan_once().unwrap();
        reported.extend(r.cross_case);
        let rows = ing.database().cases().unwrap();
        if rows.len() == 2 && rows.iter().all(|c| c.state != CaseState::Waiting) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = ing.database().cases().unwrap();
    let (one, two) = (&rows[0], &rows[1]);
    assert!(two.reasons.iter().any(|r| r.contains("identical to case") && r.contains(&one.pseudonym)), "{two:#?}");
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(reported[0].contains(&two.pseudonym) && reported[0].contains(&one.pseudonym), "{reported:?}");
    // No patient identifier in what is reported (it becomes an alert).
    assert!(!reported[0].contains("PAT-"), "{reported:?}");
}

//! The CT series is chosen once, when the case closes: the series the ledger locks is the
//! `series_choice` that `crlm cases` shows, also when a file changed between the case closing
//! and the prediction (the choice is never made again on different files).

use crlm_config::Config;
use crlm_ingest::Ingestor;
use crlm_ingest::series::SeriesChoice;
use crlm_models::synth::{SampleCase, write_sample_case};
use crlm_service::processing::Processor;
use crlm_state::CaseState;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn the_locked_series_is_the_choice_made_when_the_case_closed_even_after_a_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let mut cfg = Config::default();
    cfg.share.path = share.clone();
    cfg.state.path = dir.path().join("state");
    cfg.share.quiet_seconds = 0.0;
    cfg.share.inotify = false;
    cfg.mqtt.enabled = false;
    cfg.privacy.keep_uids = true;
    // Two candidate series: the portal-venous one (preferred by description) and a native one
    // with four more slices. With `min_slices` at the portal-venous series' size, losing one of
    // its images would make a second choice fall on the native series.
    cfg.series.require_contrast = false;
    let case = SampleCase { with_noncontrast_series: true, ..SampleCase::new("SERIES-0001") };
    cfg.series.min_slices = case.slices;
    let folder = share.join("case-1");
    write_sample_case(&folder, &case).unwrap();
    std::fs::write(folder.join("READY"), b"").unwrap();

    let mut ingest = Ingestor::open(&cfg).unwrap();
    let closed = (0..50).any(|_| {
        ingest.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ingest.database().cases().unwrap().iter().any(|c| c.state != CaseState::Waiting)
    });
    assert!(closed, "the case did not close: {:#?}", ingest.database().cases().unwrap());
    let rows = ingest.database().cases().unwrap();
    let shown: SeriesChoice = serde_json::from_value(rows[0].series_choice.clone().unwrap()).unwrap();
    let chosen = shown.chosen.clone().expect("a series was chosen at close");
    assert_eq!(chosen.series, case.series_uid("pv"), "{shown:#?}");
    drop(ingest);

    // After the case closed, one portal-venous image changes on the share (an end slice, so the
    // rest of the series stays contiguous).
    let changed = folder.join("ct_portal_venous").join("IM0001.dcm");
    let bytes = std::fs::read(&changed).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changed, &bytes).unwrap();

    let model = Arc::new(crlm_predict::load_model(&cfg, None).unwrap());
    let (mut processor, _) = Processor::open(&cfg, model).unwrap();
    let pending = processor.pending().unwrap();
    assert_eq!(pending.len(), 1);
    let done = processor.process(pending[0]).unwrap();
    assert_eq!(done.state, CaseState::Predicted, "{done:?}");

    let records = crlm_ledger::read_records(&cfg.ledger_dir()).unwrap();
    let locked = records.iter().find_map(|(r, _)| r.case()).expect("a case record");
    let ct = locked.inputs.and_then(|i| i.ct).expect("the CT input is recorded");
    assert_eq!(ct.series, chosen.series, "the locked series is the one `crlm cases` shows");
    assert_eq!(ct.images.len(), chosen.slices - 1, "the changed image is not used");
}

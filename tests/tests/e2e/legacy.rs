//! Files written by the first release (main at d72c411, by its own `crlm demo`; see
//! tests/reference/legacy-d72c411/README.md) still open: the ledger verifies and every record
//! reads as a typed record, the collector's countersignatures check, the state database opens,
//! `crlm ledger export` and `crlm cases` give what that release gave, and the ledger takes new
//! records on top.

use crlm_e2e::crlm_bin;
use crlm_ledger::{CaseRecord, Ledger, RecordBody, RecordKind};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/legacy-d72c411")
}

/// A writable copy of the fixture's state folder.
fn state_copy(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    for sub in ["ledger", "keys"] {
        std::fs::create_dir_all(state.join(sub)).unwrap();
        for e in std::fs::read_dir(fixture().join("state").join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), state.join(sub).join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(fixture().join("state/crlm.sqlite"), state.join("crlm.sqlite")).unwrap();
    state
}

fn crlm(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(crlm_bin())
        .args(args)
        .env_remove("CRLM_CONFIG")
        .env("CRLM_STATE__PATH", state)
        .env("CRLM_SHARE__PATH", state.join("no-share"))
        .output()
        .unwrap()
}

#[test]
fn a_first_release_ledger_and_state_database_verify_read_export_and_extend() {
    let d = tempfile::tempdir().unwrap();
    let state = state_copy(d.path());
    let ledger_dir = state.join("ledger");
    let public = crlm_ledger::read_public_key(&state.join("keys/device.pub")).unwrap();

    // The chain and every signature verify, and every record reads as its typed body.
    let report = crlm_ledger::verify(&ledger_dir, &public).unwrap();
    assert!(report.ok() && report.records > 0, "{report:?}");
    let records = crlm_ledger::read_records(&ledger_dir).unwrap();
    let mut cases = 0;
    for (r, _) in &records {
        let body = r.body().unwrap_or_else(|e| panic!("record {} ({:?}) does not read: {e}", r.core.seq, r.core.kind));
        assert_eq!(body.kind(), r.core.kind);
        if let Some(c) = body.case() {
            cases += 1;
            assert!(c.case.starts_with("P-") && !c.model.sha256.is_empty(), "{c:?}");
            if r.core.kind == RecordKind::Prediction {
                assert!(c.outputs.is_some() && c.inputs.as_ref().and_then(|i| i.ct.as_ref()).is_some(), "{c:?}");
            }
        }
    }
    assert!(cases > 0, "the fixture holds locked cases");

    // The collector's countersignatures of that release check with its key.
    let collector = crlm_ledger::read_public_key(&fixture().join("collector.pub")).unwrap();
    let proof =
        crlm_ledger::countersign::check(&ledger_dir, &records, &crlm_ledger::key_id(&public), &[collector]).unwrap();
    assert!(proof.valid > 0 && proof.contradictions.is_empty(), "{proof:?}");

    // The CLI gives what the first release gave: the statisticians' export, byte for byte, and
    // the cases of the state database.
    let out = crlm(&state, &["ledger", "export", "--format", "csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(fixture().join("ledger-export.csv")).unwrap(),
        "ledger export differs from the first release's"
    );
    let out = crlm(&state, &["cases", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let now: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let then: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json")).unwrap()).unwrap();
    assert_eq!(now, then, "crlm cases differs from the first release's");
    let db = crlm_state::StateDb::open(&state.join("crlm.sqlite")).unwrap();
    let rows = db.cases().unwrap();
    for r in &rows {
        if let Some(choice) = &r.series_choice {
            serde_json::from_value::<crlm_ingest::series::SeriesChoice>(choice.clone())
                .unwrap_or_else(|e| panic!("series choice of {}: {e}", r.pseudonym));
        }
    }

    // The ledger takes a new typed record on top, and the whole chain still verifies.
    let key = crlm_ledger::device_key(&state.join("keys")).unwrap();
    let (mut ledger, recovery) = Ledger::open(&ledger_dir, key).unwrap();
    assert!(recovery.is_none());
    let added = ledger.append(&RecordBody::Prediction(CaseRecord::example("P-000000000001", 0.2))).unwrap();
    assert_eq!(added.core.seq as usize, records.len());
    let report = crlm_ledger::verify(&ledger_dir, &public).unwrap();
    assert!(report.ok() && report.records as usize == records.len() + 1, "{report:?}");
}

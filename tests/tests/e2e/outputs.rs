//! Predictions through the real service: locked in the ledger, written to the outbox as
//! result.json, FHIR RiskAssessment and DICOM SR (checked with DCMTK's dsrdump where installed),
//! exported for the statisticians, resumed without a second lock after a crash, and never
//! carrying an identifier out of the box.

use crlm_e2e::{Site, files_under, signal};
use crlm_models::synth::{SampleCase, write_sample_case};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn settled(c: &[serde_json::Value], n: usize) -> bool {
    c.len() == n
        && c.iter().all(|x| {
            x["state"] == "quarantined"
                || x["state"] == "failed"
                || (x["ledger_seq"].is_number() && x["outputs_written"] == true)
        })
}

/// DCMTK's dsrdump on an SR: Some(report) when it is installed, None (with a message) otherwise.
fn dsrdump(path: &Path) -> Option<std::process::Output> {
    match std::process::Command::new("dsrdump").arg(path).output() {
        Ok(o) => Some(o),
        Err(_) => {
            eprintln!("SKIPPED: dsrdump (Debian package dcmtk) is not installed; the SR is not checked by DCMTK here");
            None
        }
    }
}

/// Canary identifiers planted in DICOM headers, slide metadata, file and folder names and the
/// clinical file never appear in anything the service emits: logs, the panel's PNG frames, the
/// ledger (which the collector receives), the MQTT payloads, the outbox and the ledger export.
#[test]
fn canary_identifiers_never_leave_the_box() {
    let mut site = Site::new(0.3);
    site.env.push(("CRLM_OUTPUTS__SR_IDENTIFIERS".into(), "false".into()));
    let canaries = [
        "CANARYPID7731",
        "CANARYNAME",
        "ZEBRAFAMILY",
        "CANARYACC",
        "CANARYHOSP",
        "CANARYLABEL",
        "CANARYFILE",
        "CANARYFOLDER",
        "CANARYCLIN",
        "19230517",
        "1923-05-17",
    ];
    let mut eligible = SampleCase::new("CANARYPID7731");
    eligible.patient_name = "ZEBRAFAMILY^CANARYNAME".into();
    eligible.patient_birth_date = "19230517".into();
    eligible.accession_number = "CANARYACC1".into();
    eligible.institution_name = "CANARYHOSP GENERAL".into();
    eligible.slide_label = "CANARYLABEL CANARYPID7731 H&E".into();
    eligible.slide_file_name = "CANARYFILE_HE.svs".into();
    let dir = site.share.join("CANARYFOLDER-1");
    write_sample_case(&dir, &eligible).unwrap();
    std::fs::rename(dir.join("clinical.json"), dir.join("CANARYCLIN.json")).unwrap();
    // An ineligible second patient: the refusal is locked and exported too.
    let mut old = eligible.clone();
    old.patient_id = "CANARYPID7731B".into();
    old.age = 82;
    // Identical bytes would be a re-export of the first slide, not this patient's.
    old.slide_label = "CANARYLABEL CANARYPID7731B H&E".into();
    write_sample_case(&site.share.join("CANARYFOLDER-2"), &old).unwrap();

    let mut child = site.start(0);
    let cases = site.wait_cases(Duration::from_secs(90), |c| settled(c, 2));
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let states: Vec<&str> = cases.iter().map(|c| c["state"].as_str().unwrap()).collect();
    assert!(states.contains(&"predicted") && states.contains(&"ineligible"), "{cases:#?}");

    let export_csv = site.dir.path().join("export.csv");
    let export_json = site.dir.path().join("export.json");
    for (fmt, out) in [("csv", &export_csv), ("json", &export_json)] {
        let o = site.command(&["ledger", "export", "--format", fmt, "--out"]).arg(out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut emitted: Vec<PathBuf> = vec![site.dir.path().join("service-0.log"), export_csv.clone(), export_json];
    emitted.extend(files_under(&site.state.join("outbox")));
    emitted.extend(files_under(&site.state.join("ledger")));
    emitted.extend(files_under(&site.state).into_iter().filter(|p| p.extension().is_some_and(|e| e == "png")));
    assert!(emitted.iter().any(|p| p.extension().is_some_and(|e| e == "dcm")), "no SR written: {emitted:?}");
    // The MQTT payloads queued for the collector (no broker consumer here: all still queued).
    let conn = rusqlite::Connection::open(site.state.join("crlm.sqlite")).unwrap();
    let payloads: Vec<String> = conn
        .prepare("SELECT payload FROM mqtt_outbox")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(payloads.len() >= 2, "a result per locked case: {payloads:?}");
    let mqtt_dump = site.dir.path().join("mqtt-payloads.txt");
    std::fs::write(&mqtt_dump, payloads.join("\n")).unwrap();
    emitted.push(mqtt_dump);
    let mut scanned = 0;
    for p in &emitted {
        let bytes = std::fs::read(p).unwrap();
        scanned += bytes.len();
        let text = String::from_utf8_lossy(&bytes).to_ascii_uppercase();
        for c in canaries {
            assert!(!text.contains(&c.to_ascii_uppercase()), "{c} found in {}", p.display());
        }
    }
    assert!(scanned > 10_000, "only {scanned} bytes scanned");
    // The refusal is locked too, and says why without the patient's details.
    let csv = std::fs::read_to_string(&export_csv).unwrap();
    assert!(
        csv.lines().next().unwrap().starts_with("sequence,pseudonym,status,surgery_date,risk_2y,risk_group,threshold")
    );
    assert!(csv.contains(",refused,") && csv.contains("age 82"), "{csv}");
    // The de-identified SR still passes DCMTK.
    for sr in emitted.iter().filter(|p| p.extension().is_some_and(|e| e == "dcm")) {
        if let Some(o) = dsrdump(sr) {
            assert!(o.status.success(), "dsrdump: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// With the defaults, the SR for the local PACS carries the CT study's identity and passes
/// dsrdump; result.json and FHIR carry the pseudonym, the model hash and DEMO. After a crash
/// between the lock and the outputs, a restart rewrites the outputs from the same record and
/// never locks the case twice.
#[test]
fn a_case_is_locked_once_and_its_outputs_are_valid_and_rewritten_after_a_crash() {
    let site = Site::new(0.3);
    let case = SampleCase::new("OUT-0001");
    write_sample_case(&site.share.join("case-out"), &case).unwrap();
    let mut child = site.start(0);
    let cases = site.wait_cases(Duration::from_secs(60), |c| settled(c, 1));
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let c = &cases[0];
    assert_eq!(c["state"], "predicted", "{c:#?}");
    let pseudonym = c["case"].as_str().unwrap();
    let outbox = site.state.join("outbox").join(pseudonym);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join("result-000000.json")).unwrap()).unwrap();
    assert_eq!(result["format"], 1);
    assert_eq!(result["case"], pseudonym);
    assert_eq!(result["notice"], "DEMO - NOT FOR CLINICAL USE");
    assert_eq!(result["ledger"]["seq"], 0);
    let risk = result["risk_2y"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&risk));
    let fhir: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join("riskassessment-000000.fhir.json")).unwrap()).unwrap();
    assert_eq!(fhir["resourceType"], "RiskAssessment");
    assert_eq!(fhir["prediction"][0]["probabilityDecimal"].as_f64(), Some(risk));
    assert_eq!(fhir["prediction"][0]["whenRange"]["high"]["value"], 24);
    assert_eq!(fhir["prediction"][0]["outcome"]["coding"][0]["code"], "94381002");
    assert_eq!(fhir["subject"]["identifier"]["value"], pseudonym);
    assert_eq!(fhir["performer"]["type"], "Device");
    assert_eq!(fhir["basis"][0]["type"], "ImagingStudy");
    assert_eq!(fhir["performer"]["identifier"]["value"], result["model"]["sha256"]);
    let sr = outbox.join("sr-000000.dcm");
    let sr_bytes = std::fs::read(&sr).unwrap();
    let sr_text = String::from_utf8_lossy(&sr_bytes);
    // On site: the patient and the CT's study UID, so the PACS files it with the study.
    assert!(sr_text.contains("DOE^JANE") && sr_text.contains("OUT-0001") && sr_text.contains(&case.study_uid()));
    assert!(sr_text.contains("UNVERIFIED") && sr_text.contains("RESEARCH USE ONLY"));
    assert!(sr_text.contains(result["model"]["sha256"].as_str().unwrap()));
    if let Some(o) = dsrdump(&sr) {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && !stderr.contains("E:"), "dsrdump: {stderr}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Comprehensive SR") && out.contains("UNVERIFIED"), "{out}");
    }

    // A crash after the lock, before the state database recorded it and the outputs were written.
    let conn = rusqlite::Connection::open(site.state.join("crlm.sqlite")).unwrap();
    conn.execute("UPDATE cases SET ledger_seq=NULL, record_hash=NULL, outputs_ms=NULL, state='complete'", []).unwrap();
    drop(conn);
    std::fs::remove_dir_all(&outbox).unwrap();
    let mut child = site.start(1);
    let cases = site.wait_cases(Duration::from_secs(60), |c| settled(c, 1));
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    assert_eq!(cases[0]["ledger_seq"], 0, "{cases:#?}");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join("result-000000.json")).unwrap()).unwrap();
    assert_eq!(again, result, "the outputs are a function of the locked record");
    assert_eq!(std::fs::read(&sr).unwrap(), sr_bytes);
    let export = site.command(&["ledger", "export", "--format", "json"]).output().unwrap();
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(export["rows"].as_array().unwrap().len(), 1, "locked once: {export:#}");
    assert!(site.log(1).contains("resumed=true"), "{}", site.log(1));
}

//! End to end, as an engineer proves the appliance: the real `crlm run` process, a real share on
//! disk, a real broker (the service's embedded rumqttd, and Debian's mosquitto where installed),
//! the study office's collector, and an independent MQTT subscriber. Four cases arrive: one with
//! every modality, one without its slide, one ineligible patient, and a malformed export. Every
//! MQTT message must validate against its published JSON Schema (docs/schemas/mqtt); the ledger,
//! the outbox files and the panel's frames must say the same as the messages.

use crlm_e2e::{
    BrokerKind, Collector, Site, Subscriber, collected, free_port, have, outbox_all, signal, start_broker, stop, wait,
};
use crlm_models::synth::{SampleCase, write_sample_case};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every distinct frame's words (`display.txt`, written beside the PNG frame), in order.
fn watch_panel(path: std::path::PathBuf) -> Arc<Mutex<Vec<String>>> {
    let frames: Arc<Mutex<Vec<String>>> = Arc::default();
    let out = frames.clone();
    std::thread::spawn(move || {
        // Ends with the test process; reads are cheap.
        loop {
            if let Ok(words) = std::fs::read_to_string(&path) {
                let mut f = out.lock().unwrap();
                if f.last() != Some(&words) {
                    f.push(words);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    frames
}

/// The published schemas, one validator per topic leaf (formats checked too).
fn schemas() -> HashMap<&'static str, jsonschema::Validator> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/mqtt");
    ["status", "heartbeat", "result", "alert", "ack"]
        .into_iter()
        .map(|leaf| {
            let text = std::fs::read_to_string(dir.join(format!("{leaf}.schema.json"))).unwrap();
            let schema: Value = serde_json::from_str(&text).unwrap();
            let v = jsonschema::options().should_validate_formats(true).build(&schema).unwrap();
            (leaf, v)
        })
        .collect()
}

fn write_cases(share: &Path) {
    // The full export carries a DICOM SEG of the liver: the CT crop is centred on it.
    let full = SampleCase { with_segmentation: true, ..SampleCase::new("E2E-FULL") };
    write_sample_case(&share.join("full"), &full).unwrap();
    let no_slide = SampleCase { with_slide: false, ..SampleCase::new("E2E-NOSLIDE") };
    write_sample_case(&share.join("no-slide"), &no_slide).unwrap();
    // Staff mark the export complete, so the service need not wait for a slide.
    std::fs::write(share.join("no-slide").join(crlm_ingest::share::CASE_READY_MARKER), b"").unwrap();
    let old = SampleCase { age: 81, ..SampleCase::new("E2E-OLD") };
    write_sample_case(&share.join("old"), &old).unwrap();
    // A malformed export: a DICOM file that never becomes readable and a clinical file whose
    // values are impossible.
    let bad = share.join("bad-export");
    std::fs::create_dir_all(&bad).unwrap();
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM\x02\x00\x10\x00UI\xff\x7f");
    dicom.extend((0..300u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(bad.join("IM0001.dcm"), dicom).unwrap();
    let clinical = std::fs::read_to_string(share.join("full/clinical.json")).unwrap();
    let mut c: Value = serde_json::from_str(&clinical).unwrap();
    c["patient_id"] = "E2E-BAD".into();
    c["case_id"] = "CASE-E2E-BAD".into();
    c["age"] = "sixty".into();
    c["pT"] = "T9".into();
    std::fs::write(bad.join("clinical.json"), c.to_string()).unwrap();
}

fn run(kind: BrokerKind) {
    let mut site = Site::new(0.5);
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    site.env.push(("CRLM_SHARE__INCOMPLETE_TIMEOUT_SECONDS".into(), "3".into()));
    // A problem stays on the panel for 2 s, so the last frame shows the last lock again.
    site.env.push(("CRLM_DISPLAY__PROBLEM_SECONDS".into(), "2".into()));
    let (port, broker) = match kind {
        BrokerKind::Embedded => {
            let port = site.env.iter().find(|(k, _)| k == "CRLM_MQTT__EMBEDDED_PORT").unwrap().1.parse().unwrap();
            (port, None)
        }
        BrokerKind::Mosquitto => {
            let port = free_port();
            site.env.push(("CRLM_MQTT__URL".into(), format!("mqtt://127.0.0.1:{port}")));
            (port, Some(start_broker(kind, port, site.dir.path())))
        }
    };
    let url = format!("mqtt://127.0.0.1:{port}");
    let central = site.dir.path().join("central");
    std::fs::create_dir_all(&central).unwrap();
    let collector = Collector::start(&central, &url);
    collector.trusted_by(&mut site);
    let subscriber = Subscriber::start(port);
    let mut service = site.start(0);
    collector.register(&site.state);
    let frames = watch_panel(site.state.join("display.txt"));
    write_cases(&site.share);

    // Three cases locked, the malformed files quarantined, and everything acknowledged.
    let cases =
        site.wait_cases(Duration::from_secs(120), |c| c.len() == 3 && c.iter().all(|x| x["outputs_written"] == true));
    wait("the quarantine of the malformed export", Duration::from_secs(30), || {
        std::fs::read_dir(site.state.join("quarantine")).map(|d| d.count() >= 2).unwrap_or(false)
    });
    wait("the collector's acks to empty the outbox", Duration::from_secs(60), || outbox_all(&site.state) == 0);
    wait("a heartbeat", Duration::from_secs(10), || !subscriber.leaf("heartbeat").is_empty());
    wait("the panel back on the last result", Duration::from_secs(20), || {
        frames.lock().unwrap().last().is_some_and(|f| f.starts_with("screen: Result"))
    });
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success(), "{}", site.log(0));
    wait("the offline status", Duration::from_secs(10), || {
        subscriber.leaf("status").last().is_some_and(|s| s["state"] == "offline")
    });

    // Cases: one predicted with all three modalities, one predicted without the slide, one refused.
    let states: Vec<&str> = cases.iter().map(|c| c["state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "predicted").count(), 2, "{cases:#?}");
    assert_eq!(states.iter().filter(|s| **s == "ineligible").count(), 1, "{cases:#?}");

    // The ledger: three records, verified, in the export.
    let export = site.command(&["ledger", "export", "--format", "json"]).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let export: Value = serde_json::from_slice(&export.stdout).unwrap();
    let rows = export["rows"].as_array().unwrap_or_else(|| panic!("{export:#}"));
    assert_eq!(rows.len(), 3, "{export:#}");
    let modalities = |r: &Value| r["modalities_used"].as_str().unwrap_or("").to_string();
    let full = rows.iter().find(|r| r["status"] == "predicted" && modalities(r).contains("slide")).expect("all three");
    assert!(modalities(full).contains("ct") && modalities(full).contains("clinical"), "{full:#}");
    // The ledger records the segmentation the full case's crop was centred on (pseudonymised).
    let show = site.command(&["ledger", "show", &full["sequence"].as_u64().unwrap().to_string()]).output().unwrap();
    let record: crlm_ledger::Record =
        serde_json::from_slice(&show.stdout).unwrap_or_else(|_| panic!("{}", site.log(0)));
    let roi = record.case().and_then(|c| c.inputs).and_then(|i| i.ct).and_then(|ct| ct.roi);
    let roi = roi.unwrap_or_else(|| panic!("no region of interest recorded: {record:#?}"));
    assert_eq!(
        (roi.source, roi.labels.first().map(String::as_str)),
        (crlm_models::ct::preprocess::RoiSource::Segmentation, Some("Liver")),
        "{record:#?}"
    );
    assert!(roi.sop.starts_with("R-"), "the SEG's UID is pseudonymised: {roi:?}");
    let no_slide =
        rows.iter().find(|r| r["status"] == "predicted" && !modalities(r).contains("slide")).expect("no slide");
    assert!(no_slide["risk_2y"].as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)), "{no_slide:#}");
    let refused = rows.iter().find(|r| r["status"] == "refused").expect("the ineligible patient");
    assert!(refused["refusal"].as_str().unwrap_or("").contains("age 81"), "{refused:#}");
    assert!(refused["risk_2y"].is_null(), "a refusal carries no risk: {refused:#}");

    // The outbox files of every locked case.
    for r in rows {
        let dir = site.state.join("outbox").join(r["pseudonym"].as_str().unwrap());
        let seq = r["sequence"].as_u64().unwrap();
        let result: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("result-{seq:06}.json"))).unwrap()).unwrap();
        assert_eq!(result["ledger"]["record_hash"], r["record_hash"], "{result:#}");
        // A prediction also gets its FHIR RiskAssessment and DICOM SR; a refusal only result.json.
        let want = if r["status"] == "predicted" { 3 } else { 1 };
        assert!(std::fs::read_dir(&dir).unwrap().count() >= want, "outputs of {}", dir.display());
    }

    // MQTT: every message valid against its schema, and the results the same as the ledger.
    let validators = schemas();
    let messages = subscriber.messages();
    for (topic, payload) in &messages {
        let leaf = topic.rsplit('/').next().unwrap();
        let v = validators.get(leaf).unwrap_or_else(|| panic!("unexpected topic {topic}"));
        let errors: Vec<String> = v.iter_errors(payload).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{topic}: {errors:?}\n{payload:#}");
    }
    let mut results = subscriber.leaf("result");
    results.sort_by_key(|r| r["seq"].as_u64());
    results.dedup_by_key(|r| r["seq"].as_u64());
    assert_eq!(results.len(), 3, "one result per lock");
    for (i, r) in results.iter().enumerate() {
        let row = rows.iter().find(|x| x["sequence"] == r["ledger_seq"]).unwrap();
        assert_eq!(
            (r["seq"].as_u64(), &r["record_hash"], &r["case"]),
            (Some(i as u64), &row["record_hash"], &row["pseudonym"])
        );
    }
    let alerts = subscriber.leaf("alert");
    let kinds: Vec<&str> = alerts.iter().filter_map(|a| a["alert"].as_str()).collect();
    assert!(kinds.contains(&"quarantine") && kinds.contains(&"refusal"), "{alerts:#?}");
    assert!(subscriber.leaf("status").first().is_some_and(|s| s["state"] == "online"));
    assert!(subscriber.leaf("ack").iter().any(|a| a["stream"] == "result" && a["through_seq"] == 2));
    let held = collected(&collector.db);
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|r| r["signature_ok"] == true), "{held:#?}");
    // No identifier of the malformed export (or any other) went over MQTT.
    let wire: String = messages.iter().map(|(t, p)| format!("{t} {p}\n")).collect();
    for id in ["E2E-FULL", "E2E-NOSLIDE", "E2E-OLD", "E2E-BAD", "bad-export", "IM0001", "DOE^JANE"] {
        assert!(!wire.contains(id), "{id} went over MQTT");
    }

    // The quarantine says what was wrong with each malformed file.
    let reasons: String = std::fs::read_dir(site.state.join("quarantine"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(reasons.contains("IM0001.dcm") && reasons.contains("still incomplete"), "{reasons}");
    assert!(reasons.contains("`age`: `sixty` is not a number of years"), "{reasons}");

    // The panel: PNG frames of the configured size; their words showed the rejected file with
    // what to do, and the last shows the last lock, blinded (no risk, no group), with the link up.
    let png = std::fs::read(site.state.join("display.png")).unwrap();
    let (w, h, _) = crlm_drivers::display::png::decode_png(&png).unwrap();
    assert_eq!((w, h), (480, 320));
    let frames = frames.lock().unwrap().clone();
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("screen: Problem") && f.contains("What to do") && f.contains("Support code")),
        "{frames:#?}"
    );
    let words = frames.last().unwrap();
    let last = rows.iter().max_by_key(|r| r["sequence"].as_u64()).unwrap();
    assert!(words.contains(last["pseudonym"].as_str().unwrap()), "{words}");
    assert!(words.contains("Broker connected") && words.contains("Outbox 0"), "{words}");
    let risks: Vec<String> =
        rows.iter().filter_map(|r| r["risk_2y"].as_f64()).map(crlm_panel::ui::format_risk).collect();
    assert_eq!(risks.len(), 2);
    for f in &frames {
        assert!(!f.contains("RISK"), "blinded: no risk group on the panel: {f}");
        assert!(risks.iter().all(|r| !f.contains(r.as_str())), "blinded: no risk on the panel: {f}");
        assert!(!f.contains("E2E-") && !f.contains("IM0001"), "identifiers on the panel: {f}");
    }

    drop(subscriber);
    drop(collector);
    if let Some(b) = broker {
        stop(b);
    }
}

#[test]
fn four_cases_through_the_embedded_broker() {
    run(BrokerKind::Embedded);
}

#[test]
fn four_cases_through_mosquitto() {
    if !have("mosquitto") {
        eprintln!("SKIPPED: mosquitto (Debian package) is not installed");
        return;
    }
    run(BrokerKind::Mosquitto);
}

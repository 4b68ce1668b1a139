//! The model package and `crlm predict` through the real binary: verification names the altered
//! file, the service holds predictions with it (and says so), and predict's exit status and JSON.

use crlm_e2e::{Site, Subscriber, crlm_bin, shared_data, signal, wait};
use crlm_models::synth::{SampleCase, write_sample_case};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn crlm(args: &[&str]) -> Command {
    let mut c = Command::new(crlm_bin());
    c.args(args).env_remove("CRLM_CONFIG");
    c
}

fn demo_copy(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/packages/demo");
    let dst = dir.join("pkg");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.toml", "weights.safetensors", "MANIFEST.sha256", "SIGNATURE.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

#[test]
fn verify_names_the_altered_file_and_the_service_holds_predictions() {
    let out = crlm(&["model", "verify"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("built-in demo package: OK"));

    let tmp = tempfile::tempdir().unwrap();
    let pkg = demo_copy(tmp.path());
    assert!(crlm(&["model", "verify", pkg.to_str().unwrap()]).status().unwrap().success());
    let w = pkg.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let i = bytes.len() / 2;
    bytes[i] = bytes[i].wrapping_add(1);
    std::fs::write(&w, &bytes).unwrap();
    let out = crlm(&["model", "verify", pkg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weights.safetensors") && err.contains("REFUSED"), "{err}");

    // The service holds predictions: it stays up and receives files, names the file in its log,
    // shows the problem screen, reports the `model` condition with no model in its heartbeat,
    // and predicts nothing.
    let mut site = Site::new(0.3);
    site.env.push(("CRLM_MODEL__PATH".into(), pkg.to_string_lossy().into_owned()));
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    let port: u16 =
        site.env.iter().find(|(k, _)| k == "CRLM_MQTT__EMBEDDED_PORT").and_then(|(_, v)| v.parse().ok()).unwrap();
    let mut service = site.start(0);
    wait("the refusal in the log", Duration::from_secs(60), || {
        let log = site.log(0);
        log.contains("weights.safetensors") && log.contains("predictions held")
    });
    let sub = Subscriber::start(port);
    wait("a heartbeat with the model condition and no model", Duration::from_secs(30), || {
        sub.leaf("heartbeat").last().is_some_and(|h| {
            h["model_sha256"].is_null()
                && h["last_error"].as_str().is_some_and(|e| e.contains("model package refused"))
                && h["conditions"].as_array().is_some_and(|c| c.iter().any(|x| x["code"] == "model"))
        })
    });
    wait("the problem screen", Duration::from_secs(20), || {
        std::fs::read_to_string(site.state.join("display.txt")).unwrap_or_default().contains("Model package refused")
    });
    write_sample_case(&site.share.join("case-0"), &SampleCase::new("HELD-000")).unwrap();
    site.wait_cases(Duration::from_secs(60), |c| c.len() == 1 && c[0]["state"] == "complete");
    std::thread::sleep(Duration::from_secs(2));
    let cases = site.cases();
    assert!(cases.iter().all(|c| c["state"] == "complete" && c["ledger_seq"].is_null()), "{cases:#?}");
    assert!(service.try_wait().unwrap().is_none(), "the service stays up: {}", site.log(0));
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());

    // An edited manifest line breaks the signature.
    let pkg2 = demo_copy(&tmp.path().join("two"));
    let m = pkg2.join("MANIFEST.sha256");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen('a', "b", 1)).unwrap();
    let out = crlm(&["model", "verify", pkg2.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MANIFEST.sha256"));
}

#[test]
fn predict_prints_json_and_exits_2_when_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    assert!(crlm(&["synth", "patient"]).arg(&case).args(["--risk", "high"]).status().unwrap().success());
    let out = crlm(&["predict", "--json"]).arg(&case).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "predicted");
    assert_eq!(doc["risk_group"], "high");
    assert_eq!(doc["notice"], "DEMO - NOT FOR CLINICAL USE");
    let text = crlm(&["predict"]).arg(&case).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("DEMO - NOT FOR CLINICAL USE"));

    let clin = tmp.path().join("clinical-only");
    assert!(crlm(&["synth", "patient"]).arg(&clin).args(["--without", "ct,slide"]).status().unwrap().success());
    let out = crlm(&["predict", "--json"]).arg(&clin).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "refused");
}

#[test]
fn predict_reads_real_ct_and_a_real_slide() {
    let Some(data) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    std::fs::create_dir_all(case.join("ct")).unwrap();
    for e in std::fs::read_dir(data.join("dicom/ct_series/abdomen_ce_siemens_20sl")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, case.join("ct").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(data.join("wsi/svs/CMU-1-Small-Region.svs"), case.join("slide.svs")).unwrap();
    let heat = tmp.path().join("heat.png");
    let out = crlm(&["predict", "--json", "--heatmap"]).arg(&heat).arg(&case).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "predicted", "{doc:#}");
    assert_eq!(doc["modalities"]["ct"]["status"], "used");
    assert_eq!(doc["modalities"]["slide"]["status"], "used");
    assert_eq!(doc["modalities"]["clinical"]["status"], "missing");
    assert_eq!(doc["inputs"]["ct"]["slices"], 20);
    assert!(doc["inputs"]["slides"][0]["tiles_used"].as_u64().unwrap() > 0);
    assert!(heat.is_file());
}

#[test]
fn predict_centres_the_ct_on_a_segmentation_in_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    assert!(crlm(&["synth", "case", "--segmentation"]).arg(&case).status().unwrap().success());
    let out = crlm(&["predict", "--json"]).arg(&case).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ct = &doc["inputs"]["ct"];
    assert_eq!(ct["roi"], "segmentation", "{doc:#}");
    assert_eq!(ct["roi_labels"], serde_json::json!(["Liver"]));
    // The phantom's liver: a disc of radius 10 around column 24, row 26, in all 24 slices.
    assert_eq!(ct["roi_box"]["min"], serde_json::json!([15, 17, 0]), "{ct:#}");
    assert_eq!(ct["roi_box"]["max"], serde_json::json!([33, 35, 23]), "{ct:#}");

    // Without the SEG the body box is used.
    std::fs::remove_dir_all(case.join("segmentation")).unwrap();
    let out = crlm(&["predict", "--json"]).arg(&case).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["inputs"]["ct"]["roi"], "body");
}

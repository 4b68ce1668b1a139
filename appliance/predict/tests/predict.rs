//! `crlm predict`'s library path on generated cases with the built-in demo package: the result
//! document, missing and forbidden modalities, eligibility, determinism and the attention map.

use crlm_config::Config;
use crlm_models::cohort::{CaseParts, patient, write_case};
use crlm_models::inference::Model;
use crlm_predict::{DEMO_NOTICE, load_model, predict_case, write_heatmaps};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load_model(&Config::default(), None).expect("the built-in demo package loads"))
}

fn case(dir: &Path, z: [f64; 3], parts: CaseParts) -> PathBuf {
    write_case(dir, &patient(7, 1, Some(z)), parts).unwrap();
    dir.to_path_buf()
}

fn run(dir: &Path) -> Value {
    serde_json::to_value(predict_case(dir, model(), &Config::default()).unwrap().doc).unwrap()
}

#[test]
fn a_full_case_gives_the_documented_document() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = run(&case(tmp.path(), [1.5; 3], CaseParts::default()));
    assert_eq!(doc["status"], "predicted", "{doc:#}");
    assert_eq!(doc["notice"], DEMO_NOTICE);
    let risk = doc["risk_2y"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&risk));
    assert_eq!(doc["risk_group"], if risk >= doc["threshold"].as_f64().unwrap() { "high" } else { "low" });
    assert_eq!(doc["hazards"].as_array().unwrap().len(), 4);
    for m in ["ct", "slide", "clinical"] {
        assert_eq!(doc["modalities"][m]["status"], "used", "{m}");
    }
    let model = &doc["model"];
    assert_eq!(model["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(model["demo"], true);
    assert_eq!(doc["inputs"]["ct"]["slices"], 20);
    assert_eq!(doc["inputs"]["slides"][0]["file"], "slide_HE_1.svs");
    assert!(doc["inputs"]["slides"][0]["tiles_used"].as_u64().unwrap() > 8);
    assert_eq!(doc["inputs"]["clinical"]["record_sha256"].as_str().unwrap().len(), 64);
    let top = doc["top_tiles"].as_array().unwrap();
    assert_eq!(top.len(), 8);
    let att: Vec<f64> = top.iter().map(|t| t["attention"].as_f64().unwrap()).collect();
    assert!(att.windows(2).all(|w| w[0] >= w[1]), "top tiles sorted by attention: {att:?}");
    for k in ["gather", "ct", "slide", "clinical", "model", "total"] {
        assert!(doc["timings_ms"][k].as_f64().is_some(), "timing {k}");
    }
}

#[test]
fn the_demo_model_learned_high_and_low_risk_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let high = run(&case(&tmp.path().join("h"), [1.5; 3], CaseParts::default()));
    let low = run(&case(&tmp.path().join("l"), [-1.5; 3], CaseParts::default()));
    let (h, l) = (high["risk_2y"].as_f64().unwrap(), low["risk_2y"].as_f64().unwrap());
    assert!(h > 0.6 && l < 0.15, "high-risk case {h}, low-risk case {l}");
    assert_eq!(high["risk_group"], "high");
    assert_eq!(low["risk_group"], "low");
}

#[test]
fn identical_input_gives_bit_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case(tmp.path(), [0.3, -0.2, 0.5], CaseParts::default());
    let mut a = run(&dir);
    let mut b = run(&dir);
    a.as_object_mut().unwrap().remove("timings_ms");
    b.as_object_mut().unwrap().remove("timings_ms");
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
}

#[test]
fn a_case_without_a_slide_is_predicted_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = run(&case(tmp.path(), [0.0; 3], CaseParts { slide: false, ..CaseParts::default() }));
    assert_eq!(doc["status"], "predicted");
    assert_eq!(doc["modalities"]["slide"]["status"], "missing");
    assert_eq!(doc["top_tiles"].as_array().unwrap().len(), 0);
}

#[test]
fn a_clinical_only_case_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let r = predict_case(
        &case(tmp.path(), [0.0; 3], CaseParts { ct: false, slide: false, clinical: true }),
        model(),
        &Config::default(),
    )
    .unwrap();
    assert!(r.output.is_none());
    let doc = serde_json::to_value(&r.doc).unwrap();
    assert_eq!(doc["status"], "refused");
    let why = doc["refusal"].as_str().unwrap();
    assert!(why.contains("does not allow a prediction from [clinical]"), "{why}");
    assert!(why.contains("ct missing") && why.contains("slide missing"), "{why}");
    assert_eq!(doc["modalities"]["clinical"]["status"], "used");
    assert!(doc.get("risk_2y").is_none());
}

#[test]
fn an_ineligible_patient_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case(tmp.path(), [0.0; 3], CaseParts::default());
    let p = dir.join("clinical.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["age"] = 81.into();
    std::fs::write(&p, v.to_string()).unwrap();
    let doc = run(&dir);
    assert_eq!(doc["status"], "refused");
    assert!(doc["refusal"].as_str().unwrap().contains("age 81"), "{doc:#}");
}

#[test]
fn a_corrupt_slide_is_refused_and_the_rest_still_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case(tmp.path(), [0.0; 3], CaseParts::default());
    let slide = dir.join("slide_HE_1.svs");
    let bytes = std::fs::read(&slide).unwrap();
    std::fs::write(&slide, &bytes[..bytes.len() / 3]).unwrap();
    let doc = run(&dir);
    assert_eq!(doc["status"], "predicted", "{doc:#}");
    let st = &doc["modalities"]["slide"]["status"];
    assert!(st == "missing" || st == "refused", "{doc:#}");
    assert!(!doc["warnings"].as_array().unwrap().is_empty() || st == "refused");
}

#[test]
fn the_attention_map_is_the_slide_thumbnail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case(&tmp.path().join("c"), [1.0; 3], CaseParts::default());
    let r = predict_case(&dir, model(), &Config::default()).unwrap();
    let out = tmp.path().join("heat.png");
    let written = write_heatmaps(&r, &out, &Config::default()).unwrap();
    assert_eq!(written, std::slice::from_ref(&out));
    let (w, h, _) = crlm_drivers::display::png::decode_png(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((w, h), (1536, 1536), "the coarsest level no wider than 2048 px is level 0 here");
}

#[test]
fn a_linked_file_is_refused_as_the_service_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case(&tmp.path().join("c"), [0.0; 3], CaseParts::default());
    let outside = tmp.path().join("outside.svs");
    std::fs::rename(dir.join("slide_HE_1.svs"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("slide_HE_1.svs")).unwrap();
    let doc = run(&dir);
    assert_eq!(doc["modalities"]["slide"]["status"], "missing", "{doc:#}");
    let warnings = doc["warnings"].to_string();
    assert!(warnings.contains("slide_HE_1.svs: not used (links and special files are refused)"), "{warnings}");
}

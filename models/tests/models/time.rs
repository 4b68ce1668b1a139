//! The package's time axis: the risk at the study horizon comes from exactly the intervals up to
//! it, whatever the package's axis runs to; an axis with no edge at the horizon is refused.

use candle_core::{Device, Tensor};
use crlm_models::backend::{BackendKind, OnnxOptions};
use crlm_models::ct::preprocess::{CtTensor, RoiSource};
use crlm_models::inference::{CaseInputs, ModalityInput, Model, ModelError};
use crlm_models::package::{self, ModelPackage, PackageSource, TrustStore, signing};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/demo")
}

/// The demo package with 8 intervals (48 months, edges `edges`): the first four outputs are the
/// demo's own, the last four a different set of weights.
fn long_package(dir: &Path, edges: &str) -> ModelPackage {
    std::fs::create_dir_all(dir).unwrap();
    let dev = Device::Cpu;
    let mut w: HashMap<String, Tensor> =
        candle_core::safetensors::load(demo_dir().join("weights.safetensors"), &dev).unwrap();
    for name in ["fusion.fc2.weight", "fusion.fc2.bias"] {
        let t = w.remove(name).unwrap();
        let later = (t.clone() * 0.5).unwrap().affine(1.0, 0.3).unwrap();
        w.insert(name.into(), Tensor::cat(&[&t, &later], 0).unwrap());
    }
    candle_core::safetensors::save(&w, dir.join("weights.safetensors")).unwrap();
    let toml = std::fs::read_to_string(demo_dir().join("model.toml")).unwrap();
    assert!(toml.contains("intervals = 4"));
    let toml = toml.replace("intervals = 4", "intervals = 8")
        + &format!("\n[time]\noutput = \"hazards\"\nedges_months = {edges}\n");
    std::fs::write(dir.join("model.toml"), toml).unwrap();
    let key = signing::read_signing_key(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/demo.key")).unwrap();
    package::sign_dir(dir, &key).unwrap();
    ModelPackage::load(&PackageSource::Dir(dir.to_path_buf()), &TrustStore::default()).unwrap()
}

/// A CT-only case on the demo's grid (the demo allows CT alone).
fn ct_case(p: &ModelPackage) -> CaseInputs {
    let [x, y, z] = p.spec.ct.shape;
    let data = (0..x * y * z).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
    let ct = CtTensor { shape: p.spec.ct.shape, data, roi: RoiSource::Whole, centre_index: [0.0; 3] };
    CaseInputs { ct: ModalityInput::Used(ct), slides: ModalityInput::Missing, clinical: ModalityInput::Missing }
}

fn at(p: ModelPackage, months: u32) -> Result<Model, ModelError> {
    Model::with_backend(p, BackendKind::Candle, &OnnxOptions::default(), months)
}

#[test]
fn a_48_month_package_gives_the_24_month_risk_from_its_first_four_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    let long = long_package(&tmp.path().join("long"), "[0, 6, 12, 18, 24, 30, 36, 42, 48]");
    let demo = ModelPackage::load(&PackageSource::BuiltInDemo, &TrustStore::default()).unwrap();
    let case = ct_case(&demo);
    let short = Model::new(demo).unwrap().predict(&case).unwrap();
    let out = Model::new(long.clone()).unwrap().predict(&case).unwrap();
    assert_eq!(out.hazards.len(), 8);
    assert_eq!(out.horizon_months, 24);
    assert_eq!(out.intervals_months.len(), 8);
    assert_eq!(out.intervals_months[3], [18, 24]);
    for (a, b) in out.hazards.iter().zip(&short.hazards) {
        assert!((a - b).abs() < 1e-6, "the first four hazards are the demo's: {a} vs {b}");
    }
    let by_hand = 1.0 - out.hazards[..4].iter().map(|h| 1.0 - f64::from(*h)).product::<f64>();
    let all = 1.0 - out.hazards.iter().map(|h| 1.0 - f64::from(*h)).product::<f64>();
    assert!((out.risk_2y_uncalibrated - by_hand).abs() < 1e-12, "{} vs {by_hand}", out.risk_2y_uncalibrated);
    assert!((out.risk_2y_uncalibrated - short.risk_2y_uncalibrated).abs() < 1e-6);
    assert!(all - by_hand > 0.05, "the 48-month risk ({all}) is not the 24-month one ({by_hand})");

    // The same package at a 48-month horizon uses all eight.
    let at_48 = at(long, 48).unwrap().predict(&case).unwrap();
    assert!((at_48.risk_2y_uncalibrated - all).abs() < 1e-12);
    assert_eq!(at_48.horizon_months, 48);
}

#[test]
fn edges_that_miss_the_horizon_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let p = long_package(&tmp.path().join("odd"), "[0, 5, 10, 15, 20, 25, 30, 35, 40]");
    let Err(e) = Model::new(p.clone()) else { panic!("a package whose edges miss 24 months was accepted") };
    assert!(matches!(e, ModelError::Horizon(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("24-month horizon") && text.contains("[0, 5, 10"), "{text}");
    // A horizon on one of its edges is fine: the risk by 20 months is its first four intervals.
    let out = at(p.clone(), 20).unwrap().predict(&ct_case(&p)).unwrap();
    assert_eq!(out.intervals_months[3], [15, 20]);
}

#[test]
fn a_time_axis_that_does_not_match_the_network_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bad");
    long_package(&dir, "[0, 6, 12, 18, 24, 30, 36, 42, 48]");
    let toml = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), toml.replace("[0, 6, 12, 18, 24, 30, 36, 42, 48]", "[0, 12, 24]")).unwrap();
    let key = signing::read_signing_key(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/demo.key")).unwrap();
    let e = package::sign_dir(&dir, &key).unwrap_err();
    assert!(e.to_string().contains("time axis has 2 outputs, network.intervals is 8"), "{e}");
    std::fs::write(
        dir.join("model.toml"),
        toml.replace("[0, 6, 12, 18, 24, 30, 36, 42, 48]", "[0, 12, 6, 24, 30, 36, 42, 48, 60]"),
    )
    .unwrap();
    let e = package::sign_dir(&dir, &key).unwrap_err();
    assert!(e.to_string().contains("must increase"), "{e}");
}

//! The onnx backend through the real binary, as a user runs it (docs/BACKENDS.md):
//! `crlm model export-onnx`, `crlm predict --backend onnx|candle` giving the same document,
//! `crlm model quantize` and `crlm model compare`, and the service on the onnx backend.

use crlm_e2e::{Site, crlm_bin, onnx_runtime};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn crlm(args: &[&str]) -> Command {
    let mut c = Command::new(crlm_bin());
    c.args(args).env_remove("CRLM_CONFIG");
    c
}

fn run(args: &[&str]) -> String {
    let out = crlm(args).output().unwrap();
    assert!(
        out.status.success(),
        "crlm {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn demo_key() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/packages/demo.key")
}

fn patient(dir: &Path, index: u32, without: &str) -> PathBuf {
    let d = dir.join(format!("p{index}{}", if without.is_empty() { String::new() } else { format!("-no-{without}") }));
    run(&["synth", "patient", d.to_str().unwrap(), "--index", &index.to_string(), "--without", without]);
    d
}

/// Every leaf of a JSON document with its path.
fn leaves(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| leaves(x, format!("{path}.{k}"), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{path}[{i}]"), out)),
        _ => out.push((path, v.clone())),
    }
}

/// The two documents are the same but for the backend fields and timings, numbers within `tol`.
fn assert_same_document(a: &Value, b: &Value, tol: f64) {
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    leaves(a, String::new(), &mut la);
    leaves(b, String::new(), &mut lb);
    let skip = |p: &str| {
        p.starts_with(".timings_ms")
            || p.starts_with(".model.parts.")
            || [".model.backend", ".model.onnxruntime"].contains(&p)
    };
    la.retain(|(p, _)| !skip(p));
    lb.retain(|(p, _)| !skip(p));
    assert_eq!(
        la.iter().map(|x| &x.0).collect::<Vec<_>>(),
        lb.iter().map(|x| &x.0).collect::<Vec<_>>(),
        "the documents have different fields"
    );
    for ((p, x), (_, y)) in la.iter().zip(&lb) {
        match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if !(x.fract() == 0.0 && y.fract() == 0.0) => {
                assert!((x - y).abs() <= tol, "{p}: {x} vs {y}")
            }
            _ => assert_eq!(x, y, "{p}"),
        }
    }
}

#[test]
fn predict_gives_the_same_document_on_onnx_and_candle_and_int8_stays_close() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("demo-onnx");
    let key = demo_key();
    let out = run(&["model", "export-onnx", "--out", pkg.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(out.contains("tile_encoder: onnx/tile_encoder.onnx") && out.contains("opset 17"), "{out}");
    assert!(run(&["model", "verify", pkg.to_str().unwrap()]).contains(": OK"));
    let info = run(&["model", "info", pkg.to_str().unwrap()]);
    assert!(info.contains("onnx (5 graphs: clinical_encoder fp32, ct_encoder fp32, fusion fp32, slide_aggregator fp32, tile_encoder fp32)") && info.contains("tiles [n, 3, 64, 64]"), "{info}");
    if onnx_runtime().is_none() {
        return;
    }
    let info = run(&["model", "info", pkg.to_str().unwrap(), "--backend", "onnx", "--json"]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["running"]["name"], "onnx");
    assert_eq!(info["running"]["provider"], "cpu", "no GPU here: the default providers fall back to the CPU");

    let cases = [patient(tmp.path(), 3, ""), patient(tmp.path(), 4, "slide"), patient(tmp.path(), 5, "ct")];
    for case in &cases {
        let c = case.to_str().unwrap();
        let p = pkg.to_str().unwrap();
        let a: Value =
            serde_json::from_str(&run(&["predict", c, "--model", p, "--json", "--backend", "candle"])).unwrap();
        let b: Value =
            serde_json::from_str(&run(&["predict", c, "--model", p, "--json", "--backend", "onnx"])).unwrap();
        assert_eq!(a["status"], "predicted", "{a}");
        assert_eq!((a["model"]["backend"].as_str(), b["model"]["backend"].as_str()), (Some("candle"), Some("onnx")));
        assert_eq!(b["model"]["device"], "cpu");
        assert!(b["model"]["onnxruntime"].is_string(), "{}", b["model"]);
        assert_same_document(&a, &b, 1e-4);
    }

    // INT8: calibrate on three other patients, then the same cases through both packages.
    let calib = tmp.path().join("calibration");
    for i in 10..13 {
        patient(&calib, i, "");
    }
    let int8 = tmp.path().join("demo-int8");
    let out = run(&[
        "model",
        "quantize",
        pkg.to_str().unwrap(),
        "--calibration",
        calib.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.contains("calibrated on 3 case(s)") && out.contains("INT8 (QDQ) package"), "{out}");
    assert!(run(&["model", "verify", int8.to_str().unwrap()]).contains(": OK"));
    let info = run(&["model", "info", int8.to_str().unwrap()]);
    assert!(
        info.contains("ct_encoder int8, fusion fp32, slide_aggregator fp32, tile_encoder int8)")
            && info.contains("(6 QuantizeLinear)"),
        "{info}"
    );
    let set = tmp.path().join("set");
    std::fs::create_dir_all(&set).unwrap();
    for c in &cases {
        std::fs::rename(c, set.join(c.file_name().unwrap())).unwrap();
    }
    let cmp = run(&[
        "model",
        "compare",
        pkg.to_str().unwrap(),
        int8.to_str().unwrap(),
        "--cases",
        set.to_str().unwrap(),
        "--backend-a",
        "onnx",
        "--backend-b",
        "onnx",
        "--json",
    ]);
    let cmp: Value = serde_json::from_str(&cmp).unwrap();
    assert_eq!(cmp["cases"], 3, "{cmp}");
    assert_eq!(cmp["b"]["precision"], "int8");
    let max = cmp["risk_abs_diff_max"].as_f64().unwrap();
    assert!(max > 0.0 && max <= 0.02, "INT8 moved a risk by {max}: {cmp}");
}

/// The service on `pkg` (onnx backend, CPU only) with generated patient `index` dropped into the
/// share, stopped once the case is predicted; the site, for its ledger and log.
fn service_predicts_on_onnx(pkg: &Path, index: u32) -> Site {
    let mut site = Site::new(0.5);
    for (k, v) in [
        ("CRLM_MODEL__PATH", pkg.to_str().unwrap()),
        ("CRLM_MODEL__BACKEND", "onnx"),
        ("CRLM_ONNX__PROVIDERS", "[\"cpu\"]"),
        ("CRLM_ONNX__ALLOW_FALLBACK", "false"),
    ] {
        site.env.push((k.to_string(), v.to_string()));
    }
    let mut child = site.start(0);
    let staging = site.dir.path().join("staging");
    run(&["synth", "patient", staging.to_str().unwrap(), "--index", &index.to_string()]);
    std::fs::rename(&staging, site.share.join("case1")).unwrap();
    let cases = site.wait_cases(std::time::Duration::from_secs(90), |c| c.iter().any(|x| x["state"] == "predicted"));
    crlm_e2e::signal(&child, "TERM");
    let _ = child.wait();
    assert!(cases.iter().any(|x| x["state"] == "predicted"), "{cases:?}\n{}", site.log(0));
    site
}

#[test]
fn the_service_runs_the_onnx_backend_and_records_it_in_the_ledger() {
    if onnx_runtime().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("demo-onnx");
    run(&["model", "export-onnx", "--out", pkg.to_str().unwrap(), "--key", demo_key().to_str().unwrap()]);
    let site = service_predicts_on_onnx(&pkg, 7);
    // The locked record says what ran the model.
    let records: Vec<Value> = (0..6)
        .filter_map(|n| {
            let out = site.command(&["ledger", "show", &n.to_string()]).output().ok()?;
            serde_json::from_slice(&out.stdout).ok()
        })
        .collect();
    let text = serde_json::to_string(&records).unwrap();
    assert!(text.contains("\"backend\":\"onnx\"") && text.contains("\"precision\":\"fp32\""), "{text}");
    assert!(site.log(0).contains("onnx backend ready"), "{}", site.log(0));
}

/// A format 2 package (named ONNX parts of their own widths, a 48-month time axis) through the
/// service: the locked record says which format, parts and precisions ran, how many tiles were
/// encoded, and the 24-month risk comes from the first four of its eight intervals.
#[test]
fn the_service_runs_a_format_2_package_and_the_record_says_so() {
    if onnx_runtime().is_none() {
        return;
    }
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/packages/reference-small");
    let site = service_predicts_on_onnx(&pkg, 3);
    let record = (0..6)
        .filter_map(|n| {
            let out = site.command(&["ledger", "show", &n.to_string()]).output().ok()?;
            serde_json::from_slice::<Value>(&out.stdout).ok()
        })
        .find(|r| r.to_string().contains("\"risk_2y\""))
        .expect("a prediction record");
    let text = record.to_string();
    for want in [
        "\"format\":2",
        "\"tile_encoder\":\"fp32\"",
        "\"slide_aggregator\":\"fp32\"",
        "\"horizon_months\":24",
        "[42,48]",
        "\"tiles_used\":",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    // The 24-month risk is 1 - prod(1 - h) over the first four of the eight hazards.
    let find = |v: &Value, key: &str| -> Option<Value> {
        let mut stack = vec![v.clone()];
        while let Some(x) = stack.pop() {
            if let Some(m) = x.as_object() {
                if let Some(found) = m.get(key) {
                    return Some(found.clone());
                }
                stack.extend(m.values().cloned());
            }
        }
        None
    };
    let hazards: Vec<f64> =
        find(&record, "hazards").unwrap().as_array().unwrap().iter().map(|h| h.as_f64().unwrap()).collect();
    assert_eq!(hazards.len(), 8);
    let first4 = 1.0 - hazards[..4].iter().map(|h| 1.0 - h).product::<f64>();
    let risk = find(&record, "risk_2y_uncalibrated").unwrap().as_f64().unwrap();
    assert!((risk - first4).abs() < 1e-6, "{risk} vs {first4}");
}

/// The tile-embedding cache: the same case again reuses its slide's embeddings (no tile is
/// encoded) and the prediction is bit-identical; another package does not hit it.
#[test]
fn a_cache_hit_gives_a_bit_identical_prediction() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let case = patient(tmp.path(), 5, "");
    let predict = || -> Value {
        let out =
            crlm(&["predict", case.to_str().unwrap(), "--json"]).env("CRLM_STATE__PATH", &state).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = predict();
    let n = first["inputs"]["slides"][0]["tiles_used"].as_u64().unwrap();
    assert!(n > 0);
    assert_eq!(first["tiles"], serde_json::json!({"encoded": n, "from_cache": 0}), "{first}");
    let entries = std::fs::read_dir(state.join("embeddings")).unwrap().count();
    assert_eq!(entries, 1);
    let second = predict();
    assert_eq!(second["tiles"], serde_json::json!({"encoded": 0, "from_cache": n}), "{second}");
    for key in ["risk_2y", "risk_2y_uncalibrated", "hazards", "top_tiles", "slice_attention"] {
        assert_eq!(first[key], second[key], "{key} differs after a cache hit");
    }
    // Off: nothing kept, every tile encoded.
    let out = crlm(&["predict", case.to_str().unwrap(), "--json"])
        .env("CRLM_STATE__PATH", &state)
        .env("CRLM_MODEL__EMBEDDING_CACHE_MIB", "0")
        .output()
        .unwrap();
    let third: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(third["tiles"]["encoded"], n);
    assert_eq!(first["hazards"], third["hazards"]);
}

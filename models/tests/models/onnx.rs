//! ONNX export, INT8 QDQ graphs and the onnx backend against candle (docs/BACKENDS.md).
//!
//! The export and graph checks need nothing installed. The tests that run ONNX Runtime look for
//! libonnxruntime (onnx.library, ORT_DYLIB_PATH, the usual folders, a Python onnxruntime) and
//! skip with a message when there is none, unless REQUIRE_ONNXRUNTIME=1 (set by .ci/run after it
//! installs the onnxruntime wheel), where a missing library fails them.

use crlm_models::backend::candle::CandleBackend;
use crlm_models::backend::{Backend, RawInput};
use crlm_models::cohort::Rng;
use crlm_models::net::NetOutput;
use crlm_models::onnx::export::{ExportedGraph, export, model_toml_with_onnx};
use crlm_models::onnx::quantize::{ActivationRanges, check_rebuildable};
use crlm_models::onnx::{Dim, GraphIo};
use crlm_models::package::spec::OnnxPrecision;
use crlm_models::package::{self, ModelPackage, PackageSource, TrustStore, signing};
use std::path::Path;

fn demo() -> ModelPackage {
    ModelPackage::load(&PackageSource::BuiltInDemo, &TrustStore::default()).unwrap()
}

fn demo_key() -> ed25519_dalek::SigningKey {
    signing::read_signing_key(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/demo.key")).unwrap()
}

fn weights(p: &ModelPackage) -> &[u8] {
    p.weights().unwrap()
}

/// The demo package plus `graphs`, written to `dir` and loaded back verified.
fn with_graphs(dir: &Path, ranges: Option<&ActivationRanges>) -> (ModelPackage, Vec<ExportedGraph>) {
    let d = demo();
    let (onnx, graphs) = export(&d.spec, weights(&d), ranges).unwrap();
    crlm_models::onnx::export::write_with_onnx(&d, dir, &onnx, &graphs, &demo_key()).unwrap();
    (ModelPackage::load(&PackageSource::Dir(dir.to_path_buf()), &TrustStore::default()).unwrap(), graphs)
}

/// The demo's 2-year risk: its four 6-month hazards.
fn risk(o: &NetOutput) -> f64 {
    assert_eq!(o.hazards.len(), 4);
    1.0 - o.hazards.iter().map(|h| 1.0 - f64::from(*h)).product::<f64>()
}

/// Deterministic generated inputs for the demo's shapes: CT in 0..1, tiles normalised from
/// random pixels, clinical values with some missingness flags.
struct Case {
    ct: Vec<f32>,
    tiles: Vec<f32>,
    n: usize,
    clinical: Vec<f32>,
}

fn case(p: &ModelPackage, seed: u64, n: usize) -> Case {
    let s = &p.spec;
    let [x, y, z] = s.ct.shape;
    let t = s.slide.tile_px as usize;
    let mut r = Rng::new(seed);
    // Smooth-ish CT: a body-like blob plus noise, so attention is not uniform.
    let ct = (0..z * y * x)
        .map(|i| {
            let (zz, yy, xx) = (i / (x * y), (i / x) % y, i % x);
            let d = ((xx as f64 - x as f64 / 2.0).powi(2) + (yy as f64 - y as f64 / 2.0).powi(2)).sqrt() / x as f64;
            ((1.0 - d * 2.0).max(0.0) * (0.5 + 0.04 * zz as f64) + 0.1 * r.uniform()) as f32
        })
        .collect();
    let m = s.network.as_ref().unwrap();
    let tiles = (0..n * 3 * t * t)
        .map(|i| {
            let c = (i / (t * t)) % 3;
            ((r.uniform() as f32) - m.tile_mean[c]) / m.tile_std[c]
        })
        .collect();
    let clinical = (0..s.clinical.width()).map(|_| if r.uniform() < 0.3 { 1.0 } else { r.normal() as f32 }).collect();
    Case { ct, tiles, n, clinical }
}

/// Every modality pattern the demo allows and one it does not (the network itself runs any).
const PATTERNS: [(bool, bool, bool); 6] = [
    (true, true, true),
    (true, false, true),
    (true, true, false),
    (false, true, true),
    (true, false, false),
    (false, true, false),
];

/// The case through one backend: its tile encoder on the tiles, then the rest of the network.
fn run(b: &dyn Backend, c: &Case, (ct, slide, clin): (bool, bool, bool)) -> NetOutput {
    let h = if slide { b.embed_tiles(&c.tiles, c.n).unwrap() } else { Vec::new() };
    b.forward(&RawInput {
        ct: ct.then_some(c.ct.as_slice()),
        tile_embeddings: slide.then_some((h.as_slice(), c.n)),
        clinical: clin.then_some(c.clinical.as_slice()),
    })
    .unwrap()
}

/// The demo's CT and tiles of a case as candle tensors (calibration input).
fn observe(cand: &CandleBackend, p: &ModelPackage, c: &Case, ranges: &mut ActivationRanges) {
    let [x, y, z] = p.spec.ct.shape;
    let t = p.spec.slide.tile_px as usize;
    let dev = cand.net().device();
    let ct = candle_core::Tensor::from_slice(&c.ct, (z, y, x), dev).unwrap();
    let tiles = candle_core::Tensor::from_slice(&c.tiles, (c.n, 3, t, t), dev).unwrap();
    cand.net().observe_activations(Some(&ct), Some(&tiles), ranges).unwrap();
}

fn max_diff(a: &NetOutput, b: &NetOutput) -> f64 {
    let v = |x: &[f32], y: &[f32]| {
        assert_eq!(x.len(), y.len());
        x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())).fold(0.0, f64::max)
    };
    let opt = |x: &Option<Vec<f32>>, y: &Option<Vec<f32>>| match (x, y) {
        (Some(x), Some(y)) => v(x, y),
        (None, None) => 0.0,
        _ => panic!("an attention map on one side only"),
    };
    v(&a.hazards, &b.hazards)
        .max((risk(a) - risk(b)).abs())
        .max(opt(&a.slice_attention, &b.slice_attention))
        .max(opt(&a.tile_attention, &b.tile_attention))
}

#[test]
fn exported_graphs_declare_the_package_interface_and_the_package_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, graphs) = with_graphs(&tmp.path().join("pkg"), None);
    let onnx = p.spec.onnx.as_ref().unwrap();
    assert_eq!(onnx.precision, OnnxPrecision::Fp32);
    assert_eq!(graphs.len(), 5);
    let [x, y, z] = p.spec.ct.shape;
    let f = |v: usize| Dim::Fixed(v as i64);
    let e = p.spec.network.as_ref().unwrap().embed;
    for (part, g, n_in, n_out) in onnx.parts() {
        let io = GraphIo::read(&g.file, p.file(&g.file).unwrap()).unwrap();
        assert_eq!(io.opset, 17, "{part}");
        assert_eq!((io.inputs.len(), io.outputs.len()), (n_in, n_out), "{part}");
        assert_eq!(io.count("QuantizeLinear"), 0, "{part}");
        let names: Vec<&str> = io.inputs.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(names, g.inputs.iter().map(String::as_str).collect::<Vec<_>>(), "{part}");
    }
    let ct = GraphIo::read("ct", p.file(&onnx.ct_encoder.file).unwrap()).unwrap();
    assert_eq!(ct.inputs[0].2, vec![f(z), f(y), f(x)]);
    assert_eq!(ct.outputs[0].2, vec![f(1), f(e)]);
    let tiles = GraphIo::read("tiles", p.file(&onnx.tile_encoder.file).unwrap()).unwrap();
    assert_eq!(tiles.inputs[0].2[0], Dim::Named("n".into()), "the tile count is dynamic");
    assert_eq!(tiles.count("Conv"), 3);
    // The candle weights stay, so both backends can run the package; its hash is new.
    assert!(p.weights().is_some());
    assert_ne!(p.sha256, demo().sha256);
    // Exporting again replaces the [onnx] tables instead of adding a second set.
    let text = std::str::from_utf8(p.file("model.toml").unwrap()).unwrap();
    let again = model_toml_with_onnx(text, onnx).unwrap();
    assert_eq!(again.matches("[onnx.fusion]").count(), 1, "{again}");
    assert_eq!(package::parse_spec(again.as_bytes()).unwrap().onnx.as_ref(), Some(onnx));
    // A graph file that was altered after signing is refused like any package file.
    let file = tmp.path().join("pkg").join(&onnx.fusion.file);
    let mut bytes = std::fs::read(&file).unwrap();
    let i = bytes.len() - 10;
    bytes[i] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let err = ModelPackage::load(&PackageSource::Dir(tmp.path().join("pkg")), &TrustStore::default()).unwrap_err();
    assert!(err.to_string().contains("fusion.onnx"), "{err}");
}

#[test]
fn int8_export_has_per_channel_qdq_convolutions_only_in_the_encoders() {
    let d = demo();
    let cand = CandleBackend::new(&d).unwrap();
    let mut ranges = ActivationRanges::default();
    for seed in 0..4 {
        let c = case(&d, seed, 16);
        observe(&cand, &d, &c, &mut ranges);
    }
    ranges.finish(99.99);
    assert_eq!((ranges.ct_cases, ranges.tiles_seen), (4, 64));
    assert!(ranges.tiles.input.iter().chain(&ranges.ct.output).all(|v| *v > 0.0), "{ranges:?}");
    let (onnx, graphs) = export(&d.spec, weights(&d), Some(&ranges)).unwrap();
    assert_eq!(onnx.precision, OnnxPrecision::Int8);
    assert!(onnx.calibration.contains("64 tiles"), "{}", onnx.calibration);
    for g in &graphs {
        let io = GraphIo::read(&g.spec.file, &g.bytes).unwrap();
        let (q, dq) = (io.count("QuantizeLinear"), io.count("DequantizeLinear"));
        match g.part {
            // Per convolution: Q/DQ of the input and of the output, DQ of weights and bias.
            "ct_encoder" | "tile_encoder" => assert_eq!((q, dq, io.count("Conv")), (6, 12, 3), "{}", g.part),
            _ => assert_eq!(q + dq, 0, "{}", g.part),
        }
    }
}

#[cfg(not(feature = "onnx"))]
pub(crate) fn onnx_backend(_: &ModelPackage, _: &crlm_models::backend::OnnxOptions) -> Option<Box<dyn Backend>> {
    eprintln!("SKIPPED: crlm-models was built without the onnx feature");
    None
}

/// The onnx backend for `p`, or None (with a message) where ONNX Runtime is not installed.
#[cfg(feature = "onnx")]
pub(crate) fn onnx_backend(p: &ModelPackage, opts: &crlm_models::backend::OnnxOptions) -> Option<Box<dyn Backend>> {
    use crlm_models::backend::{BackendKind, build};
    if let Err(why) = crlm_models::backend::onnx_runtime::find_library(Path::new("")) {
        assert!(std::env::var("REQUIRE_ONNXRUNTIME").as_deref() != Ok("1"), "REQUIRE_ONNXRUNTIME=1 but {why}");
        eprintln!("SKIPPED: ONNX Runtime is not installed here ({why})");
        return None;
    }
    Some(build(p, BackendKind::Onnx, opts).unwrap_or_else(|e| panic!("{e}")))
}

pub(crate) fn cpu_only() -> crlm_models::backend::OnnxOptions {
    crlm_models::backend::OnnxOptions {
        providers: vec![crlm_models::backend::Provider::Cpu],
        allow_fallback: false,
        ..Default::default()
    }
}

#[test]
fn onnx_runtime_agrees_with_candle_within_1e_4_on_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = with_graphs(&tmp.path().join("pkg"), None);
    let Some(ort) = onnx_backend(&p, &cpu_only()) else { return };
    let info = ort.info();
    assert_eq!((info.name.as_str(), info.provider.as_str(), info.precision.as_str()), ("onnx", "cpu", "fp32"));
    assert!(info.runtime.is_some());
    let cand = CandleBackend::new(&p).unwrap();
    let mut worst = 0f64;
    for (i, pattern) in PATTERNS.iter().enumerate() {
        // Tile counts that are not a multiple of anything, and more than one tile batch.
        let n = [1, 7, 64, 300, 33, 2][i];
        let c = case(&p, 100 + i as u64, n);
        let a = run(&cand, &c, *pattern);
        let b = run(ort.as_ref(), &c, *pattern);
        let d = max_diff(&a, &b);
        assert!(d <= 1e-4, "pattern {pattern:?}, {n} tiles: max |candle - onnx| = {d}");
        worst = worst.max(d);
        let ea = cand.embed_tiles(&c.tiles, n).unwrap();
        let eb = ort.embed_tiles(&c.tiles, n).unwrap();
        assert!(ea.iter().zip(&eb).all(|(x, y)| (x - y).abs() <= 1e-4));
    }
    eprintln!("largest |candle - onnx| over all outputs: {worst:e}");
}

#[test]
fn int8_graphs_run_in_onnx_runtime_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let d = demo();
    let cand = CandleBackend::new(&d).unwrap();
    let mut ranges = ActivationRanges::default();
    for seed in 0..8 {
        let c = case(&d, seed, 24);
        observe(&cand, &d, &c, &mut ranges);
    }
    ranges.finish(99.99);
    let (p, _) = with_graphs(&tmp.path().join("int8"), Some(&ranges));
    let Some(ort) = onnx_backend(&p, &cpu_only()) else { return };
    assert_eq!(ort.info().precision, "int8");
    for seed in 50..54 {
        let c = case(&p, seed, 24);
        let a = run(&cand, &c, (true, true, true));
        let b = run(ort.as_ref(), &c, (true, true, true));
        let d = (risk(&a) - risk(&b)).abs();
        // Quantisation moves the risk a little, never a lot (docs/BACKENDS.md has the holdout numbers).
        assert!(d > 0.0 && d < 0.02, "seed {seed}: |fp32 - int8| risk = {d}");
    }
}

// Interface checks happen when the onnx backend is built: without the feature there is none.
#[cfg(feature = "onnx")]
#[test]
fn a_third_party_tile_encoder_from_torch_onnx_export_runs_inside_a_package() {
    let asset = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/onnx/tile_encoder_torch.onnx");
    let torch = std::fs::read(&asset).unwrap();
    let io = GraphIo::read("tile_encoder_torch.onnx", &torch).unwrap();
    assert_eq!(io.inputs[0].0, "input");
    assert!(io.count("ReduceMean") == 1 && io.count("GlobalAveragePool") == 0, "made by torch, not by crlm");

    let tmp = tempfile::tempdir().unwrap();
    let d = demo();
    let (mut onnx, mut graphs) = export(&d.spec, weights(&d), None).unwrap();
    onnx.tile_encoder.file = "onnx/tile_encoder_torch.onnx".into();
    onnx.tile_encoder.inputs = vec!["input".into()];
    onnx.tile_encoder.outputs = vec!["output".into()];
    graphs.retain(|g| g.part != "tile_encoder");
    graphs.push(ExportedGraph { part: "tile_encoder", spec: onnx.tile_encoder.clone(), bytes: torch });
    let dir = tmp.path().join("pkg");
    crlm_models::onnx::export::write_with_onnx(&d, &dir, &onnx, &graphs, &demo_key()).unwrap();
    let p = ModelPackage::load(&PackageSource::Dir(dir.clone()), &TrustStore::default()).unwrap();

    // Quantising would rebuild the tile encoder from the weights: refused, naming the part.
    let err = check_rebuildable(&p).unwrap_err().to_string();
    assert!(err.contains("onnx.tile_encoder") && err.contains("tile_encoder_torch.onnx"), "{err}");
    let (own, _) = with_graphs(&tmp.path().join("own"), None);
    check_rebuildable(&own).unwrap();

    // Names that do not match the graph are refused before anything runs, naming both.
    let mut wrong = p.clone();
    wrong.spec.onnx.as_mut().unwrap().tile_encoder.inputs = vec!["tiles".into()];
    let err = crlm_models::backend::build(&wrong, crlm_models::backend::BackendKind::Onnx, &cpu_only())
        .err()
        .expect("wrong input name must be refused");
    assert!(err.to_string().contains("\"tiles\"") && err.to_string().contains("input"), "{err}");
    // So is a graph whose shapes do not fit the package (the CT encoder as the tile encoder).
    let mut misfit = p.clone();
    let ct_bytes = p.file(&p.spec.onnx.as_ref().unwrap().ct_encoder.file).unwrap().to_vec();
    misfit.files.insert("onnx/tile_encoder_torch.onnx".into(), ct_bytes.into());
    misfit.spec.onnx.as_mut().unwrap().tile_encoder.inputs = vec!["ct".into()];
    misfit.spec.onnx.as_mut().unwrap().tile_encoder.outputs = vec!["embedding".into()];
    let err = crlm_models::backend::build(&misfit, crlm_models::backend::BackendKind::Onnx, &cpu_only())
        .err()
        .expect("a misfit graph must be refused");
    assert!(err.to_string().contains("the package's spec needs"), "{err}");

    let Some(ort) = onnx_backend(&p, &cpu_only()) else { return };
    let cand = CandleBackend::new(&p).unwrap();
    for (i, pattern) in PATTERNS.iter().take(4).enumerate() {
        let c = case(&p, 200 + i as u64, 9 + i);
        let d = max_diff(&run(&cand, &c, *pattern), &run(ort.as_ref(), &c, *pattern));
        assert!(d <= 1e-4, "{pattern:?}: {d}");
    }
}

#[test]
fn a_provider_that_cannot_register_is_an_error_unless_fallback_is_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = with_graphs(&tmp.path().join("pkg"), None);
    let mut opts = cpu_only();
    opts.providers = vec![crlm_models::backend::Provider::Cuda, crlm_models::backend::Provider::Cpu];
    opts.allow_fallback = true;
    let Some(ort) = onnx_backend(&p, &opts) else { return };
    if ort.info().provider == "cuda" {
        eprintln!("SKIPPED: this ONNX Runtime has a working CUDA provider; the refusal cannot be shown here");
        return;
    }
    assert_eq!(ort.info().provider, "cpu");
    opts.allow_fallback = false;
    let err = crlm_models::backend::build(&p, crlm_models::backend::BackendKind::Onnx, &opts).err().expect("refused");
    assert!(err.to_string().contains("cuda failed to register"), "{err}");
}

#[test]
fn a_package_with_only_onnx_graphs_runs_on_onnx_and_candle_says_why_not() {
    let tmp = tempfile::tempdir().unwrap();
    let d = demo();
    let (onnx, graphs) = export(&d.spec, weights(&d), None).unwrap();
    let dir = tmp.path().join("pkg");
    crlm_models::onnx::export::write_with_onnx(&d, &dir, &onnx, &graphs, &demo_key()).unwrap();
    // Drop the weights and the [weights] table, then sign again.
    std::fs::remove_file(dir.join("weights.safetensors")).unwrap();
    let text = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), text.replace("[weights]\nfile = \"weights.safetensors\"\n", "")).unwrap();
    package::sign_dir(&dir, &demo_key()).unwrap();
    let p = ModelPackage::load(&PackageSource::Dir(dir), &TrustStore::default()).unwrap();
    assert!(p.weights().is_none());
    let err = CandleBackend::new(&p).err().expect("no weights");
    assert!(err.to_string().contains("use the onnx backend"), "{err}");
    let Some(ort) = onnx_backend(&p, &cpu_only()) else { return };
    let c = case(&p, 7, 5);
    let out = run(ort.as_ref(), &c, (true, true, true));
    let reference = run(&CandleBackend::new(&d).unwrap(), &c, (true, true, true));
    assert!(max_diff(&out, &reference) <= 1e-4);
}

/// A graph whose weights are ONNX external data, in a folder package whose large files stay on
/// disk: verified by streamed hashing, hashed again when the session is created from the
/// folder, and giving the same outputs as the graph with its weights inside.
#[test]
fn external_data_runs_from_the_folder_and_a_changed_data_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    let (inside, _) = with_graphs(&dir, None);
    let tile = inside.spec.onnx.as_ref().unwrap().tile_encoder.file.clone();
    let (graph, data) = crlm_models::graph::externalize(inside.file(&tile).unwrap(), "tile_encoder.onnx.data").unwrap();
    assert!(data.len() > 1000 && graph.len() < data.len());
    std::fs::write(dir.join(&tile), &graph).unwrap();
    std::fs::write(dir.join("onnx/tile_encoder.onnx.data"), &data).unwrap();
    package::sign_dir(&dir, &demo_key()).unwrap();
    // Files over 1 KB stay on disk (the real threshold is 64 MiB).
    let files = package::files::read_files_with(&PackageSource::Dir(dir.clone()), 1024).unwrap();
    assert!(matches!(files.get("onnx/tile_encoder.onnx.data"), Some(package::FileData::Disk { .. })));
    let p = package::verify_files(files, PackageSource::Dir(dir.clone()), &TrustStore::default()).unwrap();
    let w = crlm_models::backend::wiring::wire_package(&p).unwrap().unwrap();
    assert_eq!(w.tile_encoder.as_ref().unwrap().external_data, ["onnx/tile_encoder.onnx.data"]);

    // A data file the package does not list is refused before anything runs.
    let mut q = p.clone();
    q.files.remove("onnx/tile_encoder.onnx.data");
    let e = crlm_models::backend::wiring::wire_package(&q).unwrap().unwrap_err();
    assert!(e.contains("external data onnx/tile_encoder.onnx.data is not in the package"), "{e}");

    let Some(ort) = onnx_backend(&p, &cpu_only()) else { return };
    let Some(reference) = onnx_backend(&inside, &cpu_only()) else { return };
    let c = case(&p, 7, 5);
    assert_eq!(
        max_diff(&run(ort.as_ref(), &c, (true, true, true)), &run(reference.as_ref(), &c, (true, true, true))),
        0.0
    );

    // Changed after verification: the session is not created from it.
    let mut bytes = data.clone();
    bytes[100] ^= 1;
    std::fs::write(dir.join("onnx/tile_encoder.onnx.data"), &bytes).unwrap();
    let e = crlm_models::backend::build(&p, crlm_models::backend::BackendKind::Onnx, &cpu_only()).err().unwrap();
    assert!(e.to_string().contains("onnx/tile_encoder.onnx.data"), "{e}");
}

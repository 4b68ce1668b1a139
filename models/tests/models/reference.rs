//! The committed format 2 reference package (tools/reference_package.py --scale small): a
//! ResNet-50-layer3 tile encoder, CLAM-SB gated attention, a 3D CT encoder, a clinical MLP and a
//! fusion to 8 hazards, each part of its own width, exported by torch.onnx.export. Its wiring is
//! checked from the graphs alone; ONNX Runtime in crlm gives what PyTorch gave on the same
//! inputs (models/reference/reference-small.safetensors).

use crate::onnx::{cpu_only, onnx_backend};
use candle_core::{Device, Tensor};
use crlm_models::backend::RawInput;
use crlm_models::backend::wiring::wire_package;
use crlm_models::package::spec::OnnxPrecision;
use crlm_models::package::{ModelPackage, PackageSource, TrustStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn package() -> ModelPackage {
    ModelPackage::load(&PackageSource::Dir(root().join("packages/reference-small")), &TrustStore::default()).unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join("reference/reference-small.safetensors"), &Device::Cpu).unwrap()
}

fn values(r: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    r.get(k).unwrap_or_else(|| panic!("{k} missing")).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_reference_package_is_format_2_with_its_own_widths_checked_from_the_graphs() {
    let p = package();
    assert_eq!(p.spec.format, 2);
    assert!(p.spec.network.is_none() && p.weights().is_none());
    let w = wire_package(&p).unwrap().unwrap();
    assert_eq!(w.tile_width, 64);
    assert_eq!(w.fusion_slide, [1, 32]);
    assert_eq!(w.fusion_ct, [1, 24]);
    assert_eq!(w.fusion_clinical, [1, 12]);
    assert_eq!(w.outputs, 8);
    // The CT encoder takes [1, 1, Z, Y, X]: the leading ones are added to the package's grid.
    let ct = w.ct_encoder.as_ref().unwrap().input("ct").unwrap();
    assert_eq!(ct.feed_shape(&[16, 32, 32]), [1, 1, 16, 32, 32]);
    // The candle backend runs CRLM-Net only, and says so.
    let e = crlm_models::backend::candle::CandleBackend::new(&p).err().unwrap().to_string();
    assert!(e.contains("onnx backend"), "{e}");
}

#[test]
fn misdeclared_parts_are_refused_naming_the_part_and_the_tensor() {
    let p = package();
    // A precision the graph does not have.
    let mut q = p.clone();
    q.spec.parts.as_mut().unwrap().tile_encoder.as_mut().unwrap().precision = OnnxPrecision::Int8;
    let e = wire_package(&q).unwrap().unwrap_err();
    assert!(e.contains("parts.tile_encoder is declared int8 but the graph is fp32"), "{e}");
    // A graph whose width does not fit what feeds it: the clinical encoder as the aggregator.
    let mut q = p.clone();
    let parts = q.spec.parts.as_mut().unwrap();
    let agg = parts.slide_aggregator.as_mut().unwrap();
    agg.file = "onnx/clinical_encoder.onnx".into();
    agg.inputs = [("embeddings".to_string(), "clinical".to_string())].into();
    agg.outputs = [("embedding".to_string(), "clinical_embedding".to_string())].into();
    let e = wire_package(&q).unwrap().unwrap_err();
    assert!(e.contains("parts.slide_aggregator input \"clinical\"") && e.contains("needs [n, 64]"), "{e}");
    // A declared width the graph contradicts.
    let mut q = p.clone();
    q.spec.parts.as_mut().unwrap().tile_encoder.as_mut().unwrap().widths.insert("embeddings".into(), 65);
    let e = wire_package(&q).unwrap().unwrap_err();
    assert!(e.contains("is [n, 64] but parts.tile_encoder.widths.embeddings is 65"), "{e}");
    // A name the graph does not have.
    let mut q = p.clone();
    q.spec.parts.as_mut().unwrap().fusion.outputs = [("output".to_string(), "risk".to_string())].into();
    let e = wire_package(&q).unwrap().unwrap_err();
    assert!(e.contains("fusion.onnx: parts.fusion names output \"risk\""), "{e}");
    // A time axis whose length is not the fusion's output.
    let mut q = p;
    q.spec.time = Some(crlm_models::package::spec::TimeSpec::Hazards { edges_months: vec![0, 12, 24] });
    let e = wire_package(&q).unwrap().unwrap_err();
    assert!(e.contains("hazards") && e.contains("needs [1, 2]"), "{e}");
}

#[test]
fn onnx_runtime_runs_the_reference_package_as_pytorch_did() {
    let p = package();
    let Some(ort) = onnx_backend(&p, &cpu_only()) else { return };
    let info = ort.info();
    assert_eq!(info.parts.len(), 5);
    assert!(info.parts.values().all(|v| v == "fp32"));
    let r = reference();
    let mut worst = 0f32;
    for i in 0..3 {
        let k = |s: &str| format!("case{i}.{s}");
        let mask = values(&r, &k("mask"));
        let tiles = values(&r, &k("tiles"));
        let n = tiles.len() / (3 * 64 * 64);
        let h = if n > 0 { ort.embed_tiles(&tiles, n).unwrap() } else { Vec::new() };
        if n > 0 {
            let want = values(&r, &k("tile_embeddings"));
            // Relative to the embeddings' scale: a ResNet sums thousands of products per value.
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = max_diff(&h, &want);
            assert!(d <= 1e-4 * scale, "case {i}: tile embeddings differ by {d} (scale {scale})");
            worst = worst.max(d);
        }
        let ct = values(&r, &k("ct"));
        let clinical = values(&r, &k("clinical"));
        let out = ort
            .forward(&RawInput {
                ct: (mask[0] == 1.0).then_some(ct.as_slice()),
                tile_embeddings: (mask[1] == 1.0).then_some((h.as_slice(), n)),
                clinical: (mask[2] == 1.0).then_some(clinical.as_slice()),
            })
            .unwrap();
        let d = max_diff(&out.hazards, &values(&r, &k("hazards")));
        assert!(d <= 1e-5, "case {i}: hazards differ by {d}");
        worst = worst.max(d);
        match &out.tile_attention {
            Some(a) => worst = worst.max(max_diff(a, &values(&r, &k("tile_attention")))),
            None => assert_eq!(n, 0, "case {i}: no tile attention"),
        }
    }
    eprintln!("largest |crlm onnx - PyTorch| over the reference cases: {worst:e}");
}

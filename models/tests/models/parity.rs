//! CRLM-Net in candle against the PyTorch twin: weights saved from the twin's state_dict load by
//! name and every output agrees within 1e-4 (fp32). Vectors: models/reference/make_parity.py.

use candle_core::{Device, Tensor};
use crlm_models::net::{CrlmNet, NetInput};
use crlm_models::package::spec::NetworkSpec;
use std::path::Path;

const TOLERANCE: f32 = 1e-4;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn candle_matches_the_pytorch_twin() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/parity");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("parity.json")).unwrap()).unwrap();
    let spec: NetworkSpec = serde_json::from_value(meta["network"].clone()).unwrap();
    let width = meta["clinical_width"].as_u64().unwrap() as usize;
    let weights = std::fs::read(dir.join("weights.safetensors")).unwrap();
    let dev = Device::Cpu;
    let net = CrlmNet::from_safetensors(&weights, &spec, width, &dev).unwrap();
    let cases = candle_core::safetensors::load(dir.join("cases.safetensors"), &dev).unwrap();
    let get = |k: String| -> Tensor { cases.get(&k).unwrap_or_else(|| panic!("{k} missing")).clone() };
    let n_cases = meta["cases"].as_array().unwrap().len();
    assert!(n_cases >= 6);
    let mut worst = 0f32;
    for i in 0..n_cases {
        let present: Vec<u64> =
            meta["cases"][i]["present"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let input = NetInput {
            ct: (present[0] == 1).then(|| get(format!("case{i}.ct"))),
            tile_embeddings: (present[1] == 1).then(|| net.embed_tiles(&get(format!("case{i}.tiles"))).unwrap()),
            clinical: (present[2] == 1).then(|| get(format!("case{i}.clinical"))),
        };
        let out = net.forward(&input).unwrap();
        let want = |k: &str| get(format!("case{i}.{k}")).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut d = max_diff(&out.hazards, &want("hazards"));
        let risk = 1.0 - out.hazards.iter().map(|h| 1.0 - h).product::<f32>();
        d = d.max((risk - want("risk")[0]).abs());
        if let Some(a) = &out.slice_attention {
            d = d.max(max_diff(a, &want("slice_attention")));
        }
        if let Some(a) = &out.tile_attention {
            d = d.max(max_diff(a, &want("tile_attention")));
        }
        assert!(d <= TOLERANCE, "case {i} (present {present:?}): max abs diff {d}");
        worst = worst.max(d);
    }
    println!("parity: {n_cases} cases, worst max abs diff {worst:e}");
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/parity");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("parity.json")).unwrap()).unwrap();
    let mut spec: NetworkSpec = serde_json::from_value(meta["network"].clone()).unwrap();
    spec.embed += 1; // weights no longer fit
    let weights = std::fs::read(dir.join("weights.safetensors")).unwrap();
    let err = CrlmNet::from_safetensors(&weights, &spec, 6, &Device::Cpu).err().expect("shape mismatch must fail");
    assert!(err.to_string().contains("shape"), "{err}");
}

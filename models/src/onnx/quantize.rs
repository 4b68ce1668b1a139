//! INT8 post-training quantisation of CRLM-Net's convolutions (docs/BACKENDS.md):
//!
//! - weights: symmetric per output channel, scale = max|w| / 127, int8;
//! - bias: int32 at scale input_scale * weight_scale (what a QDQ Conv group needs to become an
//!   integer convolution in ONNX Runtime and TensorRT);
//! - activations: symmetric per tensor, scale = max|x| / 127 over the calibration cases, observed
//!   by running the fp32 network (candle) on them: each convolution's input and its output
//!   before the ReLU.
//!
//! Zero points are all 0: TensorRT's explicit quantisation accepts only symmetric Q/DQ, and
//! ONNX Runtime runs the same graph (on x86 it converts s8 activations to u8 internally).

use super::OnnxError;
use crate::backend::candle::CandleBackend;
use crate::inference::CaseInputs;
use crate::package::ModelPackage;
use crate::tile_stream::normalise;
use candle_core::Tensor;

use crate::calibration::scale;
pub use crate::calibration::{ActivationRanges, ConvRanges};

/// Per-output-channel symmetric int8 weights: (values, scales). `w` is `[c, ...]` row-major.
pub fn quantize_weights(w: &[f32], channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / channels.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for row in w.chunks(per.max(1)) {
        let s = scale(row.iter().fold(0f32, |m, v| m.max(v.abs())));
        scales.push(s);
        q.extend(row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

/// int32 bias at scale `input_scale * weight_scale[c]`: (values, scales).
pub fn quantize_bias(b: &[f32], input_scale: f32, weight_scales: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = weight_scales.iter().map(|ws| input_scale * ws).collect();
    let q = b
        .iter()
        .zip(&scales)
        .map(|(v, s)| (f64::from(*v) / f64::from(*s)).round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
        .collect();
    (q, scales)
}

/// Calibrate on prepared cases with the fp32 network (candle, the package's weights). Cases
/// without CT or tiles contribute what they have.
pub fn calibrate(package: &ModelPackage, cases: &[CaseInputs], percentile: f64) -> Result<ActivationRanges, OnnxError> {
    if !(50.0..=100.0).contains(&percentile) {
        return Err(OnnxError::Calibration(format!("percentile {percentile}: must be within 50..100")));
    }
    let backend = CandleBackend::new(package).map_err(|e| OnnxError::Calibration(e.to_string()))?;
    let cal = |e: &dyn std::fmt::Display| OnnxError::Calibration(e.to_string());
    let spec = &package.spec;
    let [x, y, z] = spec.ct.shape;
    let t = spec.slide.tile_px as usize;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev = backend.net().device();
    let mut r = ActivationRanges::default();
    for case in cases {
        let ct =
            case.ct.used().map(|c| Tensor::from_slice(&c.data, (z, y, x), dev)).transpose().map_err(|e| cal(&e))?;
        let mut pixels = Vec::new();
        for m in case.slides.used().map(Vec::as_slice).unwrap_or_default() {
            pixels.extend(m.read(0..m.tiles.len(), threads).map_err(|e| cal(&e))?);
        }
        let n = pixels.len() / (3 * t * t);
        let tiles = (n > 0)
            .then(|| {
                let (mean, std) = spec.tile_normalisation();
                normalise(&pixels, t, mean, std)
            })
            .map(|v| Tensor::from_vec(v, (n, 3, t, t), dev))
            .transpose()
            .map_err(|e| cal(&e))?;
        backend.net().observe_activations(ct.as_ref(), tiles.as_ref(), &mut r).map_err(|e| cal(&e))?;
    }
    r.finish(percentile);
    if r.ct_cases == 0 || r.tiles_seen == 0 {
        return Err(OnnxError::Calibration(format!(
            "the calibration cases gave {} CT volumes and {} tiles; both encoders need some",
            r.ct_cases, r.tiles_seen
        )));
    }
    Ok(r)
}

/// Whether `crlm model quantize` may rebuild this package's graphs from its weights: only when
/// every graph it carries is crlm's own fp32 export of those weights. Quantising rebuilds the
/// network from `weights.safetensors`; a package whose graph is someone else's (a tile encoder
/// from torch.onnx.export, a format 2 part) would otherwise get a different network under the
/// same name. The refusal names the part; such graphs are quantised with their own tools and
/// declared `precision = "int8"` (or `"fp16"`), which the onnx backend checks.
pub fn check_rebuildable(package: &ModelPackage) -> Result<(), OnnxError> {
    let spec = &package.spec;
    let refuse = |m: String| Err(OnnxError::Calibration(m));
    if let Some(parts) = &spec.parts {
        let names: Vec<&str> = parts.present().iter().map(|(n, _)| *n).collect();
        return refuse(format!(
            "a format 2 package's parts ({}) are its authors' graphs: crlm cannot calibrate and rebuild them, and will not \
             replace them. Quantise a part with its own tooling (e.g. onnxruntime.quantization, QDQ) and declare its \
             precision in [parts] (docs/BACKENDS.md)",
            names.join(", ")
        ));
    }
    let Some(weights) = package.weights() else {
        return refuse(
            "the package carries no fp32 weights (weights.safetensors) to calibrate and rebuild from".into(),
        );
    };
    let Some(onnx) = &spec.onnx else { return Ok(()) };
    if onnx.precision != crate::package::spec::OnnxPrecision::Fp32 {
        return refuse(format!("the package is already {}: quantise its fp32 parent", onnx.precision.name()));
    }
    let (_, own) = super::export::export(spec, weights, None)?;
    let graph_of =
        |bytes: &[u8]| <crate::graph::proto::ModelProto as prost::Message>::decode(bytes).ok().and_then(|m| m.graph);
    for (part, g, _, _) in onnx.parts() {
        let theirs = package.file(&g.file).and_then(graph_of);
        let ours = own.iter().find(|e| e.part == part).and_then(|e| graph_of(&e.bytes));
        if theirs.is_none() || theirs != ours {
            return refuse(format!(
                "onnx.{part} ({}) is not crlm's own export of weights.safetensors: quantising would replace it with a \
                 different network under the same name. Quantise that graph with its own tooling and declare \
                 precision = \"int8\", or export the package again from its weights (crlm model export-onnx)",
                g.file
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_within_half_a_step_per_channel() {
        let w = [0.5f32, -1.0, 0.25, 0.0, 0.01, -0.02];
        let (q, s) = quantize_weights(&w, 2);
        assert_eq!(q[1], -127);
        assert_eq!(q[5], -127);
        for (i, v) in w.iter().enumerate() {
            let back = f32::from(q[i]) * s[i / 3];
            assert!((back - v).abs() <= s[i / 3] / 2.0 + 1e-9, "{i}: {back} vs {v}");
        }
    }

    #[test]
    fn the_percentile_range_ignores_rare_outliers_and_100_is_the_maximum() {
        let mut r = ConvRanges::default();
        let mut x: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        x[5] = 50.0;
        r.observe(0, &x, &x);
        let mut m = r.clone();
        r.finish(99.9);
        assert!(r.input[0] < 1.0 && r.input[0] > 0.9, "{}", r.input[0]);
        assert_eq!(r.input_max[0], 50.0);
        m.finish(100.0);
        assert_eq!(m.output[0], 50.0);
    }

    #[test]
    fn an_all_zero_channel_gets_a_positive_scale() {
        let (q, s) = quantize_weights(&[0.0, 0.0], 1);
        assert_eq!(q, vec![0, 0]);
        assert!(s[0] > 0.0);
    }

    #[test]
    fn bias_scale_is_input_times_weight_scale() {
        let (q, s) = quantize_bias(&[0.3, -0.6], 0.01, &[0.1, 0.2]);
        assert!((s[0] - 0.001).abs() < 1e-9 && (s[1] - 0.002).abs() < 1e-9);
        assert_eq!(q, vec![300, -300]);
    }
}

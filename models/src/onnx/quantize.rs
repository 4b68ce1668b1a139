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
use crate::backend::RawInput;
use crate::backend::candle::CandleBackend;
use crate::inference::{CaseInputs, tile_data};
use crate::package::ModelPackage;
use crate::slide::sample::ModelTiles;
use serde::{Deserialize, Serialize};

/// Calibrated |x| range at each convolution of one encoder: after [`ConvRanges::finish`], a
/// high percentile of the absolute values seen (the maximum is kept too). A percentile, not the
/// maximum: a few outliers would otherwise stretch the scale until the bulk of the values fall
/// into a handful of int8 steps (measured: docs/BACKENDS.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConvRanges {
    /// Input of convolution 1, 2, 3.
    pub input: [f32; 3],
    /// Output of convolution 1, 2, 3 before the ReLU.
    pub output: [f32; 3],
    pub input_max: [f32; 3],
    pub output_max: [f32; 3],
    /// Sampled |x| per tensor while calibrating (not kept).
    #[serde(skip)]
    samples: [Vec<f32>; 6],
}

/// Values sampled per tensor per observation: enough for a 99.99th percentile over many cases.
const SAMPLES_PER_OBSERVATION: usize = 1 << 15;

fn scale(max_abs: f32) -> f32 {
    // A tensor that was always 0 still needs a positive scale.
    (max_abs / 127.0).max(1e-8)
}

fn sample_into(out: &mut Vec<f32>, abs: &[f32]) -> f32 {
    let step = abs.len().div_ceil(SAMPLES_PER_OBSERVATION).max(1);
    out.extend(abs.iter().step_by(step));
    abs.iter().fold(0f32, |m, v| m.max(*v))
}

fn percentile(v: &mut [f32], p: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    let k = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[k.min(v.len() - 1)]
}

impl ConvRanges {
    pub fn scale_in(&self, i: usize) -> f32 {
        scale(self.input[i])
    }
    pub fn scale_out(&self, i: usize) -> f32 {
        scale(self.output[i])
    }
    /// Record a convolution's input and output (pre-ReLU) absolute values.
    pub fn observe(&mut self, i: usize, input_abs: &[f32], output_abs: &[f32]) {
        let m = sample_into(&mut self.samples[i], input_abs);
        self.input_max[i] = self.input_max[i].max(m);
        let m = sample_into(&mut self.samples[3 + i], output_abs);
        self.output_max[i] = self.output_max[i].max(m);
    }
    /// Set the ranges to the `p`th percentile of what was observed (100: the exact maximum, not
    /// the sample's).
    pub fn finish(&mut self, p: f64) {
        for i in 0..3 {
            if p >= 100.0 {
                self.input[i] = self.input_max[i];
                self.output[i] = self.output_max[i];
            } else {
                self.input[i] = percentile(&mut self.samples[i], p);
                self.output[i] = percentile(&mut self.samples[3 + i], p);
            }
        }
        self.samples = Default::default();
    }
}

/// Calibrated ranges of both encoders and what they came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivationRanges {
    pub ct: ConvRanges,
    pub tiles: ConvRanges,
    /// Cases whose CT was seen, and tiles seen.
    pub ct_cases: usize,
    pub tiles_seen: usize,
    /// The percentile of |x| each activation scale covers.
    pub percentile: f64,
    /// Convolutions left in fp32 (`ct.conv.conv1`, say): the layers quantisation hurts most.
    #[serde(default)]
    pub keep_fp32: Vec<String>,
}

impl ActivationRanges {
    /// Fix both encoders' ranges at the `p`th percentile of what was observed.
    pub fn finish(&mut self, p: f64) {
        self.ct.finish(p);
        self.tiles.finish(p);
        self.percentile = p;
    }

    pub fn describe(&self) -> String {
        let kept = if self.keep_fp32.is_empty() {
            String::new()
        } else {
            format!("; kept in fp32: {}", self.keep_fp32.join(", "))
        };
        format!(
            "activation ranges at the {}th percentile of |x| over {} CT volumes and {} tiles; symmetric int8, per-channel weights{kept}",
            self.percentile, self.ct_cases, self.tiles_seen
        )
    }
}

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
    let mut r = ActivationRanges::default();
    for case in cases {
        let tiles = match case.slides.used() {
            Some(m) => {
                let refs: Vec<&ModelTiles> = m.iter().collect();
                Some(tile_data(&package.spec, &refs).map_err(|e| OnnxError::Calibration(e.to_string()))?)
            }
            None => None,
        };
        let raw = RawInput {
            ct: case.ct.used().map(|c| c.data.as_slice()),
            tiles: tiles.as_ref().filter(|(_, n)| *n > 0).map(|(v, n)| (v.as_slice(), *n)),
            clinical: None,
        };
        let input = backend.tensors(&raw).map_err(|e| OnnxError::Calibration(e.to_string()))?;
        backend.net().observe_activations(&input, &mut r).map_err(|e| OnnxError::Calibration(e.to_string()))?;
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

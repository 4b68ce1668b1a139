//! Activation ranges observed while running the fp32 network on calibration cases: CRLM-Net
//! records them, INT8 quantisation (the `onnx` tools) reads them.

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

/// The symmetric int8 scale for values up to `max_abs`.
pub fn scale(max_abs: f32) -> f32 {
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

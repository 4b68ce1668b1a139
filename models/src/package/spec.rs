//! `model.toml`: what a model package declares. Format 1 is CRLM-Net v1 (`[network]` sizes,
//! safetensors weights, optionally its five ONNX graphs in `[onnx]`); format 2 is any network as
//! named ONNX parts (`[parts]`, [`super::parts`]) with a declared time axis. Unknown keys are
//! refused so a typo cannot silently fall back to a default.

use super::parts::PartsSpec;
use crate::ct::preprocess::CtPreprocessSpec;
use serde::{Deserialize, Serialize};

/// CRLM-Net v1 packages.
pub const SPEC_FORMAT: u32 = 1;
/// Named ONNX parts.
pub const SPEC_FORMAT_PARTS: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub format: u32,
    pub name: String,
    pub version: String,
    /// Format 1: the architecture the weights belong to (only `crlm-net-v1` is built in).
    /// Format 2: free text describing the parts (`resnet50-l3 + clam-sb + r3d`), reported only.
    pub architecture: String,
    pub intended_use: String,
    /// A demo package: every output that carries its results says DEMO - NOT FOR CLINICAL USE.
    pub demo: bool,
    pub modalities: ModalitySpec,
    pub ct: CtPreprocessSpec,
    pub slide: SlideInputSpec,
    pub clinical: ClinicalEncodingSpec,
    /// CRLM-Net's sizes (format 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    pub decision: DecisionSpec,
    #[serde(default)]
    pub calibration: Calibration,
    /// safetensors weights for the candle backend; a package may carry only ONNX graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsSpec>,
    /// ONNX graphs of the network's parts for the `onnx` backend (docs/BACKENDS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxSpec>,
    /// Format 2: the network as named ONNX parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<PartsSpec>,
    /// What the output means in time; absent (format 1 only): `network.intervals` hazards of 6
    /// months each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeSpec>,
}

impl ModelSpec {
    /// The declared time axis, or format 1's implicit one: `network.intervals` intervals of 6
    /// months from 0.
    pub fn time_axis(&self) -> TimeSpec {
        self.time.clone().unwrap_or_else(|| TimeSpec::Hazards {
            edges_months: (0..=self.network.as_ref().map_or(0, |n| n.intervals)).map(|k| 6 * k as u32).collect(),
        })
    }

    /// The network's ONNX graphs as parts: format 2's `[parts]`, or format 1's `[onnx]`.
    pub fn graph_parts(&self) -> Option<PartsSpec> {
        self.parts.clone().or_else(|| self.onnx.as_ref().map(PartsSpec::from_v1))
    }

    /// Tile normalisation `(mean, std)` per channel: `[slide]`'s, else CRLM-Net's.
    pub fn tile_normalisation(&self) -> ([f32; 3], [f32; 3]) {
        match (&self.slide.tile_mean, &self.slide.tile_std, &self.network) {
            (Some(m), Some(s), _) => (*m, *s),
            (_, _, Some(n)) => (n.tile_mean, n.tile_std),
            _ => ([0.0; 3], [1.0; 3]),
        }
    }
}

/// The study horizon unless configured otherwise: liver metastasis within 24 months.
pub const DEFAULT_HORIZON_MONTHS: u32 = 24;

/// How the network's output relates to time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "output", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeSpec {
    /// Discrete-time hazards: output k is the hazard in `edges_months[k]..edges_months[k + 1]`
    /// given no event before; the edges start at 0 and increase.
    Hazards { edges_months: Vec<u32> },
    /// One output: the probability of the event by `horizon_months`.
    Risk { horizon_months: u32 },
}

impl TimeSpec {
    /// How many values the network gives.
    pub fn outputs(&self) -> usize {
        match self {
            TimeSpec::Hazards { edges_months } => edges_months.len().saturating_sub(1),
            TimeSpec::Risk { .. } => 1,
        }
    }

    /// The problem with the axis itself (edges not from 0, not increasing, too few), if any.
    pub fn problem(&self) -> Option<String> {
        match self {
            TimeSpec::Hazards { edges_months: e } => {
                if e.len() < 2 || e.first() != Some(&0) {
                    Some(format!("time.edges_months {e:?}: at least two edges, the first 0"))
                } else if e.windows(2).any(|w| w[0] >= w[1]) {
                    Some(format!("time.edges_months {e:?}: the edges must increase"))
                } else {
                    None
                }
            }
            TimeSpec::Risk { horizon_months: 0 } => Some("time.horizon_months must be positive".into()),
            TimeSpec::Risk { .. } => None,
        }
    }

    /// How many outputs make up the risk at `horizon` months: exactly the intervals up to it,
    /// or why the axis cannot give that risk.
    pub fn steps_to(&self, horizon: u32) -> Result<usize, String> {
        if let Some(p) = self.problem() {
            return Err(p);
        }
        match self {
            TimeSpec::Hazards { edges_months } => match edges_months.iter().position(|e| *e == horizon) {
                Some(k) if k > 0 => Ok(k),
                _ => Err(format!(
                    "the hazard intervals end at {edges_months:?} months; none ends at the {horizon}-month \
                     horizon, so the risk by then cannot be computed without guessing"
                )),
            },
            TimeSpec::Risk { horizon_months } if *horizon_months == horizon => Ok(1),
            TimeSpec::Risk { horizon_months } => Err(format!(
                "the package outputs the risk by {horizon_months} months, not by the {horizon}-month horizon"
            )),
        }
    }

    /// The intervals (months) the outputs cover, in output order.
    pub fn intervals_months(&self) -> Vec<[u32; 2]> {
        match self {
            TimeSpec::Hazards { edges_months } => edges_months.windows(2).map(|w| [w[0], w[1]]).collect(),
            TimeSpec::Risk { horizon_months } => vec![[0, *horizon_months]],
        }
    }

    /// The risk from the first `steps` outputs (see [`TimeSpec::steps_to`]).
    pub fn risk(&self, outputs: &[f32], steps: usize) -> f64 {
        match self {
            TimeSpec::Hazards { .. } => 1.0 - outputs.iter().take(steps).map(|h| 1.0 - f64::from(*h)).product::<f64>(),
            TimeSpec::Risk { .. } => outputs.first().map_or(f64::NAN, |r| f64::from(*r)),
        }
    }
}

/// The three inputs of CRLM-Net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Ct,
    Slide,
    Clinical,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Modality::Ct, Modality::Slide, Modality::Clinical];
    pub fn name(self) -> &'static str {
        match self {
            Modality::Ct => "ct",
            Modality::Slide => "slide",
            Modality::Clinical => "clinical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModalitySpec {
    /// Every subset of modalities the study allows a prediction from. Anything else is refused.
    pub allowed: Vec<Vec<Modality>>,
}

impl ModalitySpec {
    pub fn allows(&self, present: &[Modality]) -> bool {
        let mut want: Vec<Modality> = present.to_vec();
        want.sort();
        want.dedup();
        self.allowed.iter().any(|s| {
            let mut s = s.clone();
            s.sort();
            s.dedup();
            s == want
        })
    }
}

/// How tiles are taken from a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlideInputSpec {
    /// Tile side in pixels at `microns_per_pixel`.
    pub tile_px: u32,
    pub microns_per_pixel: f64,
    /// Minimum tissue fraction of a tile (from the tissue mask).
    pub min_tissue: f64,
    /// Most tiles per case (all slides together), or `"all"`: every tissue tile.
    pub max_tiles: MaxTiles,
    pub sampling: TileSampling,
    /// Tiles per tile-encoder run; absent: the backend's (`onnx.tile_batch`, 256). Memory is
    /// bounded by this, not by the slide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_batch: Option<usize>,
    /// Tile normalisation, (pixel / 255 - mean) / std per channel (format 2; format 1 has it
    /// in `[network]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_mean: Option<[f32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_std: Option<[f32; 3]>,
}

/// How many tiles a case may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTiles {
    Count(usize),
    /// Every tissue tile of every slide.
    All,
}

impl MaxTiles {
    /// The budget of each of `slides` slides (a count is shared; at least one tile each).
    pub fn per_slide(self, slides: usize) -> usize {
        match self {
            MaxTiles::Count(n) => (n / slides.max(1)).max(1),
            MaxTiles::All => usize::MAX,
        }
    }
}

impl std::fmt::Display for MaxTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxTiles::Count(n) => write!(f, "{n}"),
            MaxTiles::All => f.write_str("all"),
        }
    }
}

impl Serialize for MaxTiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxTiles::Count(n) => s.serialize_u64(*n as u64),
            MaxTiles::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxTiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaxTiles;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive number of tiles or \"all\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaxTiles, E> {
                match usize::try_from(v) {
                    Ok(n) if n > 0 => Ok(MaxTiles::Count(n)),
                    _ => Err(E::custom("max_tiles must be positive (or \"all\")")),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaxTiles, E> {
                u64::try_from(v).map_err(|_| E::custom("max_tiles must be positive")).and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MaxTiles, E> {
                if v == "all" {
                    Ok(MaxTiles::All)
                } else {
                    Err(E::custom(format!("max_tiles {v:?}: a number or \"all\"")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TileSampling {
    /// Evenly spaced over the tissue tiles in reading order (deterministic, covers the section).
    Even,
    /// The tiles with the most tissue, ties in reading order.
    MostTissue,
}

/// One clinical feature: a schema-v1 field and how it becomes numbers.
// No deny_unknown_fields here: serde cannot combine it with `flatten`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub field: String,
    #[serde(flatten)]
    pub encoding: FeatureEncoding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureEncoding {
    /// (x - center) / scale.
    Numeric { center: f64, scale: f64 },
    /// (ln(1 + x) - center) / scale.
    Log { center: f64, scale: f64 },
    /// One column per level.
    OneHot { levels: Vec<String> },
    /// index / (levels - 1).
    Ordinal { levels: Vec<String> },
    /// 1 for true.
    Bool,
    /// One column per cut point: 1 when x >= cut.
    Cut { at: Vec<f64> },
}

impl FeatureEncoding {
    pub fn width(&self) -> usize {
        match self {
            FeatureEncoding::Numeric { .. } | FeatureEncoding::Log { .. } => 1,
            FeatureEncoding::OneHot { levels } => levels.len(),
            FeatureEncoding::Ordinal { .. } | FeatureEncoding::Bool => 1,
            FeatureEncoding::Cut { at } => at.len(),
        }
    }
}

/// The clinical vector: every feature's columns in order, then one missingness indicator per
/// distinct field (order of first appearance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicalEncodingSpec {
    pub features: Vec<FeatureSpec>,
}

impl ClinicalEncodingSpec {
    /// Distinct fields in order of first appearance (one missingness indicator each).
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.features {
            if !out.contains(&f.field.as_str()) {
                out.push(&f.field);
            }
        }
        out
    }
    pub fn width(&self) -> usize {
        self.features.iter().map(|f| f.encoding.width()).sum::<usize>() + self.fields().len()
    }
}

/// Sizes of CRLM-Net v1 (docs/MODEL.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Embedding width of every branch.
    pub embed: usize,
    /// Output channels of the three stride-2 convolutions of the per-slice CT encoder.
    pub ct_channels: [usize; 3],
    /// Output channels of the three stride-2 convolutions of the tile encoder.
    pub tile_channels: [usize; 3],
    /// Hidden width of the slice attention and the gated tile attention.
    pub attention_hidden: usize,
    pub clinical_hidden: usize,
    pub fusion_hidden: usize,
    /// Number of 6-month hazard intervals (4 = up to 24 months).
    pub intervals: usize,
    /// Tile normalisation: (pixel / 255 - mean) / std per channel.
    pub tile_mean: [f32; 3],
    pub tile_std: [f32; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSpec {
    /// Locked threshold on `risk_2y`: at or above it the case is `high`.
    pub threshold: f64,
}

/// Optional recalibration of the 2-year risk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Calibration {
    #[default]
    None,
    /// risk' = sigmoid(a * logit(risk) + b).
    Platt { a: f64, b: f64 },
}

impl Calibration {
    pub fn apply(&self, risk: f64) -> f64 {
        match self {
            Calibration::None => risk,
            Calibration::Platt { a, b } => {
                let r = risk.clamp(1e-7, 1.0 - 1e-7);
                let logit = (r / (1.0 - r)).ln();
                1.0 / (1.0 + (-(a * logit + b)).exp())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsSpec {
    /// safetensors file inside the package, tensors named as in the PyTorch twin's state_dict.
    pub file: String,
}

/// The network as five ONNX graphs, one per part, so a study team can replace one part (a tile
/// encoder of their own, say) and so tiles can be encoded in batches of any size. Each part's
/// `inputs` and `outputs` name the graph's tensors in the order docs/BACKENDS.md gives:
///
/// | part | inputs | outputs |
/// |---|---|---|
/// | `ct_encoder` | CT `[Z, Y, X]` | embedding `[1, E]`, slice attention `[Z]` |
/// | `tile_encoder` | tiles `[N, 3, T, T]` (normalised) | embeddings `[N, E]` |
/// | `slide_pool` | embeddings `[N, E]` | embedding `[1, E]`, tile attention `[N]` |
/// | `clinical_encoder` | clinical `[1, C]` | embedding `[1, E]` |
/// | `fusion` | CT, slide, clinical embeddings `[1, E]` each, presence mask `[1, 3]` | hazards `[1, K]` |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxSpec {
    /// `fp32`, or `int8` for QDQ graphs made by `crlm model quantize`.
    #[serde(default)]
    pub precision: OnnxPrecision,
    /// How the int8 graphs were calibrated (free text; empty for fp32).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub calibration: String,
    pub ct_encoder: OnnxGraphSpec,
    pub tile_encoder: OnnxGraphSpec,
    pub slide_pool: OnnxGraphSpec,
    pub clinical_encoder: OnnxGraphSpec,
    pub fusion: OnnxGraphSpec,
}

impl OnnxSpec {
    /// Every part with its name and how many inputs and outputs it must have.
    pub fn parts(&self) -> [(&'static str, &OnnxGraphSpec, usize, usize); 5] {
        [
            ("ct_encoder", &self.ct_encoder, 1, 2),
            ("tile_encoder", &self.tile_encoder, 1, 1),
            ("slide_pool", &self.slide_pool, 1, 2),
            ("clinical_encoder", &self.clinical_encoder, 1, 1),
            ("fusion", &self.fusion, 4, 1),
        ]
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxPrecision {
    #[default]
    Fp32,
    /// fp16 weights inside the graph, fp32 at its inputs and outputs.
    Fp16,
    Int8,
}

impl OnnxPrecision {
    pub fn name(self) -> &'static str {
        match self {
            OnnxPrecision::Fp32 => "fp32",
            OnnxPrecision::Fp16 => "fp16",
            OnnxPrecision::Int8 => "int8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxGraphSpec {
    /// `.onnx` file inside the package.
    pub file: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

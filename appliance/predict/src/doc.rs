//! The `crlm predict --json` document (format 1) as types: what one case folder came to, built
//! from the typed results of preparation and the model, never assembled by key.

use crate::Timings;
use crlm_models::case::{Eligibility, Modalities, ModelIdentity};
use crlm_models::ct::preprocess::{IndexBox, RoiSource};
use crlm_models::inference::{RiskGroup, TileCounts};
use crlm_models::package::Trust;
use serde::Serialize;

/// One case's document: a prediction or a refusal.
#[derive(Debug, Clone, Serialize)]
pub struct PredictDocument {
    /// [`crate::PREDICT_FORMAT`].
    pub format: u32,
    pub status: DocStatus,
    pub model: DocModel,
    /// [`crate::DEMO_NOTICE`] for the demo package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<&'static str>,
    /// Why the case was not predicted (refusals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The model's output and what it read (predictions).
    #[serde(flatten)]
    pub prediction: Option<Box<DocPrediction>>,
    /// What became of each modality; absent for a case refused before the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Modalities>,
    pub eligibility: Eligibility,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocStatus {
    Predicted,
    Refused,
}

/// The package that ran and who vouches for it.
#[derive(Debug, Clone, Serialize)]
pub struct DocModel {
    #[serde(flatten)]
    pub identity: ModelIdentity,
    pub trust: Trust,
}

/// A prediction's part of the document.
#[derive(Debug, Clone, Serialize)]
pub struct DocPrediction {
    pub risk_2y: f64,
    pub risk_group: RiskGroup,
    pub threshold: f64,
    pub risk_2y_uncalibrated: f64,
    pub hazards: Vec<f32>,
    pub hazard_intervals_months: Vec<[u32; 2]>,
    pub horizon_months: u32,
    pub tiles: TileCounts,
    pub inputs: DocInputs,
    /// The tiles the attention weighed most, at most [`crate::TOP_TILES`].
    pub top_tiles: Vec<TopTile>,
    pub slice_attention: Option<Vec<f32>>,
    pub timings_ms: Timings,
}

/// What the model read of each modality it used.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DocInputs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct: Option<CtInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clinical: Option<ClinicalInput>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slides: Vec<crate::SlideUsed>,
}

/// The CT series used and how it became the model's input.
#[derive(Debug, Clone, Serialize)]
pub struct CtInput {
    pub series_instance_uid: String,
    pub series_description: Option<String>,
    pub slices: usize,
    /// Why this series was chosen.
    pub choice: String,
    pub rejected_series: usize,
    pub roi: RoiSource,
    pub roi_labels: Vec<String>,
    pub roi_box: Option<RoiBox>,
    pub roi_centre_index: [f64; 3],
    pub spacing_mm: [f64; 3],
    pub model_shape: [usize; 3],
}

/// The region of interest's box in voxel indices; `clipped` when it reached the volume's edge.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoiBox {
    #[serde(flatten)]
    pub bbox: IndexBox,
    pub clipped: bool,
}

/// The clinical record used.
#[derive(Debug, Clone, Serialize)]
pub struct ClinicalInput {
    pub record_sha256: String,
    /// The package's fields the record lacks (encoded as missing).
    pub missing_fields: Vec<String>,
}

/// One of the tiles the attention weighed most, in level-0 pixels.
#[derive(Debug, Clone, Serialize)]
pub struct TopTile {
    pub slide: String,
    pub x: u64,
    pub y: u64,
    pub size: u64,
    pub attention: f32,
}

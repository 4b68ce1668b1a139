//! What the front panel shows, as data: the service fills it, `crlm display render --state`
//! reads it from JSON, and the UI draws it. Holds pseudonyms only, never names or IDs.

use serde::{Deserialize, Serialize};

/// Result display mode; owned by the configuration (`display.mode`).
pub use crlm_config::ResultMode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PanelState {
    pub device: String,
    /// Wall time as shown, e.g. "2026-11-26 14:03 UTC".
    pub time: String,
    pub model: Option<ModelView>,
    /// "connected", "disconnected" or "not configured".
    pub broker: String,
    pub outbox_depth: u32,
    pub disk_free_bytes: Option<u64>,
    /// Pseudonym and state of the most recent case, e.g. "P-43915E58AF91 complete".
    pub last_case: Option<String>,
    pub ingest: Option<IngestView>,
    pub processing: Option<ProcessingView>,
    pub result: Option<ResultView>,
    pub problem: Option<ProblemView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub demo: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ItemView {
    pub found: bool,
    /// What was found ("PORTAL VENOUS, 120 slices") or what is awaited.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IngestView {
    pub case: String,
    pub ct: ItemView,
    pub slide: ItemView,
    pub clinical: ItemView,
    /// Seconds since the case's first file arrived.
    pub waiting_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingView {
    pub case: String,
    /// "decode", "tiles", "model", ...
    pub stage: String,
    pub done: u64,
    pub total: u64,
    pub elapsed_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ResultView {
    pub case: String,
    /// 0-1; never drawn in blinded mode.
    pub risk_2y: Option<f64>,
    /// "high" or "low"; never drawn in blinded mode.
    pub risk_group: Option<String>,
    pub threshold: Option<f64>,
    pub modalities: Vec<String>,
    pub ledger_sequence: u64,
    pub locked_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProblemView {
    pub title: String,
    /// What went wrong, in plain words.
    pub what: String,
    /// What staff should do.
    pub action: String,
    /// Support code, e.g. the failed check.
    pub code: String,
}

impl PanelState {
    /// A fixed, complete example (docs, golden images, `crlm display render --example`).
    pub fn example() -> Self {
        PanelState {
            device: "crlm-edge-site01-box1".into(),
            time: "2026-11-26 14:03 UTC".into(),
            model: Some(ModelView {
                name: "CRLM-Net".into(),
                version: "1.0.0".into(),
                sha256: "9f2c4e1ab3d07c55e0d1f0a2b4c6d8e0f1a2b3c4d5e6f708192a3b4c5d6e7f80".into(),
                demo: true,
            }),
            broker: "connected".into(),
            outbox_depth: 0,
            disk_free_bytes: Some(48_300_000_000),
            last_case: Some("P-43915E58AF91 complete".into()),
            ingest: Some(IngestView {
                case: "P-43915E58AF91".into(),
                ct: ItemView { found: true, detail: "ABDOMEN PORTAL VENOUS, 120 slices".into() },
                slide: ItemView { found: false, detail: String::new() },
                clinical: ItemView { found: true, detail: "clinical file".into() },
                waiting_seconds: 754,
            }),
            processing: Some(ProcessingView {
                case: "P-43915E58AF91".into(),
                stage: "tiles".into(),
                done: 1240,
                total: 3980,
                elapsed_seconds: 9,
            }),
            result: Some(ResultView {
                case: "P-43915E58AF91".into(),
                risk_2y: Some(0.234),
                risk_group: Some("high".into()),
                threshold: Some(0.18),
                modalities: vec!["CT".into(), "slide".into(), "clinical".into()],
                ledger_sequence: 42,
                locked_at: "2026-11-26 14:02 UTC".into(),
            }),
            problem: Some(ProblemView {
                title: "Slide file incomplete".into(),
                what: "A slide in case P-43915E58AF91 stopped growing but its tiles end beyond the file: the copy did not finish."
                    .into(),
                action: "Export the slide again into the case folder.".into(),
                code: "slide.tiles_complete".into(),
            }),
        }
    }
}

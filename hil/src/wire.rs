//! What the harness reads back from the box and the collector, typed: `crlm cases --json`,
//! `crlm ledger export --format json`, `crlm fleet export --format json`, quarantine records and
//! MQTT result messages. Only the fields the scenarios check; the rest is ignored.

use serde::Deserialize;

/// One case of `crlm cases --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// The pseudonym.
    pub case: String,
    pub state: String,
    pub files: u64,
    pub ledger_seq: Option<u64>,
    pub outputs_written: bool,
}

/// `crlm ledger export --format json` and `crlm fleet export --format json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Export {
    pub rows: Vec<LockedRow>,
}

/// One locked prediction, as the box's ledger or the collector holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct LockedRow {
    pub pseudonym: String,
    pub sequence: u64,
    pub record_hash: String,
    pub locked_at: String,
    pub model_version: Option<String>,
    pub model_sha256: String,
    /// Collector rows: the box's signature checked with its registered key.
    #[serde(default)]
    pub signature_ok: Option<bool>,
}

/// One ledger record (`crlm ledger show N`): its kind and time, and a clock jump's step.
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerRecord {
    pub seq: u64,
    pub kind: String,
    pub wall_time: String,
    pub body: RecordBody,
}

/// The part of a record's body the scenarios read (other kinds leave it empty).
#[derive(Debug, Clone, Deserialize)]
pub struct RecordBody {
    #[serde(default)]
    pub wall_clock_step_seconds: Option<f64>,
    /// A prediction's model: what ran it.
    #[serde(default)]
    pub model: Option<ModelUsed>,
}

/// What ran a prediction: `candle` or `onnx`, and the execution provider (`cpu`, `cuda`,
/// `tensorrt`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelUsed {
    pub backend: String,
    pub device: String,
}

/// A quarantine record (`<state>/quarantine/*.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Quarantined {
    pub file: Option<String>,
    pub check: String,
    pub reason: String,
}

/// A result message on `crlm/v1/<site>/<device>/result`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResultMessage {
    pub case: String,
    pub record_hash: String,
    pub ledger_seq: u64,
}

/// A heartbeat: the box's conditions and the clock it reports.
#[derive(Debug, Clone, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Condition {
    pub code: String,
}

/// An alert message.
#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub alert: String,
}

//! Every MQTT payload, typed (docs/MQTT.md; JSON Schemas in docs/schemas/mqtt, which a test keeps
//! equal to these types). The box builds them, the collector, `crlm fleet watch` and the demo's
//! tap read them; nobody reads a payload by a JSON key.
//!
//! Topics are `crlm/v1/<site>/<device>/<leaf>`; the leaf is the message's `kind` (`result`,
//! `alert`, `status`, `heartbeat`) or `ack` (the collector's acknowledgement, no `kind`).

use crlm_ledger::countersign::Countersignature;
use crlm_ledger::{CaseStatus, Record};
use crlm_models::inference::RiskGroup;
use serde::{Deserialize, Serialize};

/// Version of every payload (a field of each).
pub const PAYLOAD_VERSION: u32 = 1;

/// A message from a box, tagged by its `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Message {
    Result(ResultPayload),
    Alert(AlertPayload),
    Status(StatusPayload),
    Heartbeat(HeartbeatPayload),
}

impl Message {
    /// Read a payload; `None` (and nothing else) for anything that is not one of ours.
    pub fn parse(bytes: &[u8]) -> Option<Message> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The fields every message of a stream (results, alerts) starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub version: u32,
    pub site: String,
    pub device: String,
    /// `result` or `alert`.
    pub stream: String,
    /// The stream's sequence number, given when the message is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

impl StreamHeader {
    /// This box's header for `stream`, before the outbox numbers it.
    pub fn new(cfg: &crlm_config::MqttConfig, stream: &str) -> StreamHeader {
        StreamHeader {
            version: PAYLOAD_VERSION,
            site: cfg.site.clone(),
            device: cfg.device.clone(),
            stream: stream.into(),
            seq: None,
        }
    }
}

/// A locked prediction or refusal, de-identified (the case pseudonym only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultPayload {
    #[serde(flatten)]
    pub header: StreamHeader,
    pub case: String,
    pub status: CaseStatus,
    pub risk_group: Option<RiskGroup>,
    pub threshold: Option<f64>,
    /// Only with `mqtt.send_risk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_2y: Option<f64>,
    pub model_sha256: String,
    pub demo: bool,
    pub ledger_seq: u64,
    pub record_hash: String,
    pub device_key_id: String,
    pub locked_at: String,
    pub surgery_date: Option<String>,
    /// The whole signed ledger record (with `mqtt.send_risk`), so the collector checks the
    /// box's signature itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertCode {
    /// A file or case was quarantined.
    Quarantine,
    /// A case was locked as a refusal.
    Refusal,
    /// A case could not be processed.
    CaseFailed,
    /// A torn ledger record was cut off at start-up.
    LedgerRecovery,
    /// The outbox holds more than `mqtt.outbox_max_bytes` (nothing is dropped).
    OutboxFull,
    /// The ledger failed its check at start-up: nothing is locked until it is repaired.
    LedgerInvalid,
    /// The state disk is full or nearly so.
    DiskFull,
    /// A file identical to one of another case (the same slide under two patients).
    CrossCaseDuplicate,
}

impl AlertCode {
    pub fn name(self) -> &'static str {
        match self {
            AlertCode::Quarantine => "quarantine",
            AlertCode::Refusal => "refusal",
            AlertCode::CaseFailed => "case_failed",
            AlertCode::LedgerRecovery => "ledger_recovery",
            AlertCode::OutboxFull => "outbox_full",
            AlertCode::LedgerInvalid => "ledger_invalid",
            AlertCode::DiskFull => "disk_full",
            AlertCode::CrossCaseDuplicate => "cross_case_duplicate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertPayload {
    #[serde(flatten)]
    pub header: StreamHeader,
    pub alert: AlertCode,
    pub message: String,
    /// The case pseudonym, when the alert is about one.
    pub case: Option<String>,
    pub at: String,
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Online,
    Offline,
}

/// Retained: `online` on connect, `offline` as the Last Will and on clean shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPayload {
    pub version: u32,
    pub site: String,
    pub device: String,
    pub state: LinkState,
    pub software: String,
    pub at: String,
}

/// The outbox as the heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct OutboxState {
    pub messages: u64,
    pub bytes: u64,
    pub full: bool,
}

/// The box's health, every `mqtt.heartbeat_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatPayload {
    pub version: u32,
    pub site: String,
    pub device: String,
    pub at: String,
    pub uptime_seconds: u64,
    pub software: String,
    /// The package the box predicts with; `None` while it holds predictions for want of one
    /// (the `model` condition says why).
    pub model_sha256: Option<String>,
    pub demo: bool,
    pub outbox: OutboxState,
    pub disk_free_state_bytes: Option<u64>,
    pub disk_free_share_bytes: Option<u64>,
    pub load_1m: Option<f64>,
    pub temperature_c: Option<f64>,
    pub gpu_load: Option<f64>,
    pub interval_seconds: f64,
    /// The most pressing of `conditions`, else the broker link's error; null when all is well.
    pub last_error: Option<String>,
    /// What is wrong on the box now (each cleared when it clears).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A condition that needs someone, as the box reports it while it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub code: ConditionCode,
    pub message: String,
}

/// What kind of condition; `crlm fleet watch` shows the code in capitals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionCode {
    /// The ledger failed its check: no case is locked (predictions held).
    Ledger,
    /// The model package was refused (verification, or its runtime would not start): nothing
    /// is predicted (predictions held).
    Model,
    /// The state disk is full or below its reserve.
    DiskFull,
    /// The last case could not be processed.
    Failed,
}

impl ConditionCode {
    /// The word `crlm fleet watch` shows.
    pub fn word(self) -> &'static str {
        match self {
            ConditionCode::Ledger => "LEDGER",
            ConditionCode::Model => "MODEL",
            ConditionCode::DiskFull => "DISK FULL",
            ConditionCode::Failed => "FAILED",
        }
    }
}

/// Which stream an ack is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Result,
    Alert,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Result => "result",
            Stream::Alert => "alert",
        }
    }
}

/// The collector's acknowledgement: it holds everything of `stream` up to `through_seq`; for
/// results, its countersignature of the box's ledger head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
///
/// Sent signed ([`crate::auth`]); the box acts only on an ack that verifies with its configured
/// collector key and whose `through_sha256` is the content hash of its own message at
/// `through_seq`, so an ack can neither be forged nor replayed onto other messages.
pub struct Ack {
    pub version: u32,
    pub stream: Stream,
    pub through_seq: i64,
    /// [`crate::auth::content_sha256`] of the message `through_seq` as the collector stored it.
    pub through_sha256: String,
    pub countersignature: Option<Countersignature>,
}

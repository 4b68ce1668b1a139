//! Fleet reporting over MQTT (docs/MQTT.md): topics and payloads, the durable outbox, the
//! publishing client and the embedded broker.
//!
//! Results and alerts are written to the outbox (a table in the state database) in the same
//! transaction that records the lock, published in order whenever a broker is reachable, and
//! deleted only when the central collector acknowledges them. A broker's PUBACK proves nothing
//! durable (rumqttc clears its in-memory queue on a clean reconnect; mosquitto persists only
//! periodically), so the collector's application-level ack is the only receipt.
//!
//! # In the data path
//!
//! - Owns: topics, payloads, the durable outbox, the MQTT session (3.1.1 and 5, TLS), the embedded broker.
//! - Inputs: locked records and alerts (outbox rows, written in the lock's transaction).
//! - Outputs: MQTT messages to the collector; acks and countersignatures back into the ledger folder.
//! - Place: ledger -> **mqtt** -> the study office's collector.
//! - Depends on: crlm-ledger, crlm-state, crlm-config.

pub mod auth;
pub mod broker;
pub mod client;
pub mod outbox;
pub mod session;
pub mod tls;

use crlm_config::MqttConfig;
use crlm_ledger::Record;

pub mod payload;
pub use payload::*;
pub const STREAM_RESULT: &str = "result";
pub const STREAM_ALERT: &str = "alert";

/// The TLS transport for `mqtts://` (server verification and, with a client certificate, mutual
/// TLS); None for plain TCP. Shared by the MQTT 3.1.1 and MQTT 5 clients.
pub fn transport(m: &MqttConfig) -> Result<Option<rumqttc::Transport>, String> {
    if !m.tls() {
        return Ok(None);
    }
    let path = |p: &std::path::Path| (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
    let ca = path(&m.ca_file);
    let identity = path(&m.client_cert_file).zip(path(&m.client_key_file));
    let config = tls::client_config(ca.as_deref(), identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
        .map_err(|e| e.to_string())?;
    Ok(Some(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)))))
}

/// `crlm/v1/<site>/<device>/<leaf>`.
pub fn topic(cfg: &MqttConfig, leaf: &str) -> String {
    format!("crlm/v1/{}/{}/{leaf}", cfg.site, cfg.device)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The de-identified result of a locked case record (without its stream sequence number).
pub fn result_payload(cfg: &MqttConfig, record: &Record, record_hash: &str) -> Option<Message> {
    let c = record.case()?;
    let outputs = c.outputs.as_ref();
    Some(Message::Result(ResultPayload {
        header: StreamHeader::new(cfg, STREAM_RESULT),
        case: c.case.clone(),
        status: c.status,
        risk_group: outputs.map(|o| o.risk_group),
        threshold: outputs.map(|o| o.threshold),
        risk_2y: outputs.filter(|_| cfg.send_risk).map(|o| o.risk_2y),
        model_sha256: c.model.sha256.clone(),
        demo: c.model.demo,
        ledger_seq: record.core.seq,
        record_hash: record_hash.to_string(),
        device_key_id: record.core.key_id.clone(),
        locked_at: record.core.wall_time.clone(),
        surgery_date: c.surgery_date.clone(),
        record: cfg.send_risk.then(|| record.clone()),
    }))
}

/// An alert (quarantine, refusal, clock jump, ledger recovery, case failure, ...).
pub fn alert_payload(cfg: &MqttConfig, code: AlertCode, message: &str, case: Option<&str>) -> Message {
    Message::Alert(AlertPayload {
        header: StreamHeader::new(cfg, STREAM_ALERT),
        alert: code,
        message: message.to_string(),
        case: case.map(str::to_string),
        at: now_rfc3339(),
    })
}

/// `online` on connect (retained); `offline` as the Last Will and on clean shutdown.
pub fn status_payload(cfg: &MqttConfig, state: LinkState) -> Message {
    Message::Status(StatusPayload {
        version: PAYLOAD_VERSION,
        site: cfg.site.clone(),
        device: cfg.device.clone(),
        state,
        software: env!("CARGO_PKG_VERSION").into(),
        at: now_rfc3339(),
    })
}

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

pub mod broker;
pub mod client;
pub mod outbox;
pub mod session;
pub mod tls;

use crlm_config::MqttConfig;
use crlm_ledger::Record;
use serde_json::{Value, json};

/// Version of every payload (a field of each).
pub const PAYLOAD_VERSION: u32 = 1;
pub const STREAM_RESULT: &str = "result";
pub const STREAM_ALERT: &str = "alert";

/// Connection options for the configured broker: address, TLS (server verification and, with a
/// client certificate, mutual TLS) and credentials. Every crlm client (the box's publisher, the
/// collector, `crlm fleet watch`, the demo's tap) connects through this.
pub fn mqtt_options(m: &MqttConfig, client_id: impl Into<String>) -> Result<rumqttc::MqttOptions, String> {
    let (host, port) = m.endpoint()?;
    let mut o = rumqttc::MqttOptions::new(client_id, host, port);
    if let Some(t) = transport(m)? {
        o.set_transport(t);
    }
    if !m.username.is_empty() {
        o.set_credentials(m.username.clone(), m.password.clone());
    }
    Ok(o)
}

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

/// The de-identified result of a locked record (without its stream sequence number).
pub fn result_payload(cfg: &MqttConfig, record: &Record, record_hash: &str) -> Value {
    let c = record.case();
    let c = c.as_ref();
    let outputs = c.and_then(|c| c.outputs.as_ref());
    let mut p = json!({
        "version": PAYLOAD_VERSION,
        "kind": "result",
        "site": cfg.site,
        "device": cfg.device,
        "stream": STREAM_RESULT,
        "case": c.map(|c| &c.case),
        "status": c.map(|c| c.status),
        "risk_group": outputs.map(|o| o.risk_group),
        "threshold": outputs.map(|o| o.threshold),
        "model_sha256": c.map(|c| &c.model.sha256),
        "demo": c.map(|c| c.model.demo),
        "ledger_seq": record.core.seq,
        "record_hash": record_hash,
        "device_key_id": record.core.key_id,
        "locked_at": record.core.wall_time,
        "surgery_date": c.and_then(|c| c.surgery_date.as_ref()),
    });
    if cfg.send_risk {
        p["risk_2y"] = json!(outputs.map(|o| o.risk_2y));
        // The whole signed record, so the collector checks the box's signature itself.
        p["record"] = serde_json::to_value(record).unwrap_or(Value::Null);
    }
    p
}

/// An alert (quarantine, refusal, disk low, clock jump, ledger recovery, case failure, ...).
pub fn alert_payload(cfg: &MqttConfig, code: &str, message: &str, case: Option<&str>) -> Value {
    json!({
        "version": PAYLOAD_VERSION,
        "kind": "alert",
        "site": cfg.site,
        "device": cfg.device,
        "stream": STREAM_ALERT,
        "alert": code,
        "message": message,
        "case": case,
        "at": now_rfc3339(),
    })
}

/// `online` on connect (retained); `offline` as the Last Will and on clean shutdown.
pub fn status_payload(cfg: &MqttConfig, state: &str) -> Value {
    json!({
        "version": PAYLOAD_VERSION,
        "kind": "status",
        "site": cfg.site,
        "device": cfg.device,
        "state": state,
        "software": env!("CARGO_PKG_VERSION"),
        "at": now_rfc3339(),
    })
}

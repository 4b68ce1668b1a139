//! The study office's side: `crlm fleet collect` receives every box's results and alerts into
//! its own SQLite database (de-duplicated on site, device, stream and seq), checks each result's
//! ledger signature with the box's registered public key, and acknowledges what it holds with the
//! highest contiguous seq and its Ed25519 countersignature of the box's chain head.
//! `crlm fleet export` gives the statisticians every centre's locked predictions.
//!
//! # In the data path
//!
//! - Owns: the study office's collector (store, verify, acknowledge, countersign), the operators' watch view and the export of all centres.
//! - Inputs: MQTT messages from every box.
//! - Outputs: the collector database, acks, `crlm fleet export` rows.
//! - Place: after mqtt, at the study office; never on the device (feature `office` of the binary).
//! - Depends on: crlm-mqtt, crlm-ledger, crlm-state, crlm-config.

use crlm_ledger::{self as ledger, Head, Record, countersign};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("collector database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{0}")]
    Setup(String),
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    signature_ok INTEGER,
    UNIQUE(site, device, stream, seq)
);
CREATE TABLE IF NOT EXISTS devices(
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    status TEXT,
    heartbeat TEXT,
    last_seen_ms INTEGER,
    PRIMARY KEY(site, device)
);
"#;

pub fn open_db(path: &Path) -> Result<Connection, FleetError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(SCHEMA)?;
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', '1')", [])?;
    Ok(conn)
}

/// The collector's signing key at `path` (hex seed, 0600), made on first use with `.pub` beside it.
pub fn collector_key(path: &Path) -> Result<SigningKey, FleetError> {
    use crlm_models::package::signing;
    if path.exists() {
        return signing::read_signing_key(path).map_err(|e| FleetError::Setup(format!("{}: {e}", path.display())));
    }
    let key = signing::generate_key();
    let io = |e: std::io::Error| FleetError::Setup(format!("{}: {e}", path.display()));
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    crlm_core::fsutil::write_atomic(path, format!("{}\n", hex::encode(key.to_bytes())).as_bytes(), 0o600)
        .map_err(io)?;
    let public = path.with_extension("pub");
    crlm_core::fsutil::write_atomic(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())).as_bytes(),
        0o644,
    )
    .map_err(io)?;
    Ok(key)
}

/// Registered box keys: every `*.pub` file in `dir`, by key id.
pub fn device_keys(dir: Option<&Path>) -> HashMap<String, VerifyingKey> {
    let mut out = HashMap::new();
    let Some(dir) = dir else { return out };
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "pub")
            && let Ok(k) = ledger::read_public_key(&e.path())
        {
            out.insert(ledger::key_id(&k), k);
        }
    }
    out
}

/// Does a result's record verify with the box's registered key, and is it the record it names?
pub fn check_result(payload: &Value, keys: &HashMap<String, VerifyingKey>) -> Option<bool> {
    let record: Record = serde_json::from_value(payload.get("record")?.clone()).ok()?;
    let key = keys.get(&record.core.key_id)?;
    Some(
        ledger::record_signature_ok(&record, key)
            && payload["record_hash"].as_str() == Some(record.hash().as_str())
            && payload["ledger_seq"].as_u64() == Some(record.core.seq),
    )
}

/// Store one message; returns the ack to publish (for results and alerts).
pub fn receive(
    db: &Connection,
    topic: &str,
    payload: &[u8],
    keys: &HashMap<String, VerifyingKey>,
    collector: &SigningKey,
) -> Result<Option<(String, Value)>, FleetError> {
    let parts: Vec<&str> = topic.split('/').collect();
    let [_, _, site, device, leaf] = parts.as_slice() else { return Ok(None) };
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        tracing::warn!(stage = "fleet", site, device, leaf, "unreadable payload ignored");
        return Ok(None);
    };
    let now = crlm_state::now_ms();
    match *leaf {
        "status" | "heartbeat" => {
            let col = if *leaf == "status" { "status" } else { "heartbeat" };
            db.execute(
                &format!(
                    "INSERT INTO devices(site, device, {col}, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(site, device) DO UPDATE SET {col}=excluded.{col}, last_seen_ms=excluded.last_seen_ms"
                ),
                params![site, device, v.to_string(), now],
            )?;
            Ok(None)
        }
        "result" | "alert" => {
            let Some(seq) = v["seq"].as_i64() else { return Ok(None) };
            let sig = if *leaf == "result" { check_result(&v, keys) } else { None };
            let inserted = db.execute(
                "INSERT OR IGNORE INTO messages(site, device, stream, seq, payload, received_ms, signature_ok)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![site, device, leaf, seq, v.to_string(), now, sig],
            )?;
            if inserted == 1 {
                tracing::info!(stage = "fleet", site, device, stream = leaf, seq, signature_ok = ?sig, "received");
            }
            // The highest seq received without a gap from 0.
            let seqs: Vec<i64> = db
                .prepare("SELECT seq FROM messages WHERE site=?1 AND device=?2 AND stream=?3 ORDER BY seq")?
                .query_map(params![site, device, leaf], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut through = -1;
            for s in seqs {
                if s == through + 1 {
                    through = s;
                } else if s > through + 1 {
                    break;
                }
            }
            if through < 0 {
                return Ok(None);
            }
            let mut ack = json!({"version": 1, "stream": leaf, "through_seq": through, "countersignature": null});
            if *leaf == "result" {
                let head: Option<(String, i64)> = db
                    .query_row(
                        "SELECT payload, received_ms FROM messages WHERE site=?1 AND device=?2 AND stream='result' AND seq=?3",
                        params![site, device, through],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((p, received)) = head
                    && let Ok(p) = serde_json::from_str::<Value>(&p)
                    && let (Some(lseq), Some(hash), Some(dev_key)) =
                        (p["ledger_seq"].as_u64(), p["record_hash"].as_str(), p["device_key_id"].as_str())
                {
                    let at = chrono::DateTime::from_timestamp_millis(received).unwrap_or_else(chrono::Utc::now);
                    let head = Head { format: ledger::LEDGER_FORMAT, seq: lseq, hash: hash.to_string() };
                    ack["countersignature"] =
                        serde_json::to_value(countersign::countersign(collector, dev_key, &head, at))
                            .unwrap_or(Value::Null);
                }
            }
            Ok(Some((format!("crlm/v1/{site}/{device}/ack"), ack)))
        }
        _ => Ok(None),
    }
}

/// What `crlm fleet collect` needs.
pub struct CollectOptions {
    /// The broker: url, and for mqtts:// the CA and the collector's certificate and key.
    pub broker: crlm_config::MqttConfig,
    pub db: PathBuf,
    pub key: PathBuf,
    pub devices: Option<PathBuf>,
    pub client_id: String,
}

/// Run the collector until `stop`. A persistent session (clean_session = false) lets the broker
/// keep QoS 1 messages for it while it is away; duplicates are dropped by the unique key.
pub async fn collect(opts: CollectOptions, mut stop: watch::Receiver<bool>) -> Result<(), FleetError> {
    let db = open_db(&opts.db)?;
    let collector = collector_key(&opts.key)?;
    let mut keys = device_keys(opts.devices.as_deref());
    tracing::info!(stage = "fleet", key_id = %ledger::key_id(&collector.verifying_key()), devices = keys.len(), "collector started");
    let mut mo = crlm_mqtt::mqtt_options(&opts.broker, opts.client_id.clone()).map_err(FleetError::Setup)?;
    mo.set_keep_alive(Duration::from_secs(10));
    mo.set_clean_session(false);
    mo.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(mo, 64);
    let mut backoff = 0.5f64;
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = 0.5;
                    tracing::info!(stage = "fleet", "connected to the broker");
                    for leaf in ["result", "alert", "status", "heartbeat"] {
                        let _ = client.subscribe(format!("crlm/v1/+/+/{leaf}"), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // A box registered after the collector started: read the folder again.
                    if p.topic.ends_with("/result")
                        && let Ok(v) = serde_json::from_slice::<Value>(&p.payload)
                        && let Some(id) = v["device_key_id"].as_str()
                        && !keys.contains_key(id)
                    {
                        keys = device_keys(opts.devices.as_deref());
                    }
                    if let Some((topic, ack)) = receive(&db, &p.topic, &p.payload, &keys, &collector)? {
                        let _ = client.try_publish(topic, QoS::AtLeastOnce, false, ack.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(stage = "fleet", error = %e, "broker unreachable; retrying");
                    tokio::time::sleep(Duration::from_secs_f64(backoff)).await;
                    backoff = (backoff * 2.0).min(30.0);
                }
            },
            _ = stop.changed() => break,
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

/// Every message under `crlm/#` as it arrives, sent to `out` as (topic, payload) until `stop`
/// (the demo's capture and `crlm fleet watch`). A payload that is not JSON arrives as a string.
pub async fn tap(
    broker: crlm_config::MqttConfig,
    client_id: String,
    out: tokio::sync::mpsc::Sender<(String, Value)>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), FleetError> {
    let mut mo = crlm_mqtt::mqtt_options(&broker, client_id).map_err(FleetError::Setup)?;
    mo.set_keep_alive(Duration::from_secs(10));
    mo.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(mo, 64);
    let mut backoff = 0.2f64;
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = 0.2;
                    let _ = client.subscribe("crlm/#", QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v = serde_json::from_slice::<Value>(&p.payload)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p.payload).into_owned()));
                    if out.send((p.topic.clone(), v)).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs_f64(backoff)).await;
                    backoff = (backoff * 2.0).min(5.0);
                }
            },
            _ = stop.changed() => break,
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

/// What an operator sees of one box in `crlm fleet watch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoxView {
    pub status: Option<String>,
    pub heartbeat: Option<Value>,
    /// Seconds (on the watcher's clock) when the last heartbeat arrived.
    pub heartbeat_at: Option<f64>,
    pub results: u64,
    pub alerts: u64,
    pub last_alert: Option<String>,
}

impl BoxView {
    /// One word for the box: OFFLINE, LATE (no heartbeat for three intervals), OUTBOX FULL,
    /// ERROR (the heartbeat names a last error), ok, or ? before anything arrived.
    pub fn health(&self, now: f64) -> &'static str {
        if self.status.as_deref() == Some("offline") {
            return "OFFLINE";
        }
        let Some(hb) = &self.heartbeat else {
            return if self.status.is_some() { "LATE" } else { "?" };
        };
        let interval = hb["interval_seconds"].as_f64().unwrap_or(60.0);
        if self.heartbeat_at.is_some_and(|at| now - at > 3.0 * interval) {
            "LATE"
        } else if hb["outbox"]["full"] == true {
            "OUTBOX FULL"
        } else if !hb["last_error"].is_null() {
            "ERROR"
        } else {
            "ok"
        }
    }
}

/// The fleet as the messages describe it, by (site, device).
#[derive(Debug, Default)]
pub struct FleetView {
    pub boxes: std::collections::BTreeMap<(String, String), BoxView>,
}

impl FleetView {
    /// Take one message (`now`: seconds on the watcher's clock). Returns whether anything changed
    /// that the table shows.
    pub fn update(&mut self, topic: &str, payload: &Value, now: f64) -> bool {
        let parts: Vec<&str> = topic.split('/').collect();
        let [_, _, site, device, leaf] = parts.as_slice() else { return false };
        let b = self.boxes.entry((site.to_string(), device.to_string())).or_default();
        match *leaf {
            "status" => b.status = payload["state"].as_str().map(str::to_string),
            "heartbeat" => {
                b.heartbeat = Some(payload.clone());
                b.heartbeat_at = Some(now);
                // A heartbeat means the box is up, whatever an older retained status said.
                b.status = Some("online".into());
            }
            "result" => b.results += 1,
            "alert" => {
                b.alerts += 1;
                b.last_alert = Some(format!(
                    "{}: {}",
                    payload["alert"].as_str().unwrap_or("?"),
                    payload["message"].as_str().unwrap_or("")
                ));
            }
            _ => return false,
        }
        true
    }

    /// The table an operator reads.
    pub fn render(&self, now: f64) -> String {
        let mut out = format!(
            "{:<24} {:<11} {:>9} {:>8} {:>10} {:>6} {:>6} {:>7} {:>6}  {}\n",
            "site/device",
            "health",
            "heartbeat",
            "outbox",
            "disk free",
            "load",
            "temp",
            "results",
            "alerts",
            "last alert / error"
        );
        for ((site, device), b) in &self.boxes {
            let hb = b.heartbeat.as_ref();
            let num = |k: &str| hb.and_then(|h| h[k].as_f64());
            let age =
                b.heartbeat_at.map(|at| format!("{:.0} s ago", (now - at).max(0.0))).unwrap_or_else(|| "-".into());
            let outbox = hb.map(|h| h["outbox"]["messages"].to_string()).unwrap_or_else(|| "-".into());
            let disk = hb
                .and_then(|h| h["disk_free_state_bytes"].as_f64())
                .map(|b| format!("{:.1} GB", b / 1e9))
                .unwrap_or_else(|| "-".into());
            let last = hb
                .and_then(|h| h["last_error"].as_str().map(|e| format!("error: {e}")))
                .or_else(|| b.last_alert.clone())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<24} {:<11} {:>9} {:>8} {:>10} {:>6} {:>6} {:>7} {:>6}  {}\n",
                format!("{site}/{device}"),
                b.health(now),
                age,
                outbox,
                disk,
                num("load_1m").map(|l| format!("{l:.2}")).unwrap_or_else(|| "-".into()),
                num("temperature_c").map(|t| format!("{t:.0}C")).unwrap_or_else(|| "-".into()),
                b.results,
                b.alerts,
                last.chars().take(60).collect::<String>()
            ));
        }
        out
    }
}

/// One line describing a captured message, for people (no identifiers: payloads carry none).
pub fn describe(topic: &str, v: &Value) -> String {
    let leaf = topic.rsplit('/').next().unwrap_or("");
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    match leaf {
        "status" => format!("status: {}", s("state")),
        "heartbeat" => format!(
            "heartbeat: up {} s, outbox {} message(s){}, model {}{}",
            v["uptime_seconds"],
            v["outbox"]["messages"],
            if v["outbox"]["full"] == true { " (FULL)" } else { "" },
            v["model_sha256"].as_str().map(|h| &h[..h.len().min(12)]).unwrap_or("-"),
            if v["demo"] == true { " (DEMO)" } else { "" }
        ),
        "result" => format!(
            "result #{}: case {} {}{}, ledger record {} ({}…)",
            v["seq"],
            s("case"),
            s("status"),
            v["risk_group"].as_str().map(|g| format!(", risk group {g}")).unwrap_or_default(),
            v["ledger_seq"],
            v["record_hash"].as_str().map(|h| &h[..h.len().min(12)]).unwrap_or("-")
        ),
        "alert" => format!("alert #{}: {}: {}", v["seq"], s("alert"), s("message")),
        "ack" => format!(
            "ack from the collector: {} through #{}{}",
            s("stream"),
            v["through_seq"],
            if v["countersignature"].is_object() { ", ledger head countersigned" } else { "" }
        ),
        _ => format!("{leaf}: {v}"),
    }
}

/// One exported row per result (the ledger-export columns plus site and device).
pub fn export_rows(db: &Connection) -> Result<Vec<Value>, FleetError> {
    let mut st = db.prepare(
        "SELECT site, device, payload, received_ms, signature_ok FROM messages WHERE stream='result'
         ORDER BY site, device, seq",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<bool>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (site, device, payload, received, sig) = row?;
        let p: Value = serde_json::from_str(&payload).unwrap_or_default();
        out.push(json!({
            "site": site, "device": device, "sequence": p["ledger_seq"], "pseudonym": p["case"],
            "status": p["status"], "surgery_date": p["surgery_date"], "risk_2y": p["risk_2y"],
            "risk_group": p["risk_group"], "threshold": p["threshold"], "model_sha256": p["model_sha256"],
            "demo": p["demo"], "locked_at": p["locked_at"], "record_hash": p["record_hash"],
            "signature_ok": sig, "received_at": crlm_state::rfc3339(received),
        }));
    }
    Ok(out)
}

/// CSV of [`export_rows`].
pub fn export_csv(rows: &[Value]) -> Result<Vec<u8>, csv::Error> {
    const COLS: [&str; 15] = [
        "site",
        "device",
        "sequence",
        "pseudonym",
        "status",
        "surgery_date",
        "risk_2y",
        "risk_group",
        "threshold",
        "model_sha256",
        "demo",
        "locked_at",
        "record_hash",
        "signature_ok",
        "received_at",
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLS)?;
    for r in rows {
        w.write_record(COLS.iter().map(|c| match &r[*c] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(interval: f64, full: bool, error: Option<&str>) -> Value {
        json!({"version": 1, "kind": "heartbeat", "interval_seconds": interval, "load_1m": 0.5,
               "temperature_c": 48.0, "disk_free_state_bytes": 12_000_000_000u64,
               "outbox": {"messages": 2, "bytes": 900, "full": full}, "last_error": error})
    }

    #[test]
    fn the_fleet_view_says_which_box_is_down_full_or_failing() {
        let mut v = FleetView::default();
        assert!(v.update("crlm/v1/s1/a/status", &json!({"state": "online"}), 0.0));
        assert!(v.update("crlm/v1/s1/a/heartbeat", &heartbeat(5.0, false, None), 1.0));
        assert!(v.update("crlm/v1/s1/b/heartbeat", &heartbeat(5.0, true, None), 1.0));
        assert!(v.update("crlm/v1/s2/c/heartbeat", &heartbeat(5.0, false, Some("disk full")), 1.0));
        assert!(v.update("crlm/v1/s2/d/status", &json!({"state": "offline"}), 1.0));
        assert!(v.update("crlm/v1/s1/a/result", &json!({"seq": 0}), 2.0));
        assert!(v.update("crlm/v1/s1/a/alert", &json!({"alert": "quarantine", "message": "1 file"}), 2.0));
        assert!(!v.update("crlm/v1/s1/a/ack", &json!({}), 2.0));
        let health = |s: &str, d: &str, now| v.boxes[&(s.to_string(), d.to_string())].health(now);
        assert_eq!(health("s1", "a", 10.0), "ok");
        assert_eq!(health("s1", "a", 16.5), "LATE");
        assert_eq!(health("s1", "b", 10.0), "OUTBOX FULL");
        assert_eq!(health("s2", "c", 10.0), "ERROR");
        assert_eq!(health("s2", "d", 10.0), "OFFLINE");
        let table = v.render(10.0);
        assert!(table.contains("s1/a") && table.contains("quarantine: 1 file"), "{table}");
        assert!(table.contains("error: disk full") && table.contains("12.0 GB") && table.contains("48C"), "{table}");
        assert_eq!(table.lines().count(), 5);
    }
}

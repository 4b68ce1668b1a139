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

mod export;
mod view;
pub use export::*;
pub use view::*;

use crlm_ledger::{self as ledger, Head, countersign};
use crlm_mqtt::session::{self, Backoff, Polled, Settings};
use crlm_mqtt::{Ack, Message, PAYLOAD_VERSION, ResultPayload, Stream};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, params};
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
    let setup = |e: &dyn std::fmt::Display| FleetError::Setup(format!("{}: {e}", path.display()));
    if path.exists() {
        return signing::read_signing_key(path).map_err(|e| setup(&e));
    }
    let key = signing::generate_key();
    signing::write_key_pair(path, &key).map_err(|e| setup(&e))?;
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
pub fn check_result(payload: &ResultPayload, keys: &HashMap<String, VerifyingKey>) -> Option<bool> {
    let record = payload.record.as_ref()?;
    let key = keys.get(&record.core.key_id)?;
    Some(
        ledger::record_signature_ok(record, key)
            && payload.record_hash == record.hash()
            && payload.ledger_seq == record.core.seq,
    )
}

/// Store one message; returns the ack to publish (for results and alerts).
pub fn receive(
    db: &Connection,
    topic: &str,
    payload: &[u8],
    keys: &HashMap<String, VerifyingKey>,
    collector: &SigningKey,
) -> Result<Option<(String, Ack)>, FleetError> {
    let parts: Vec<&str> = topic.split('/').collect();
    let [_, _, site, device, leaf] = parts.as_slice() else { return Ok(None) };
    let Some(message) = Message::parse(payload) else {
        tracing::warn!(stage = "fleet", site, device, leaf, "unreadable payload ignored");
        return Ok(None);
    };
    // What arrived, as it arrived (the evidence), once it reads as the message its topic names.
    let text = String::from_utf8_lossy(payload);
    let now = crlm_state::now_ms();
    let (stream, seq, sig) = match (*leaf, &message) {
        ("status", Message::Status(_)) | ("heartbeat", Message::Heartbeat(_)) => {
            let col = if *leaf == "status" { "status" } else { "heartbeat" };
            db.execute(
                &format!(
                    "INSERT INTO devices(site, device, {col}, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(site, device) DO UPDATE SET {col}=excluded.{col}, last_seen_ms=excluded.last_seen_ms"
                ),
                params![site, device, text, now],
            )?;
            return Ok(None);
        }
        ("result", Message::Result(r)) => {
            let Some(seq) = r.header.seq else { return Ok(None) };
            (Stream::Result, seq, check_result(r, keys))
        }
        ("alert", Message::Alert(a)) => {
            let Some(seq) = a.header.seq else { return Ok(None) };
            (Stream::Alert, seq, None)
        }
        _ => {
            tracing::warn!(stage = "fleet", site, device, leaf, "a message whose kind is not its topic's was ignored");
            return Ok(None);
        }
    };
    let leaf = stream.name();
    let inserted = db.execute(
        "INSERT OR IGNORE INTO messages(site, device, stream, seq, payload, received_ms, signature_ok)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![site, device, leaf, seq, text, now, sig],
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
    let mut ack = Ack { version: PAYLOAD_VERSION, stream, through_seq: through, countersignature: None };
    if stream == Stream::Result {
        let head: Option<(String, i64)> = db
            .query_row(
                "SELECT payload, received_ms FROM messages WHERE site=?1 AND device=?2 AND stream='result' AND seq=?3",
                params![site, device, through],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((p, received)) = head
            && let Some(Message::Result(p)) = Message::parse(p.as_bytes())
        {
            let at = chrono::DateTime::from_timestamp_millis(received).unwrap_or_else(chrono::Utc::now);
            let head = Head { format: ledger::LEDGER_FORMAT, seq: p.ledger_seq, hash: p.record_hash.clone() };
            ack.countersignature = Some(countersign::countersign(collector, &p.device_key_id, &head, at));
        }
    }
    Ok(Some((format!("crlm/v1/{site}/{device}/ack"), ack)))
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

/// Run the collector until `stop`, on the same MQTT session type as the box.
pub async fn collect(opts: CollectOptions, mut stop: watch::Receiver<bool>) -> Result<(), FleetError> {
    let db = open_db(&opts.db)?;
    let collector = collector_key(&opts.key)?;
    let mut keys = device_keys(opts.devices.as_deref());
    tracing::info!(stage = "fleet", key_id = %ledger::key_id(&collector.verifying_key()), devices = keys.len(), "collector started");
    // A persistent session lets the broker keep QoS 1 messages for the collector while it is
    // away; duplicates are dropped by the unique key.
    let settings = Settings {
        client_id: opts.client_id.clone(),
        keep_alive: Duration::from_secs(10),
        max_packet_bytes: 1 << 20,
        will: None,
        persistent: true,
    };
    let (client, mut events) = session::connect(&opts.broker, settings).map_err(FleetError::Setup)?;
    let mut backoff = Backoff::new(0.5, 30.0);
    loop {
        tokio::select! {
            ev = events.poll() => match ev {
                Polled::Up => {
                    backoff.reset();
                    tracing::info!(stage = "fleet", "connected to the broker");
                    for leaf in ["result", "alert", "status", "heartbeat"] {
                        let _ = client.subscribe(format!("crlm/v1/+/+/{leaf}")).await;
                    }
                }
                Polled::Message(topic, payload) => {
                    // A box registered after the collector started: read the folder again.
                    if topic.ends_with("/result")
                        && let Some(Message::Result(r)) = Message::parse(&payload)
                        && !keys.contains_key(&r.device_key_id)
                    {
                        keys = device_keys(opts.devices.as_deref());
                    }
                    if let Some((topic, ack)) = receive(&db, &topic, &payload, &keys, &collector)? {
                        client.try_publish(topic, true, serde_json::to_vec(&ack).unwrap_or_default());
                    }
                }
                Polled::Other => {}
                Polled::Lost(e) => {
                    tracing::warn!(stage = "fleet", error = %e, "broker unreachable; retrying");
                    tokio::time::sleep(backoff.step()).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    client.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collector's public key is where the documentation says (issue 21, defect 9: the docs
    /// and --help named `collector.key.pub`, the collector wrote `collector.pub`).
    #[test]
    fn the_collector_key_pair_is_where_the_documentation_says() {
        let d = tempfile::tempdir().unwrap();
        let key = collector_key(&d.path().join("collector.key")).unwrap();
        let public = ledger::read_public_key(&d.path().join("collector.pub")).unwrap();
        assert_eq!(public, key.verifying_key());
        assert!(!d.path().join("collector.key.pub").exists());
        let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/MQTT.md")).unwrap();
        assert!(docs.contains("`collector.pub`") && !docs.contains("collector.key.pub"));
        // The same key is read back, not made again.
        assert_eq!(collector_key(&d.path().join("collector.key")).unwrap().to_bytes(), key.to_bytes());
    }
}

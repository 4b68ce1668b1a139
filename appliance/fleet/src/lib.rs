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
use crlm_mqtt::auth::{self, Opened, Party};
use crlm_mqtt::session::{self, Backoff, Polled, Settings};
use crlm_mqtt::{Ack, Message, PAYLOAD_VERSION, ResultPayload, Stream};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
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
CREATE TABLE IF NOT EXISTS rejected(
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    leaf TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_ms INTEGER NOT NULL
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

/// The boxes the study office enrolled: `<devices>/<site>/<device>.pub`, each box's device key
/// (`device.pub` from its state folder). A message is stored only from a registered box and only
/// when it is signed with that box's key, so neither an unknown client nor one box can speak for
/// another.
#[derive(Debug)]
pub struct Registry {
    dir: Option<PathBuf>,
    keys: HashMap<(String, String), VerifyingKey>,
    loaded: Option<Instant>,
}

/// An unknown box makes the registry read its folder again, at most this often.
const REGISTRY_RELOAD: Duration = Duration::from_secs(5);

impl Registry {
    pub fn load(dir: Option<&Path>) -> Registry {
        let mut r = Registry { dir: dir.map(Path::to_path_buf), keys: HashMap::new(), loaded: None };
        r.reload();
        r
    }

    fn reload(&mut self) {
        self.loaded = Some(Instant::now());
        self.keys.clear();
        let Some(dir) = &self.dir else { return };
        for site in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let (path, site_name) = (site.path(), site.file_name().to_string_lossy().into_owned());
            if !path.is_dir() {
                if path.extension().is_some_and(|x| x == "pub") {
                    tracing::warn!(stage = "fleet", file = %path.display(), "a key file directly in --devices registers no box: put it at <site>/<device>.pub");
                }
                continue;
            }
            for f in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                let p = f.path();
                let Some(device) = p.file_stem().filter(|_| p.extension().is_some_and(|x| x == "pub")) else {
                    continue;
                };
                match ledger::read_public_key(&p) {
                    Ok(k) => {
                        self.keys.insert((site_name.clone(), device.to_string_lossy().into_owned()), k);
                    }
                    Err(e) => {
                        tracing::error!(stage = "fleet", file = %p.display(), error = %e, "registered key unreadable")
                    }
                }
            }
        }
    }

    /// The key registered for a box, reading the folder again (rate-limited) for one not known yet.
    pub fn key(&mut self, site: &str, device: &str) -> Option<VerifyingKey> {
        let id = (site.to_string(), device.to_string());
        if !self.keys.contains_key(&id) && self.loaded.is_none_or(|t| t.elapsed() >= REGISTRY_RELOAD) {
            self.reload();
        }
        self.keys.get(&id).copied()
    }

    /// Boxes registered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Does a result's record verify with the box's registered key, and is it the record it names?
pub fn check_result(payload: &ResultPayload, key: &VerifyingKey) -> Option<bool> {
    let record = payload.record.as_ref()?;
    Some(
        record.core.key_id == ledger::key_id(key)
            && ledger::record_signature_ok(record, key)
            && payload.record_hash == record.hash()
            && payload.ledger_seq == record.core.seq
            && payload.device_key_id == record.core.key_id,
    )
}

/// Kept rejected messages (the newest); each is stored cut to this many bytes.
const REJECTED_KEEP: i64 = 10_000;
const REJECTED_PAYLOAD_MAX: usize = 16 << 10;

/// Keep a message the collector refused, with why, and raise the alert (the log's `alert`).
fn reject(db: &Connection, site: &str, device: &str, leaf: &str, payload: &[u8], why: &str) -> Result<(), FleetError> {
    tracing::error!(
        stage = "fleet",
        alert = "message_rejected",
        site,
        device,
        leaf,
        reason = why,
        "message rejected: not stored, not acknowledged"
    );
    let cut = &payload[..payload.len().min(REJECTED_PAYLOAD_MAX)];
    db.execute(
        "INSERT INTO rejected(site, device, leaf, reason, payload, received_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![site, device, leaf, why, String::from_utf8_lossy(cut), crlm_state::now_ms()],
    )?;
    db.execute("DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?1", [REJECTED_KEEP])?;
    Ok(())
}

/// Store one message from a box; returns the signed ack to publish (topic, payload) for results
/// and alerts. A message that does not verify is kept in `rejected`, never in `messages`, and
/// gets no ack.
pub fn receive(
    db: &Connection,
    topic: &str,
    payload: &[u8],
    registry: &mut Registry,
    collector: &SigningKey,
) -> Result<Option<(String, Vec<u8>)>, FleetError> {
    let parts: Vec<&str> = topic.split('/').collect();
    let [_, _, site, device, leaf] = parts.as_slice() else { return Ok(None) };
    if !["result", "alert", "status", "heartbeat"].contains(leaf) {
        return Ok(None);
    }
    let refuse = |why: &str| reject(db, site, device, leaf, payload, why).map(|()| None);
    let Some(key) = registry.key(site, device) else {
        return refuse(&format!("box {site}/{device} is not registered (no {site}/{device}.pub in --devices)"));
    };
    let opened = match Opened::new(payload) {
        Ok(o) => o,
        Err(e) => return refuse(&e.to_string()),
    };
    if let Err(e) = opened.verify(Party::Box, topic, &key) {
        return refuse(&e.to_string());
    }
    let Some(message) = opened.parse::<Message>() else { return refuse("not a crlm v1 message") };
    let from = |s: &str, d: &str| s == *site && d == *device;
    let names_sender = match &message {
        Message::Result(r) => from(&r.header.site, &r.header.device),
        Message::Alert(a) => from(&a.header.site, &a.header.device),
        Message::Status(x) => from(&x.site, &x.device),
        Message::Heartbeat(h) => from(&h.site, &h.device),
    };
    if !names_sender {
        return refuse("its site or device is not its topic's");
    }
    // What arrived, as it arrived (the evidence).
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
            let Some(seq) = r.header.seq else { return refuse("a result without seq") };
            let sig = check_result(r, &key);
            if sig == Some(false) {
                return refuse("its ledger record does not verify with the box's key, or is not the record it names");
            }
            (Stream::Result, seq, sig)
        }
        ("alert", Message::Alert(a)) => {
            let Some(seq) = a.header.seq else { return refuse("an alert without seq") };
            (Stream::Alert, seq, None)
        }
        _ => return refuse("its kind is not its topic's"),
    };
    let leaf = stream.name();
    let inserted = db.execute(
        "INSERT OR IGNORE INTO messages(site, device, stream, seq, payload, received_ms, signature_ok)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![site, device, leaf, seq, text, now, sig],
    )?;
    if inserted == 1 {
        tracing::info!(stage = "fleet", site, device, stream = leaf, seq, signature_ok = ?sig, "received");
    } else {
        let held: String = db.query_row(
            "SELECT payload FROM messages WHERE site=?1 AND device=?2 AND stream=?3 AND seq=?4",
            params![site, device, leaf, seq],
            |r| r.get(0),
        )?;
        if auth::content_sha256(held.as_bytes()) != auth::content_sha256(payload) {
            return refuse(&format!("{leaf} {seq} is already held with other content (the box's state was reset?)"));
        }
    }
    ack(db, site, device, stream, collector)
}

/// The signed ack of everything of `stream` held without a gap from 0 (None before seq 0).
fn ack(
    db: &Connection,
    site: &str,
    device: &str,
    stream: Stream,
    collector: &SigningKey,
) -> Result<Option<(String, Vec<u8>)>, FleetError> {
    let leaf = stream.name();
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
    let (held, received): (String, i64) = db.query_row(
        "SELECT payload, received_ms FROM messages WHERE site=?1 AND device=?2 AND stream=?3 AND seq=?4",
        params![site, device, leaf, through],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut ack = Ack {
        version: PAYLOAD_VERSION,
        stream,
        through_seq: through,
        through_sha256: auth::content_sha256(held.as_bytes()).unwrap_or_default(),
        countersignature: None,
    };
    if stream == Stream::Result
        && let Some(Message::Result(p)) = Message::parse(held.as_bytes())
    {
        let at = chrono::DateTime::from_timestamp_millis(received).unwrap_or_else(chrono::Utc::now);
        let head = Head { format: ledger::LEDGER_FORMAT, seq: p.ledger_seq, hash: p.record_hash.clone() };
        ack.countersignature = Some(countersign::countersign(collector, &p.device_key_id, &head, at));
    }
    let topic = format!("crlm/v1/{site}/{device}/ack");
    let body = serde_json::to_vec(&ack).map_err(|e| FleetError::Setup(e.to_string()))?;
    let sealed =
        auth::seal(Party::Collector, &topic, &body, collector).map_err(|e| FleetError::Setup(e.to_string()))?;
    Ok(Some((topic, sealed)))
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
    let mut registry = Registry::load(opts.devices.as_deref());
    tracing::info!(stage = "fleet", key_id = %ledger::key_id(&collector.verifying_key()), devices = registry.len(), "collector started");
    if registry.is_empty() {
        tracing::warn!(
            stage = "fleet",
            "no box registered (--devices <dir> with <site>/<device>.pub): every message will be rejected"
        );
    }
    let anonymous = opts.broker.username.is_empty() && opts.broker.client_cert_file.as_os_str().is_empty();
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
                    if anonymous {
                        tracing::warn!(stage = "fleet", "the broker let the collector in without credentials or a client certificate: configure broker authentication (docs/MQTT.md)");
                    }
                    for leaf in ["result", "alert", "status", "heartbeat"] {
                        let _ = client.subscribe(format!("crlm/v1/+/+/{leaf}")).await;
                    }
                }
                Polled::Message(topic, payload) => {
                    if let Some((topic, ack)) = receive(&db, &topic, &payload, &mut registry, &collector)? {
                        client.try_publish(topic, true, ack);
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
mod tests;

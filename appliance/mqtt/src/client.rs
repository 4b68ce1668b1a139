//! The publishing client (rumqttc): status with a Last Will, heartbeats, and the outbox sent in
//! order on every connection until the collector acknowledges it. rumqttc neither backs off nor
//! re-subscribes after a reconnect: both are done here (capped exponential back-off with jitter;
//! the ack topic is subscribed on every CONNACK).

use super::auth::{self, Opened, Party};
use super::session::{self, Polled, Settings};
use super::{
    Ack, AlertCode, Condition, HeartbeatPayload, LinkState, Message, OutboxState, PAYLOAD_VERSION, outbox,
    status_payload, topic,
};
use crlm_config::Config;
use crlm_ledger as ledger;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Unacknowledged messages are sent again after this long, in case the broker dropped them
/// while the collector was away.
const RESEND_AFTER: Duration = Duration::from_secs(30);

/// What the panel and heartbeat learn about the link.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkView {
    /// "connected", "disconnected" or "not configured".
    pub broker: String,
    pub outbox_messages: u64,
}

/// What the publisher needs besides the configuration.
pub struct PublisherContext {
    /// `None` while no package is loaded (predictions held).
    pub model_sha256: Option<String>,
    pub demo: bool,
    pub device_key_id: String,
    /// The box's device key (its ledger key): every message it publishes is signed with it.
    pub device_key: SigningKey,
    pub on_link: Arc<dyn Fn(LinkView) + Send + Sync>,
    /// Notified when something was queued, so it leaves at once rather than at the next poll.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// What is wrong on the box now (the heartbeat's `conditions`), most pressing first.
    pub conditions: Arc<dyn Fn() -> Vec<Condition> + Send + Sync>,
}

enum Link {
    Up,
    Down(String),
    Message(String, Vec<u8>),
}

/// `message` signed with the box's key for `topic`.
fn sealed(key: &SigningKey, topic: &str, message: &[u8]) -> Vec<u8> {
    auth::seal(Party::Box, topic, message, key).unwrap_or_default()
}

/// Run until `stop`: connect, publish, heartbeat, take acks; publish `offline` on the way out.
pub async fn run(cfg: Config, ctx: PublisherContext, mut stop: watch::Receiver<bool>) {
    let m = cfg.mqtt.clone();
    let key = ctx.device_key.clone();
    let status = |state| sealed(&key, &topic(&m, "status"), status_payload(&m, state).to_json().as_bytes());
    let settings = Settings {
        client_id: format!("crlm-{}-{}", m.site, m.device),
        keep_alive: Duration::from_secs(10),
        // Results carry the signed record (a CT lists every slice): allow up to 1 MiB.
        max_packet_bytes: 1 << 20,
        will: Some((topic(&m, "status"), String::from_utf8_lossy(&status(LinkState::Offline)).into_owned())),
        persistent: false,
    };
    let (client, mut eventloop) = match session::connect(&m, settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(stage = "mqtt", error = %e, "cannot connect to the broker; results wait in the outbox");
            return;
        }
    };
    let (link_tx, mut link_rx) = mpsc::channel::<Link>(64);
    let mut backoff = session::Backoff::new(m.reconnect_min_seconds, m.reconnect_max_seconds);
    let poller = tokio::spawn(async move {
        loop {
            let ev = match eventloop.poll().await {
                Polled::Up => {
                    backoff.reset();
                    Link::Up
                }
                Polled::Message(t, payload) => Link::Message(t, payload),
                Polled::Other => continue,
                Polled::Lost(e) => {
                    let _ = link_tx.send(Link::Down(e)).await;
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
            };
            if link_tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    let db_path = cfg.database_path();
    let Ok(db) = crlm_state::StateDb::open(&db_path) else {
        tracing::error!(stage = "mqtt", "cannot open the state database; fleet reporting is off");
        return;
    };
    let ack_topic = topic(&m, "ack");
    let collectors = collector_keys(&cfg);
    let anonymous = m.username.is_empty() && m.client_cert_file.as_os_str().is_empty();
    let mut anonymous_warned = false;
    let ledger_dir: PathBuf = cfg.ledger_dir();
    let mut last_cs_seq: Option<u64> = None;
    let started = Instant::now();
    let mut connected = false;
    let mut sent_through = 0i64;
    let mut last_progress = Instant::now();
    let mut last_error: Option<String> = None;
    let mut full_alerted = false;
    let mut heartbeat = tokio::time::interval(Duration::from_secs_f64(m.heartbeat_seconds));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let report = |connected: bool, db: &crlm_state::StateDb| {
        let messages = db.outbox_depth().map(|d| d.0).unwrap_or(0);
        (ctx.on_link)(LinkView {
            broker: if connected { "connected" } else { "disconnected" }.into(),
            outbox_messages: messages,
        });
    };
    report(false, &db);
    loop {
        tokio::select! {
            ev = link_rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Link::Up => {
                        tracing::info!(stage = "mqtt", protocol = m.protocol.name(), "connected to the broker");
                        connected = true;
                        sent_through = 0;
                        // The link is back: its error no longer holds (the heartbeat reports
                        // only a condition that is still true).
                        last_error = None;
                        if anonymous && !anonymous_warned {
                            anonymous_warned = true;
                            tracing::warn!(stage = "mqtt", "the broker let this box in without credentials or a client certificate: any client may publish there (messages and acks are signed, so none is acted on unverified); configure broker authentication (docs/MQTT.md)");
                        }
                        let _ = client.publish(topic(&m, "status"), true, true, status(LinkState::Online)).await;
                        let _ = client.subscribe(ack_topic.clone()).await;
                        report(true, &db);
                    }
                    Link::Down(e) => {
                        if connected {
                            tracing::warn!(stage = "mqtt", error = %e, "broker connection lost; results wait in the outbox");
                        }
                        last_error = Some(e);
                        connected = false;
                        report(false, &db);
                    }
                    Link::Message(t, payload) if t == ack_topic => {
                        handle_ack(&db, &ack_topic, &payload, &ctx.device_key_id, &ledger_dir, &collectors, &mut last_cs_seq);
                        last_progress = Instant::now();
                        report(connected, &db);
                    }
                    Link::Message(..) => {}
                }
            }
            _ = async {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = ctx.outbox_wake.notified() => {}
                }
            } => {
                if !connected {
                    continue;
                }
                if sent_through > 0 && last_progress.elapsed() > RESEND_AFTER {
                    sent_through = 0;
                    last_progress = Instant::now();
                }
                let rows = db.outbox_after(sent_through, 100).unwrap_or_default();
                for q in rows {
                    let payload = sealed(&key, &q.topic, q.payload.as_bytes());
                    if client.publish(q.topic.clone(), true, false, payload).await.is_err() {
                        break;
                    }
                    sent_through = q.id;
                }
            }
            _ = heartbeat.tick() => {
                let (messages, bytes) = db.outbox_depth().unwrap_or((0, 0));
                let full = bytes > m.outbox_max_bytes;
                if full && !full_alerted {
                    let why = format!("the outbox holds {bytes} bytes, above mqtt.outbox_max_bytes; nothing is dropped");
                    let _ = outbox::enqueue_alert(&db, &m, AlertCode::OutboxFull, &why, None);
                }
                full_alerted = full;
                if connected {
                    let conditions = (ctx.conditions)();
                    let last_error = conditions.first().map(|c| c.message.clone()).or_else(|| last_error.clone());
                    let hb = Message::Heartbeat(HeartbeatPayload {
                        version: PAYLOAD_VERSION,
                        site: m.site.clone(),
                        device: m.device.clone(),
                        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        uptime_seconds: started.elapsed().as_secs(),
                        software: env!("CARGO_PKG_VERSION").into(),
                        model_sha256: ctx.model_sha256.clone(),
                        demo: ctx.demo,
                        outbox: OutboxState { messages, bytes, full },
                        disk_free_state_bytes: crlm_drivers::health::disk_free_bytes(&cfg.state.path),
                        disk_free_share_bytes: crlm_drivers::health::disk_free_bytes(&cfg.share.path),
                        load_1m: crlm_drivers::health::load_1m(),
                        temperature_c: crlm_drivers::health::max_temperature_celsius(std::path::Path::new("/sys/class/thermal")),
                        gpu_load: crlm_drivers::health::jetson_gpu_load(),
                        interval_seconds: m.heartbeat_seconds,
                        last_error,
                        conditions,
                    });
                    let t = topic(&m, "heartbeat");
                    let payload = sealed(&key, &t, hb.to_json().as_bytes());
                    client.try_publish_unreliable(t, payload);
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    break;
                }
            }
        }
    }
    if connected {
        let _ = client.publish(topic(&m, "status"), true, true, status(LinkState::Offline)).await;
        // Let the event loop flush the offline status before disconnecting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poller.abort();
}

/// The collector keys acks must verify with (`mqtt.collector_key`, `ledger.collector_keys`).
fn collector_keys(cfg: &Config) -> Vec<VerifyingKey> {
    let mut keys = Vec::new();
    for p in cfg.mqtt.ack_keys(&cfg.ledger) {
        match ledger::read_public_key(p) {
            Ok(k) => keys.push(k),
            Err(e) => tracing::error!(stage = "mqtt", key = %p.display(), error = %e, "collector key unreadable"),
        }
    }
    if keys.is_empty() {
        tracing::warn!(
            stage = "mqtt",
            "no collector key configured (mqtt.collector_key): acks cannot be verified and are ignored, so every result stays in the outbox"
        );
    }
    keys
}

/// Why an ack was not acted on.
#[derive(Debug, PartialEq)]
pub enum AckRefused {
    Unsigned(auth::AuthError),
    Unreadable,
    /// It names a message this box does not hold with that content (a replay or a forgery).
    NotOurs {
        stream: &'static str,
        through: i64,
    },
}

/// A verified ack.
#[derive(Debug)]
pub struct VerifiedAck {
    pub ack: Ack,
    /// The message it names is still in the outbox (else a genuine ack whose messages are
    /// already gone: acks are cumulative, so it removes nothing more).
    pub removes: bool,
}

/// Verify an ack: the collector's signature for this box's ack topic, then the message it
/// covers.
pub fn verify_ack(
    db: &crlm_state::StateDb,
    ack_topic: &str,
    payload: &[u8],
    collectors: &[VerifyingKey],
) -> Result<VerifiedAck, AckRefused> {
    let opened = Opened::new(payload).map_err(AckRefused::Unsigned)?;
    opened.verify_any(Party::Collector, ack_topic, collectors).map_err(AckRefused::Unsigned)?;
    let ack: Ack = opened.parse().ok_or(AckRefused::Unreadable)?;
    let (stream, through) = (ack.stream.name(), ack.through_seq);
    match db.outbox_message(stream, through) {
        Ok(Some(q)) if auth::content_sha256(q.payload.as_bytes()).as_deref() == Some(ack.through_sha256.as_str()) => {
            Ok(VerifiedAck { ack, removes: true })
        }
        Ok(Some(_)) => Err(AckRefused::NotOurs { stream, through }),
        // Its countersignature is still worth keeping.
        Ok(None) | Err(_) => Ok(VerifiedAck { ack, removes: false }),
    }
}

/// The collector's ack: drop what it has, keep its countersignature of our chain head when it
/// matches our ledger. Only a signed ack naming one of our messages is acted on.
fn handle_ack(
    db: &crlm_state::StateDb,
    ack_topic: &str,
    payload: &[u8],
    device_key_id: &str,
    ledger_dir: &std::path::Path,
    collectors: &[VerifyingKey],
    last_cs_seq: &mut Option<u64>,
) {
    let (ack, removes) = match verify_ack(db, ack_topic, payload, collectors) {
        Ok(v) => (v.ack, v.removes),
        Err(why) => {
            tracing::warn!(stage = "mqtt", alert = "ack_refused", why = ?why, "an ack that does not verify was ignored");
            return;
        }
    };
    let (stream, through) = (ack.stream.name(), ack.through_seq);
    if removes {
        match db.outbox_acknowledge(stream, through) {
            Ok(n) if n > 0 => tracing::info!(stage = "mqtt", stream, through, removed = n, "collector acknowledged"),
            Ok(_) => {}
            Err(e) => tracing::error!(stage = "mqtt", error = %e, "cannot apply the collector's ack"),
        }
    }
    let Some(cs) = ack.countersignature else { return };
    if cs.device_key_id != device_key_id || last_cs_seq.is_some_and(|s| cs.seq <= s) {
        return;
    }
    if !collectors.iter().any(|k| cs.verifies_with(k)) {
        tracing::warn!(stage = "mqtt", collector = %cs.collector_key_id, "countersignature from an unknown collector ignored");
        return;
    }
    match ledger::read_record(ledger_dir, cs.seq) {
        Ok(Some((_, hash))) if hash == cs.hash => {
            if let Err(e) = ledger::countersign::store(ledger_dir, &cs) {
                tracing::error!(stage = "ledger", error = %e, "cannot keep the countersignature");
            } else {
                *last_cs_seq = Some(cs.seq);
            }
        }
        _ => tracing::error!(
            stage = "ledger",
            alert = "countersignature_mismatch",
            seq = cs.seq,
            "the collector countersigned a record this ledger does not hold"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stream;
    use crlm_state::Enqueue;

    fn signed_ack(key: &SigningKey, topic: &str, through: i64, sha: &str) -> Vec<u8> {
        let ack = Ack {
            version: PAYLOAD_VERSION,
            stream: Stream::Result,
            through_seq: through,
            through_sha256: sha.into(),
            countersignature: None,
        };
        auth::seal(Party::Collector, topic, &serde_json::to_vec(&ack).unwrap(), key).unwrap()
    }

    /// Issue 21, defect 2: an anonymous client's `{"through_seq":1000,...}` on the box's ack topic
    /// removed an unsent result. Only an ack signed by the configured collector, for this box's
    /// topic, naming a message this box holds with that content, removes anything.
    #[test]
    fn only_a_signed_ack_naming_our_own_message_empties_the_outbox() {
        let d = tempfile::tempdir().unwrap();
        let db = crlm_state::StateDb::open(&d.path().join("crlm.sqlite")).unwrap();
        for _ in 0..3 {
            db.enqueue("result", "crlm/v1/site01/box01/result", |seq| {
                format!("{{\"seq\":{seq},\"case\":\"P-{seq}\"}}")
            })
            .unwrap();
        }
        let topic = "crlm/v1/site01/box01/ack";
        let collector = SigningKey::from_bytes(&[9; 32]);
        let keys = [collector.verifying_key()];
        let held = |seq: i64| db.outbox_message("result", seq).unwrap().map(|q| q.payload);
        let sha1 = auth::content_sha256(held(1).unwrap().as_bytes()).unwrap();

        let forged = br#"{"version":1,"stream":"result","through_seq":1000,"countersignature":null}"#;
        assert!(matches!(verify_ack(&db, topic, forged, &keys), Err(AckRefused::Unsigned(auth::AuthError::Unsigned))));
        let other_key = signed_ack(&SigningKey::from_bytes(&[5; 32]), topic, 1, &sha1);
        assert!(matches!(verify_ack(&db, topic, &other_key, &keys), Err(AckRefused::Unsigned(_))));
        // Signed for another box's ack topic: not for us.
        let other_box = signed_ack(&collector, "crlm/v1/site01/box02/ack", 1, &sha1);
        assert!(matches!(verify_ack(&db, topic, &other_box, &keys), Err(AckRefused::Unsigned(_))));
        // Genuinely signed, but for other content under that number (a replay from before a reset).
        let replay = signed_ack(&collector, topic, 2, &sha1);
        assert_eq!(
            verify_ack(&db, topic, &replay, &keys).err(),
            Some(AckRefused::NotOurs { stream: "result", through: 2 })
        );
        // No collector key configured: nothing verifies.
        assert!(verify_ack(&db, topic, &signed_ack(&collector, topic, 1, &sha1), &[]).is_err());
        assert_eq!(db.outbox_depth().unwrap().0, 3, "nothing was removed");

        let genuine = signed_ack(&collector, topic, 1, &sha1);
        let v = verify_ack(&db, topic, &genuine, &keys).unwrap();
        assert!(v.removes && v.ack.through_seq == 1);
        db.outbox_acknowledge("result", 1).unwrap();
        assert_eq!((held(0), held(1), held(2).is_some()), (None, None, true));
        // The same ack again is genuine but removes nothing more.
        assert!(!verify_ack(&db, topic, &genuine, &keys).unwrap().removes);
    }
}

//! The publishing client (rumqttc): status with a Last Will, heartbeats, and the outbox sent in
//! order on every connection until the collector acknowledges it. rumqttc neither backs off nor
//! re-subscribes after a reconnect: both are done here (capped exponential back-off with jitter;
//! the ack topic is subscribed on every CONNACK).

use super::session::{self, Polled, Settings};
use super::{
    Ack, AlertCode, HeartbeatPayload, LinkState, Message, OutboxState, PAYLOAD_VERSION, outbox, status_payload, topic,
};
use crlm_config::Config;
use crlm_ledger as ledger;
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
    pub model_sha256: String,
    pub demo: bool,
    pub device_key_id: String,
    pub on_link: Arc<dyn Fn(LinkView) + Send + Sync>,
    /// Notified when something was queued, so it leaves at once rather than at the next poll.
    pub outbox_wake: Arc<tokio::sync::Notify>,
}

enum Link {
    Up,
    Down(String),
    Message(String, Vec<u8>),
}

/// Run until `stop`: connect, publish, heartbeat, take acks; publish `offline` on the way out.
pub async fn run(cfg: Config, ctx: PublisherContext, mut stop: watch::Receiver<bool>) {
    let m = cfg.mqtt.clone();
    let settings = Settings {
        client_id: format!("crlm-{}-{}", m.site, m.device),
        keep_alive: Duration::from_secs(10),
        // Results carry the signed record (a CT lists every slice): allow up to 1 MiB.
        max_packet_bytes: 1 << 20,
        will: Some((topic(&m, "status"), status_payload(&m, LinkState::Offline).to_json())),
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
    let collectors: Vec<_> = cfg.ledger.collector_keys.iter().filter_map(|p| ledger::read_public_key(p).ok()).collect();
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
                        let _ = client
                            .publish(topic(&m, "status"), true, true, status_payload(&m, LinkState::Online).to_json().into_bytes())
                            .await;
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
                        handle_ack(&db, &payload, &ctx.device_key_id, &ledger_dir, &collectors, &mut last_cs_seq);
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
                    if client.publish(q.topic.clone(), true, false, q.payload.clone().into()).await.is_err() {
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
                        last_error: last_error.clone(),
                    });
                    client.try_publish_unreliable(topic(&m, "heartbeat"), hb.to_json().into_bytes());
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
        let _ = client
            .publish(topic(&m, "status"), true, true, status_payload(&m, LinkState::Offline).to_json().into_bytes())
            .await;
        // Let the event loop flush the offline status before disconnecting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poller.abort();
}

/// The collector's ack: drop what it has, keep its countersignature of our chain head when it
/// matches our ledger (and verifies with a configured collector key, if any are configured).
fn handle_ack(
    db: &crlm_state::StateDb,
    payload: &[u8],
    device_key_id: &str,
    ledger_dir: &std::path::Path,
    collectors: &[ed25519_dalek::VerifyingKey],
    last_cs_seq: &mut Option<u64>,
) {
    let Ok(ack) = serde_json::from_slice::<Ack>(payload) else {
        tracing::warn!(stage = "mqtt", "unreadable ack ignored");
        return;
    };
    let (stream, through) = (ack.stream.name(), ack.through_seq);
    match db.outbox_acknowledge(stream, through) {
        Ok(n) if n > 0 => tracing::info!(stage = "mqtt", stream, through, removed = n, "collector acknowledged"),
        Ok(_) => {}
        Err(e) => tracing::error!(stage = "mqtt", error = %e, "cannot apply the collector's ack"),
    }
    let Some(cs) = ack.countersignature else { return };
    if cs.device_key_id != device_key_id || last_cs_seq.is_some_and(|s| cs.seq <= s) {
        return;
    }
    if !collectors.is_empty() && !collectors.iter().any(|k| cs.verifies_with(k)) {
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

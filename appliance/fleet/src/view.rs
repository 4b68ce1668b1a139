//! The operators' view (`crlm fleet watch`) and the message tap it and the demo read from.

use crate::FleetError;
use crlm_mqtt::session::{self, Backoff, Polled, Settings};
use crlm_mqtt::{Ack, HeartbeatPayload, LinkState, Message};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::watch;

/// Every message under `crlm/#` as it arrives, sent to `out` as (topic, payload) until `stop`
/// (the demo's capture and `crlm fleet watch`). A payload that is not JSON arrives as a string.
pub async fn tap(
    broker: crlm_config::MqttConfig,
    client_id: String,
    out: tokio::sync::mpsc::Sender<(String, Value)>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), FleetError> {
    let settings = Settings {
        client_id,
        keep_alive: Duration::from_secs(10),
        max_packet_bytes: 1 << 20,
        will: None,
        persistent: false,
    };
    let (client, mut events) = session::connect(&broker, settings).map_err(FleetError::Setup)?;
    let mut backoff = Backoff::new(0.2, 5.0);
    loop {
        tokio::select! {
            ev = events.poll() => match ev {
                Polled::Up => {
                    backoff.reset();
                    let _ = client.subscribe("crlm/#".into()).await;
                }
                Polled::Message(topic, payload) => {
                    let v = serde_json::from_slice::<Value>(&payload)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned()));
                    if out.send((topic, v)).await.is_err() {
                        break;
                    }
                }
                Polled::Other => {}
                Polled::Lost(_) => tokio::time::sleep(backoff.step()).await,
            },
            _ = stop.changed() => break,
        }
    }
    client.disconnect().await;
    Ok(())
}

/// What an operator sees of one box in `crlm fleet watch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoxView {
    pub status: Option<LinkState>,
    pub heartbeat: Option<HeartbeatPayload>,
    /// Seconds (on the watcher's clock) when the last heartbeat arrived.
    pub heartbeat_at: Option<f64>,
    pub results: u64,
    pub alerts: u64,
    pub last_alert: Option<String>,
}

impl BoxView {
    /// One word for the box: OFFLINE, LATE (no heartbeat for three intervals), the most pressing
    /// condition the box reports (LEDGER, DISK FULL, FAILED), OUTBOX FULL, ERROR (the heartbeat
    /// names a last error), ok, or ? before anything arrived.
    pub fn health(&self, now: f64) -> &'static str {
        if self.status == Some(LinkState::Offline) {
            return "OFFLINE";
        }
        let Some(hb) = &self.heartbeat else {
            return if self.status.is_some() { "LATE" } else { "?" };
        };
        if self.heartbeat_at.is_some_and(|at| now - at > 3.0 * hb.interval_seconds) {
            "LATE"
        } else if let Some(c) = hb.conditions.first() {
            c.code.word()
        } else if hb.outbox.full {
            "OUTBOX FULL"
        } else if hb.last_error.is_some() {
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
    /// With the study office's registry (`--devices`), a message counts only when the registered
    /// box signed it; without one, anything on the broker is shown (and the table says so).
    registry: Option<crate::Registry>,
    /// Messages refused by the registry, and the last one's reason.
    pub rejected: u64,
    pub last_rejected: Option<String>,
}

impl FleetView {
    /// A view that shows only what registered boxes signed (the collector's `--devices` folder).
    pub fn verifying(registry: crate::Registry) -> FleetView {
        FleetView { registry: Some(registry), ..FleetView::default() }
    }

    /// Whether a box's message may be shown: `Ok` when no registry is used, else only when it is
    /// signed with the key registered for the box its topic names (why not, otherwise).
    pub fn check(&mut self, topic: &str, payload: &Value) -> Result<(), String> {
        let Some(registry) = self.registry.as_mut() else { return Ok(()) };
        let parts: Vec<&str> = topic.split('/').collect();
        let [_, _, site, device, _] = parts.as_slice() else { return Err("not a box's topic".into()) };
        let key = registry
            .key(site, device)
            .ok_or_else(|| format!("box {site}/{device} is not registered (no {site}/{device}.pub in --devices)"))?;
        let bytes = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
        let opened = crlm_mqtt::auth::Opened::new(&bytes).map_err(|e| e.to_string())?;
        opened.verify(crlm_mqtt::auth::Party::Box, topic, &key).map_err(|e| e.to_string())
    }

    /// Take one message (`now`: seconds on the watcher's clock). Returns whether anything changed
    /// that the table shows.
    pub fn update(&mut self, topic: &str, payload: &Value, now: f64) -> bool {
        let parts: Vec<&str> = topic.split('/').collect();
        let [_, _, site, device, leaf] = parts.as_slice() else { return false };
        if !["result", "alert", "status", "heartbeat"].contains(leaf) {
            return false;
        }
        if let Err(why) = self.check(topic, payload) {
            self.rejected += 1;
            self.last_rejected = Some(format!("{site}/{device} {leaf}: {why}"));
            return true;
        }
        let Ok(message) = serde_json::from_value::<Message>(payload.clone()) else { return false };
        let b = self.boxes.entry((site.to_string(), device.to_string())).or_default();
        match (*leaf, message) {
            ("status", Message::Status(s)) => b.status = Some(s.state),
            ("heartbeat", Message::Heartbeat(h)) => {
                b.heartbeat = Some(h);
                b.heartbeat_at = Some(now);
                // A heartbeat means the box is up, whatever an older retained status said.
                b.status = Some(LinkState::Online);
            }
            ("result", Message::Result(_)) => b.results += 1,
            ("alert", Message::Alert(a)) => {
                b.alerts += 1;
                b.last_alert = Some(format!("{}: {}", a.alert.name(), a.message));
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
            let age =
                b.heartbeat_at.map(|at| format!("{:.0} s ago", (now - at).max(0.0))).unwrap_or_else(|| "-".into());
            let outbox = hb.map(|h| h.outbox.messages.to_string()).unwrap_or_else(|| "-".into());
            let disk = hb
                .and_then(|h| h.disk_free_state_bytes)
                .map(|b| format!("{:.1} GB", b as f64 / 1e9))
                .unwrap_or_else(|| "-".into());
            let last = hb
                .and_then(|h| h.last_error.as_ref().map(|e| format!("error: {e}")))
                .or_else(|| b.last_alert.clone())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<24} {:<11} {:>9} {:>8} {:>10} {:>6} {:>6} {:>7} {:>6}  {}\n",
                format!("{site}/{device}"),
                b.health(now),
                age,
                outbox,
                disk,
                hb.and_then(|h| h.load_1m).map(|l| format!("{l:.2}")).unwrap_or_else(|| "-".into()),
                hb.and_then(|h| h.temperature_c).map(|t| format!("{t:.0}C")).unwrap_or_else(|| "-".into()),
                b.results,
                b.alerts,
                last.chars().take(60).collect::<String>()
            ));
        }
        match &self.registry {
            Some(r) => out.push_str(&format!(
                "signatures checked against {} registered box(es); {} message(s) refused{}\n",
                r.len(),
                self.rejected,
                self.last_rejected.as_ref().map(|w| format!(" (last: {w})")).unwrap_or_default()
            )),
            None => out
                .push_str("signatures not checked (no --devices): any client allowed on the broker can appear here\n"),
        }
        out
    }
}

/// One line describing a captured message, for people (no identifiers: payloads carry none).
pub fn describe(topic: &str, v: &Value) -> String {
    let leaf = topic.rsplit('/').next().unwrap_or("");
    let short = |h: &str| h.chars().take(12).collect::<String>();
    if leaf == "ack" {
        return match serde_json::from_value::<Ack>(v.clone()) {
            Ok(a) => format!(
                "ack from the collector: {} through #{}{}",
                a.stream.name(),
                a.through_seq,
                if a.countersignature.is_some() { ", ledger head countersigned" } else { "" }
            ),
            Err(_) => format!("{leaf}: {v}"),
        };
    }
    let seq = |s: Option<i64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    match serde_json::from_value::<Message>(v.clone()) {
        Ok(Message::Status(s)) => {
            format!("status: {}", if s.state == LinkState::Online { "online" } else { "offline" })
        }
        Ok(Message::Heartbeat(h)) => format!(
            "heartbeat: up {} s, outbox {} message(s){}, model {}{}",
            h.uptime_seconds,
            h.outbox.messages,
            if h.outbox.full { " (FULL)" } else { "" },
            h.model_sha256.as_deref().map_or_else(|| "none (predictions held)".to_string(), short),
            if h.demo { " (DEMO)" } else { "" }
        ),
        Ok(Message::Result(r)) => format!(
            "result #{}: case {} {}{}, ledger record {} ({}…)",
            seq(r.header.seq),
            r.case,
            r.status.name(),
            r.risk_group.map(|g| format!(", risk group {}", g.name())).unwrap_or_default(),
            r.ledger_seq,
            short(&r.record_hash)
        ),
        Ok(Message::Alert(a)) => format!("alert #{}: {}: {}", seq(a.header.seq), a.alert.name(), a.message),
        Err(_) => format!("{leaf}: {v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn heartbeat(interval: f64, full: bool, error: Option<&str>) -> Value {
        json!({"version": 1, "kind": "heartbeat", "site": "s", "device": "d", "at": "2026-12-04T00:00:00Z",
               "uptime_seconds": 5, "software": "0.1.0", "model_sha256": "ab", "demo": true,
               "interval_seconds": interval, "load_1m": 0.5, "temperature_c": 48.0, "gpu_load": null,
               "disk_free_state_bytes": 12_000_000_000u64, "disk_free_share_bytes": null,
               "outbox": {"messages": 2, "bytes": 900, "full": full}, "last_error": error})
    }

    fn status(state: &str) -> Value {
        json!({"version": 1, "kind": "status", "site": "s", "device": "d", "state": state, "software": "0.1.0",
               "at": "2026-12-04T00:00:00Z"})
    }

    #[test]
    fn the_fleet_view_says_which_box_is_down_full_or_failing() {
        let mut v = FleetView::default();
        assert!(v.update("crlm/v1/s1/a/status", &status("online"), 0.0));
        assert!(v.update("crlm/v1/s1/a/heartbeat", &heartbeat(5.0, false, None), 1.0));
        assert!(v.update("crlm/v1/s1/b/heartbeat", &heartbeat(5.0, true, None), 1.0));
        assert!(v.update("crlm/v1/s2/c/heartbeat", &heartbeat(5.0, false, Some("disk full")), 1.0));
        assert!(v.update("crlm/v1/s2/d/status", &status("offline"), 1.0));
        // Issue 21, defect 5: a full state disk showed `ok`. The box's conditions are the word.
        for (d, code, message) in
            [("e", "disk_full", "the state disk has 0 MB free"), ("f", "ledger", "predictions held")]
        {
            let mut hb = heartbeat(5.0, true, Some(message));
            hb["conditions"] = json!([{"code": code, "message": message}, {"code": "failed", "message": "case P-1"}]);
            assert!(v.update(&format!("crlm/v1/s3/{d}/heartbeat"), &hb, 1.0));
        }
        assert!(!v.update("crlm/v1/s1/a/result", &json!({"seq": 0}), 2.0), "not a result payload");
        assert!(v.update(
            "crlm/v1/s1/a/alert",
            &json!({"version": 1, "kind": "alert", "site": "s1", "device": "a", "stream": "alert", "seq": 0,
                    "alert": "quarantine", "message": "1 file", "case": null, "at": "2026-12-04T00:00:00Z"}),
            2.0
        ));
        assert!(!v.update("crlm/v1/s1/a/status", &heartbeat(5.0, false, None), 2.0), "a heartbeat on the status topic");
        assert!(!v.update("crlm/v1/s1/a/ack", &json!({}), 2.0));
        let health = |s: &str, d: &str, now| v.boxes[&(s.to_string(), d.to_string())].health(now);
        assert_eq!(health("s1", "a", 10.0), "ok");
        assert_eq!(health("s1", "a", 16.5), "LATE");
        assert_eq!(health("s1", "b", 10.0), "OUTBOX FULL");
        assert_eq!(health("s2", "c", 10.0), "ERROR");
        assert_eq!(health("s2", "d", 10.0), "OFFLINE");
        assert_eq!(health("s3", "e", 10.0), "DISK FULL");
        assert_eq!(health("s3", "f", 10.0), "LEDGER");
        let table = v.render(10.0);
        assert!(table.contains("s1/a") && table.contains("quarantine: 1 file"), "{table}");
        assert!(table.contains("error: disk full") && table.contains("12.0 GB") && table.contains("48C"), "{table}");
        assert!(table.contains("error: the state disk has 0 MB free"), "{table}");
        // A header, six boxes, and the line saying whether signatures were checked.
        assert_eq!(table.lines().count(), 8);
    }

    /// Issue 21: the watcher believed any client on the broker. With the collector's registry it
    /// shows only what the registered box signed: a forged heartbeat (right topic, wrong key)
    /// and a box nobody registered are counted as refused and change nothing.
    #[test]
    fn with_a_registry_only_what_the_registered_box_signed_is_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = crlm_ledger::device_key(&dir.path().join("keys")).unwrap();
        let forger = crlm_ledger::device_key(&dir.path().join("forger")).unwrap();
        std::fs::create_dir_all(dir.path().join("devices/s")).unwrap();
        std::fs::copy(dir.path().join("keys/device.pub"), dir.path().join("devices/s/d.pub")).unwrap();
        let mut v = FleetView::verifying(crate::Registry::load(Some(&dir.path().join("devices"))));
        let topic = "crlm/v1/s/d/heartbeat";
        let seal = |hb: &Value, k: &ed25519_dalek::SigningKey, topic: &str| -> Value {
            let bytes =
                crlm_mqtt::auth::seal(crlm_mqtt::auth::Party::Box, topic, &serde_json::to_vec(hb).unwrap(), k).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        assert!(v.update(topic, &seal(&heartbeat(5.0, false, None), &key, topic), 1.0));
        assert_eq!(v.boxes[&("s".to_string(), "d".to_string())].health(2.0), "ok");
        // Forged: the registered box's topic, another key, a box in trouble.
        assert!(v.update(topic, &seal(&heartbeat(5.0, true, Some("forged")), &forger, topic), 2.0));
        assert_eq!(v.boxes[&("s".to_string(), "d".to_string())].health(3.0), "ok", "the forgery changed nothing");
        // Unsigned, and a box nobody registered.
        assert!(v.update(topic, &heartbeat(5.0, true, None), 2.0));
        let other = "crlm/v1/s/x/heartbeat";
        assert!(v.update(other, &seal(&heartbeat(5.0, false, None), &forger, other), 2.0));
        assert_eq!(v.boxes.len(), 1);
        assert_eq!(v.rejected, 3);
        assert!(v.last_rejected.as_deref().is_some_and(|w| w.contains("not registered")), "{:?}", v.last_rejected);
        let table = v.render(3.0);
        assert!(table.contains("3 message(s) refused"), "{table}");
        // Without a registry the table says nothing was checked.
        assert!(FleetView::default().render(0.0).contains("signatures not checked"));
    }
}

//! The durable MQTT outbox: rows in the state database (WAL, synchronous=FULL), one per message,
//! numbered per stream without gaps (`mqtt_streams.next_seq`), so the collector can acknowledge
//! "everything up to N" and drop duplicates by (device, stream, seq).

use super::{AlertCode, Message};
use crlm_state::{Enqueue, StateError};

/// Queue `message` on `stream` (it gains `seq`). Give the transaction that records what the
/// message reports, so both or neither survive a crash.
pub fn enqueue(q: &impl Enqueue, stream: &str, topic: &str, mut message: Message) -> Result<i64, StateError> {
    q.enqueue(stream, topic, |seq| {
        match &mut message {
            Message::Result(p) => p.header.seq = Some(seq),
            Message::Alert(p) => p.header.seq = Some(seq),
            Message::Status(_) | Message::Heartbeat(_) => {}
        }
        message.to_json()
    })
}

/// Queue an alert (see [`super::alert_payload`]) on the alert stream.
pub fn enqueue_alert(
    q: &impl Enqueue,
    cfg: &crlm_config::MqttConfig,
    code: AlertCode,
    message: &str,
    case: Option<&str>,
) -> Result<i64, StateError> {
    enqueue(q, super::STREAM_ALERT, &super::topic(cfg, "alert"), super::alert_payload(cfg, code, message, case))
}

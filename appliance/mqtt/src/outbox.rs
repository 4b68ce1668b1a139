//! The durable MQTT outbox: rows in the state database (WAL, synchronous=FULL), one per message,
//! numbered per stream without gaps (`mqtt_streams.next_seq`), so the collector can acknowledge
//! "everything up to N" and drop duplicates by (device, stream, seq).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// One queued message.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub id: i64,
    pub stream: String,
    pub seq: i64,
    pub topic: String,
    pub payload: String,
}

/// Queue `payload` on `stream` (it gains `seq`). Call inside the transaction that records what
/// the message reports, so both or neither survive a crash.
pub fn enqueue(conn: &Connection, stream: &str, topic: &str, mut payload: Value) -> rusqlite::Result<i64> {
    let seq: i64 = conn
        .query_row("SELECT next_seq FROM mqtt_streams WHERE stream=?1", [stream], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    payload["seq"] = Value::from(seq);
    conn.execute(
        "INSERT INTO mqtt_outbox(stream, seq, topic, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![stream, seq, topic, payload.to_string(), crlm_state::now_ms()],
    )?;
    conn.execute(
        "INSERT INTO mqtt_streams(stream, next_seq) VALUES (?1, ?2)
         ON CONFLICT(stream) DO UPDATE SET next_seq=excluded.next_seq",
        params![stream, seq + 1],
    )?;
    Ok(seq)
}

/// Queue an alert (see [`super::alert_payload`]) on the alert stream.
pub fn enqueue_alert(
    conn: &Connection,
    cfg: &crlm_config::MqttConfig,
    code: &str,
    message: &str,
    case: Option<&str>,
) -> rusqlite::Result<i64> {
    enqueue(conn, super::STREAM_ALERT, &super::topic(cfg, "alert"), super::alert_payload(cfg, code, message, case))
}

/// Messages after row `after_id`, oldest first.
pub fn pending(conn: &Connection, after_id: i64, limit: usize) -> rusqlite::Result<Vec<Queued>> {
    let mut st =
        conn.prepare("SELECT id, stream, seq, topic, payload FROM mqtt_outbox WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    st.query_map(params![after_id, limit as i64], |r| {
        Ok(Queued { id: r.get(0)?, stream: r.get(1)?, seq: r.get(2)?, topic: r.get(3)?, payload: r.get(4)? })
    })?
    .collect()
}

/// The collector has everything of `stream` up to `through`: those rows go.
pub fn acknowledge(conn: &Connection, stream: &str, through: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM mqtt_outbox WHERE stream=?1 AND seq <= ?2", params![stream, through])
}

/// (messages, bytes) waiting for the collector.
pub fn depth(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM mqtt_outbox", [], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
}

//! The MQTT outbox's tables: messages queued per stream with gap-free sequence numbers, deleted
//! only when the collector acknowledges them. The payloads are built by crlm-mqtt; this module
//! only stores them.

use crate::{StateDb, StateError, Tx};
use rusqlite::{Connection, OptionalExtension, params};

/// A queued message.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub id: i64,
    pub stream: String,
    pub seq: i64,
    pub topic: String,
    pub payload: String,
}

fn enqueue(
    conn: &Connection,
    stream: &str,
    topic: &str,
    payload: impl FnOnce(i64) -> String,
) -> Result<i64, StateError> {
    let seq: i64 = conn
        .query_row("SELECT next_seq FROM mqtt_streams WHERE stream=?1", [stream], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    // Row ids only ever grow: the publisher sends what lies after the last id it sent, so an id
    // SQLite reused once the outbox had drained (a plain INTEGER PRIMARY KEY takes max + 1, and 1
    // in an empty table) would wait for the 30 s resend. The next id is kept in `meta`.
    let kept: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key='outbox_next_id'", [], |r| r.get(0)).optional()?;
    let floor: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM mqtt_outbox", [], |r| r.get(0))?;
    let id = kept.and_then(|k| k.parse::<i64>().ok()).map_or(floor, |k| k.max(floor));
    conn.execute(
        "INSERT INTO mqtt_outbox(id, stream, seq, topic, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, stream, seq, topic, payload(seq), crate::now_ms()],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES('outbox_next_id', ?1)",
        params![id.saturating_add(1).to_string()],
    )?;
    conn.execute(
        "INSERT INTO mqtt_streams(stream, next_seq) VALUES (?1, ?2)
         ON CONFLICT(stream) DO UPDATE SET next_seq=excluded.next_seq",
        params![stream, seq + 1],
    )?;
    Ok(seq)
}

/// Where a message can be queued: inside a transaction ([`Tx`]: it survives exactly when what
/// it reports does) or on its own ([`StateDb`]: committed at once). `payload` is given the
/// stream's next sequence number; that number is returned.
pub trait Enqueue {
    fn enqueue(&self, stream: &str, topic: &str, payload: impl FnOnce(i64) -> String) -> Result<i64, StateError>;
}

impl Enqueue for Tx<'_> {
    fn enqueue(&self, stream: &str, topic: &str, payload: impl FnOnce(i64) -> String) -> Result<i64, StateError> {
        enqueue(&self.tx, stream, topic, payload)
    }
}

impl Enqueue for StateDb {
    fn enqueue(&self, stream: &str, topic: &str, payload: impl FnOnce(i64) -> String) -> Result<i64, StateError> {
        let tx = self.begin()?;
        let seq = tx.enqueue(stream, topic, payload)?;
        tx.commit()?;
        Ok(seq)
    }
}

impl StateDb {
    /// Messages after row `after_id`, oldest first.
    pub fn outbox_after(&self, after_id: i64, limit: usize) -> Result<Vec<Queued>, StateError> {
        let mut st = self
            .conn
            .prepare("SELECT id, stream, seq, topic, payload FROM mqtt_outbox WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows = st.query_map(params![after_id, limit as i64], |r| {
            Ok(Queued { id: r.get(0)?, stream: r.get(1)?, seq: r.get(2)?, topic: r.get(3)?, payload: r.get(4)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The message of `stream` numbered `seq`, while it waits for the collector.
    pub fn outbox_message(&self, stream: &str, seq: i64) -> Result<Option<Queued>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, stream, seq, topic, payload FROM mqtt_outbox WHERE stream=?1 AND seq=?2",
                params![stream, seq],
                |r| {
                    Ok(Queued {
                        id: r.get(0)?,
                        stream: r.get(1)?,
                        seq: r.get(2)?,
                        topic: r.get(3)?,
                        payload: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// The collector has everything of `stream` up to `through`: those rows go.
    pub fn outbox_acknowledge(&self, stream: &str, through: i64) -> Result<usize, StateError> {
        Ok(self.conn.execute("DELETE FROM mqtt_outbox WHERE stream=?1 AND seq <= ?2", params![stream, through])?)
    }

    /// (messages, bytes) waiting for the collector.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StateError> {
        Ok(self.conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM mqtt_outbox", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Two connections queue on one stream at once (the worker in its lock's transaction, the
    /// publisher on its own): the second waits for the first and gets the next number. With a
    /// deferred transaction it read a stale `next_seq` and failed (SQLITE_BUSY or a duplicate).
    #[test]
    fn two_connections_queue_on_one_stream_without_a_clash() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("crlm.sqlite");
        let a = StateDb::open(&path).unwrap();
        let tx = a.begin().unwrap();
        assert_eq!(tx.enqueue("alert", "t", |s| format!("{{\"seq\":{s}}}")).unwrap(), 0);
        let other = std::thread::spawn({
            let path = path.clone();
            move || {
                let b = StateDb::open(&path).unwrap();
                b.enqueue("alert", "t", |s| format!("{{\"seq\":{s}}}"))
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
        assert_eq!(other.join().unwrap().unwrap(), 1);
        let seqs: Vec<i64> = a.outbox_after(0, 10).unwrap().iter().map(|q| q.seq).collect();
        assert_eq!(seqs, [0, 1]);
    }

    /// Found by the HIL harness (disk-full scenario): once the collector had acknowledged
    /// everything, the next message took row id 1 again, at or below what the publisher had
    /// already sent through, and so left the box only at the 30 s resend.
    #[test]
    fn row_ids_keep_growing_after_the_outbox_drains() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("crlm.sqlite");
        let db = StateDb::open(&path).unwrap();
        db.enqueue("result", "t", |s| format!("{{\"seq\":{s}}}")).unwrap();
        db.enqueue("alert", "t", |s| format!("{{\"seq\":{s}}}")).unwrap();
        let sent_through = db.outbox_after(0, 10).unwrap().iter().map(|q| q.id).max().unwrap();
        assert_eq!(db.outbox_acknowledge("result", 0).unwrap() + db.outbox_acknowledge("alert", 0).unwrap(), 2);
        assert_eq!(db.outbox_depth().unwrap().0, 0);
        db.enqueue("alert", "t", |s| format!("{{\"seq\":{s}}}")).unwrap();
        let next = db.outbox_after(sent_through, 10).unwrap();
        assert_eq!(next.len(), 1, "the new message lies after what was sent");
        // And across a reopen (a restart of the service).
        drop(db);
        let db = StateDb::open(&path).unwrap();
        db.outbox_acknowledge("alert", 1).unwrap();
        db.enqueue("alert", "t", |s| format!("{{\"seq\":{s}}}")).unwrap();
        assert!(db.outbox_after(0, 10).unwrap()[0].id > next[0].id);
    }
}

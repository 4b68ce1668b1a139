//! `crlm fleet export`: every centre's locked predictions, as the collector holds them.

use crate::FleetError;
use crlm_mqtt::Message;
use rusqlite::Connection;
use serde::Serialize;

/// One row per result: the ledger-export columns plus site, device and the collector's checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRow {
    pub site: String,
    pub device: String,
    pub sequence: u64,
    pub pseudonym: String,
    pub status: String,
    pub surgery_date: Option<String>,
    pub risk_2y: Option<f64>,
    pub risk_group: Option<String>,
    pub threshold: Option<f64>,
    pub model_sha256: String,
    pub demo: bool,
    pub locked_at: String,
    pub record_hash: String,
    /// The box's signature of the record verified with its registered key (empty: not checked).
    pub signature_ok: Option<bool>,
    pub received_at: String,
}

/// One exported row per result (the ledger-export columns plus site and device).
pub fn export_rows(db: &Connection) -> Result<Vec<FleetRow>, FleetError> {
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
        let Some(Message::Result(p)) = Message::parse(payload.as_bytes()) else { continue };
        out.push(FleetRow {
            site,
            device,
            sequence: p.ledger_seq,
            pseudonym: p.case,
            status: p.status.name().into(),
            surgery_date: p.surgery_date,
            risk_2y: p.risk_2y,
            risk_group: p.risk_group.map(|g| g.name().to_string()),
            threshold: p.threshold,
            model_sha256: p.model_sha256,
            demo: p.demo,
            locked_at: p.locked_at,
            record_hash: p.record_hash,
            signature_ok: sig,
            received_at: crlm_state::rfc3339(received),
        });
    }
    Ok(out)
}

/// CSV of [`export_rows`] with a header row (also when there are none).
pub fn export_csv(rows: &[FleetRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    w.write_record([
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
    ])?;
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// A message the collector refused (not stored with the results, not acknowledged).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedRow {
    pub received_at: String,
    /// From the topic: who the message claimed to come from.
    pub site: String,
    pub device: String,
    pub leaf: String,
    pub reason: String,
}

/// Every kept rejected message, oldest first (`crlm fleet rejected`).
pub fn rejected_rows(db: &Connection) -> Result<Vec<RejectedRow>, FleetError> {
    let mut st = db.prepare("SELECT received_ms, site, device, leaf, reason FROM rejected ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok(RejectedRow {
            received_at: crlm_state::rfc3339(r.get(0)?),
            site: r.get(1)?,
            device: r.get(2)?,
            leaf: r.get(3)?,
            reason: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

//! `crlm ledger export`: one row per locked prediction or refusal, for the study's statisticians.
//! Only de-identified fields: the case pseudonym, the surgery date the analysis needs, the model
//! output and the lock. The ledger is verified first; an export of a broken ledger is refused.

use super::Record;
use serde::Serialize;

/// Version of the export's columns (the JSON form carries it; docs/LEDGER.md lists the columns).
pub const EXPORT_FORMAT: u32 = 1;

/// One exported row. CSV columns are these fields, in this order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportRow {
    pub sequence: u64,
    pub pseudonym: String,
    /// `predicted` or `refused`.
    pub status: String,
    pub surgery_date: Option<String>,
    pub risk_2y: Option<f64>,
    pub risk_group: Option<String>,
    pub threshold: Option<f64>,
    pub modalities_used: String,
    pub model_name: String,
    pub model_version: String,
    pub model_sha256: String,
    pub demo: bool,
    /// When the record was locked (device clock, RFC 3339 UTC).
    pub locked_at: String,
    pub record_hash: String,
    /// Why the case was not predicted (refusals only).
    pub refusal: Option<String>,
}

/// The rows of every prediction and refusal record.
pub fn rows(records: &[(Record, String)]) -> Vec<ExportRow> {
    records
        .iter()
        .filter_map(|(r, hash)| {
            let c = r.case()?;
            let o = c.outputs.as_ref();
            Some(ExportRow {
                sequence: r.core.seq,
                pseudonym: c.case.clone(),
                status: c.status.name().into(),
                surgery_date: c.surgery_date.clone(),
                risk_2y: o.map(|o| o.risk_2y),
                risk_group: o.map(|o| o.risk_group.name().to_string()),
                threshold: o.map(|o| o.threshold),
                modalities_used: c.modalities_used(),
                model_name: c.model.name.clone(),
                model_version: c.model.version.clone(),
                model_sha256: c.model.sha256.clone(),
                demo: c.model.demo,
                locked_at: r.core.wall_time.clone(),
                record_hash: hash.clone(),
                refusal: c.refusal.clone(),
            })
        })
        .collect()
}

/// CSV with a header row.
pub fn to_csv(rows: &[ExportRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    if rows.is_empty() {
        // A header alone, so an empty ledger still exports a readable file.
        w.write_record([
            "sequence",
            "pseudonym",
            "status",
            "surgery_date",
            "risk_2y",
            "risk_group",
            "threshold",
            "modalities_used",
            "model_name",
            "model_version",
            "model_sha256",
            "demo",
            "locked_at",
            "record_hash",
            "refusal",
        ])?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// JSON: `{"format": 1, "device_key_id": ..., "rows": [...]}`.
pub fn to_json(rows: &[ExportRow], device_key_id: &str) -> serde_json::Value {
    serde_json::json!({"format": EXPORT_FORMAT, "device_key_id": device_key_id, "rows": rows})
}

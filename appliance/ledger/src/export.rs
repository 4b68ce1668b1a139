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
        .filter(|(r, _)| r.core.kind == "prediction" || r.core.kind == "refusal")
        .map(|(r, hash)| {
            let b = &r.core.body;
            let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
            let used: Vec<&str> =
                ["ct", "slide", "clinical"].into_iter().filter(|m| b["modalities"][*m]["status"] == "used").collect();
            ExportRow {
                sequence: r.core.seq,
                pseudonym: s(&b["case"]).unwrap_or_default(),
                status: if r.core.kind == "prediction" { "predicted".into() } else { "refused".into() },
                surgery_date: s(&b["surgery_date"]),
                risk_2y: b["outputs"]["risk_2y"].as_f64(),
                risk_group: s(&b["outputs"]["risk_group"]),
                threshold: b["outputs"]["threshold"].as_f64(),
                modalities_used: used.join("+"),
                model_name: s(&b["model"]["name"]).unwrap_or_default(),
                model_version: s(&b["model"]["version"]).unwrap_or_default(),
                model_sha256: s(&b["model"]["sha256"]).unwrap_or_default(),
                demo: b["model"]["demo"].as_bool().unwrap_or(false),
                locked_at: r.core.wall_time.clone(),
                record_hash: hash.clone(),
                refusal: s(&b["refusal"]),
            }
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

//! `result.json`: the project's own result document (format 1, docs/OUTPUTS.md). De-identified:
//! the case pseudonym, the model, the lock and the result; no names, IDs, UIDs or file names.

use crlm_ledger::{CaseRecord, Record};
use serde_json::{Value, json};

pub const RESULT_FORMAT: u32 = 1;

pub fn document(record: &Record, c: &CaseRecord, record_hash: &str, device_key_id: &str) -> Value {
    let mut d = json!({
        "format": RESULT_FORMAT,
        "kind": "crlm-result",
        "status": c.status,
        "case": c.case,
        "ledger": {
            "seq": record.core.seq,
            "record_hash": record_hash,
            "device_key_id": device_key_id,
            "locked_at": record.core.wall_time,
        },
        "model": c.model,
        "software": c.software,
        "modalities": c.modalities,
        "caution": super::RESEARCH_CAUTION,
    });
    if c.model.demo {
        d["notice"] = json!(crlm_predict::DEMO_NOTICE);
    }
    match &c.outputs {
        Some(o) => {
            d["risk_2y"] = json!(o.risk_2y);
            d["risk_group"] = json!(o.risk_group);
            d["threshold"] = json!(o.threshold);
            d["horizon_months"] = json!(o.horizon_months.unwrap_or(24));
            d["hazards"] = json!(o.hazards);
            d["hazard_intervals_months"] = json!(o.hazard_intervals_months);
        }
        None => d["refusal"] = json!(c.refusal),
    }
    d
}

/// A human summary of a result document (the demo prints it): `crlm predict`'s summary (the
/// documents share those fields) and the lock.
pub fn summary(doc: &Value) -> String {
    let mut s = crlm_predict::summary(doc);
    s.push_str(&format!(
        "locked: ledger record {} at {} (sha256 {}...)\n",
        doc["ledger"]["seq"],
        doc["ledger"]["locked_at"].as_str().unwrap_or("?"),
        doc["ledger"]["record_hash"].as_str().unwrap_or("?").chars().take(16).collect::<String>()
    ));
    s
}

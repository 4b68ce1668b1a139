//! `result.json`: the project's own result document (format 1, docs/OUTPUTS.md). De-identified:
//! the case pseudonym, the model, the lock and the result; no names, IDs, UIDs or file names.

use crlm_ledger::Record;
use serde_json::{Value, json};

pub const RESULT_FORMAT: u32 = 1;

pub fn document(record: &Record, record_hash: &str, device_key_id: &str) -> Value {
    let b = &record.core.body;
    let demo = b["model"]["demo"].as_bool().unwrap_or(false);
    let mut d = json!({
        "format": RESULT_FORMAT,
        "kind": "crlm-result",
        "status": b["status"],
        "case": b["case"],
        "ledger": {
            "seq": record.core.seq,
            "record_hash": record_hash,
            "device_key_id": device_key_id,
            "locked_at": record.core.wall_time,
        },
        "model": b["model"],
        "software": b["software"],
        "modalities": b["modalities"],
        "caution": super::RESEARCH_CAUTION,
    });
    if demo {
        d["notice"] = json!(crlm_predict::DEMO_NOTICE);
    }
    match record.core.kind.as_str() {
        "prediction" => {
            let o = &b["outputs"];
            d["risk_2y"] = o["risk_2y"].clone();
            d["risk_group"] = o["risk_group"].clone();
            d["threshold"] = o["threshold"].clone();
            d["horizon_months"] = json!(24);
            d["hazards"] = o["hazards"].clone();
            d["hazard_intervals_months"] = o["hazard_intervals_months"].clone();
        }
        _ => d["refusal"] = b["refusal"].clone(),
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

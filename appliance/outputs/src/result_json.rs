//! `result.json`: the project's own result document (format 1, docs/OUTPUTS.md). De-identified:
//! the case pseudonym, the model, the lock and the result; no names, IDs, UIDs or file names.

use crlm_ledger::{CaseRecord, CaseStatus, Record, Software};
use crlm_models::case::{Modalities, ModelIdentity};
use crlm_models::inference::RiskGroup;
use serde::{Deserialize, Serialize};

pub const RESULT_FORMAT: u32 = 1;

/// The document, as written and as read back (the demo prints what a site receives).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultDoc {
    /// [`RESULT_FORMAT`].
    pub format: u32,
    /// `crlm-result`.
    pub kind: String,
    pub status: CaseStatus,
    /// The case pseudonym.
    pub case: String,
    pub ledger: LedgerRef,
    pub model: ModelIdentity,
    pub software: Software,
    pub modalities: Option<Modalities>,
    /// The study's research-use caution.
    pub caution: String,
    /// The demo model's notice (demo packages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// The prediction (predictions only).
    #[serde(flatten)]
    pub prediction: Option<Prediction>,
    /// Why no prediction was made (refusals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// Where the result is locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRef {
    pub seq: u64,
    pub record_hash: String,
    pub device_key_id: String,
    /// The record's wall time (RFC 3339).
    pub locked_at: String,
}

/// A prediction's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub risk_2y: f64,
    pub risk_group: RiskGroup,
    pub threshold: f64,
    pub horizon_months: u32,
    pub hazards: Vec<f32>,
    pub hazard_intervals_months: Vec<[u32; 2]>,
}

pub fn document(record: &Record, c: &CaseRecord, record_hash: &str, device_key_id: &str) -> ResultDoc {
    ResultDoc {
        format: RESULT_FORMAT,
        kind: "crlm-result".into(),
        status: c.status,
        case: c.case.clone(),
        ledger: LedgerRef {
            seq: record.core.seq,
            record_hash: record_hash.into(),
            device_key_id: device_key_id.into(),
            locked_at: record.core.wall_time.clone(),
        },
        model: c.model.clone(),
        software: c.software.clone(),
        modalities: c.modalities.clone(),
        caution: super::RESEARCH_CAUTION.into(),
        notice: c.model.demo.then(|| crlm_predict::DEMO_NOTICE.to_string()),
        prediction: c.outputs.as_ref().map(|o| Prediction {
            risk_2y: o.risk_2y,
            risk_group: o.risk_group,
            threshold: o.threshold,
            horizon_months: o.horizon_months.unwrap_or(24),
            hazards: o.hazards.clone(),
            hazard_intervals_months: o.hazard_intervals_months.clone(),
        }),
        refusal: if c.outputs.is_none() { c.refusal.clone() } else { None },
    }
}

/// A human summary of a result document (the demo prints it): `crlm predict`'s summary and the
/// lock.
pub fn summary(doc: &ResultDoc) -> String {
    let summary = crlm_predict::Summary {
        model: &doc.model,
        refusal: doc.refusal.as_deref(),
        risk: doc.prediction.as_ref().map(|p| crlm_predict::SummaryRisk {
            horizon_months: p.horizon_months,
            risk: p.risk_2y,
            group: p.risk_group,
            threshold: p.threshold,
        }),
        modalities: doc.modalities.as_ref(),
        warnings: &[],
    };
    format!(
        "{summary}locked: ledger record {} at {} (sha256 {}...)\n",
        doc.ledger.seq,
        doc.ledger.locked_at,
        doc.ledger.record_hash.chars().take(16).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's document has no prediction and reads back as one; a prediction's reads back
    /// with its numbers.
    #[test]
    fn refusals_and_predictions_read_back_as_written() {
        let model = serde_json::json!({"name": "m", "version": "1", "sha256": "ab", "demo": false,
            "signer_key_id": "k", "backend": "candle", "device": "cpu", "precision": "f32"});
        let refused = serde_json::json!({"format": 1, "kind": "crlm-result", "status": "refused", "case": "P-1",
            "ledger": {"seq": 3, "record_hash": "cd", "device_key_id": "k", "locked_at": "2026-12-05T00:00:00Z"},
            "model": model, "software": {"name": "crlm", "version": "0.1.0"}, "modalities": null,
            "caution": "c", "refusal": "not eligible"});
        let doc: ResultDoc = serde_json::from_value(refused.clone()).unwrap();
        assert_eq!((doc.prediction.as_ref(), doc.refusal.as_deref()), (None, Some("not eligible")));
        assert_eq!(serde_json::to_value(&doc).unwrap(), refused);
        assert!(summary(&doc).contains("REFUSED: not eligible"), "{}", summary(&doc));
        let mut predicted = refused;
        let o = predicted.as_object_mut().unwrap();
        o.remove("refusal");
        o.insert("status".into(), "predicted".into());
        for (k, v) in [
            ("risk_2y", serde_json::json!(0.25)),
            ("risk_group", serde_json::json!("low")),
            ("threshold", serde_json::json!(0.3)),
            ("horizon_months", serde_json::json!(24)),
            ("hazards", serde_json::json!([0.25])),
            ("hazard_intervals_months", serde_json::json!([[0, 24]])),
        ] {
            o.insert(k.into(), v);
        }
        let doc: ResultDoc = serde_json::from_value(predicted.clone()).unwrap();
        assert_eq!(doc.prediction.as_ref().map(|p| p.risk_2y), Some(0.25));
        assert_eq!(serde_json::to_value(&doc).unwrap(), predicted);
        assert!(summary(&doc).contains("24-month liver-metastasis risk: 0.250  group: low"), "{}", summary(&doc));
    }
}

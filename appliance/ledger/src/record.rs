//! The ledger record's body, typed. A record is stored as canonical JSON (the signed bytes), and
//! its body is built from and read into these types only: [`RecordBody`] goes in through
//! [`Ledger::append`](crate::Ledger::append) and comes out of [`Record::body`](crate::Record::body).
//! Outputs, MQTT, the export and the collector read the fields, never a JSON key.
//!
//! Format 1, as written since the first release (serde_json's maps are ordered by key, so field
//! order here does not change the bytes). Fields that a kind of record does not carry are
//! absent, not null.

use crlm_models::case::{Eligibility, Modalities, ModelIdentity};
use crlm_models::ct::preprocess::{IndexBox, RoiSource};
use crlm_models::inference::RiskGroup;
use serde::{Deserialize, Serialize};

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A locked prediction.
    Prediction,
    /// A case locked without a prediction (not eligible, modalities the package forbids,
    /// contradictory inputs).
    Refusal,
    /// The wall clock stepped against monotonic time between two records.
    ClockJump,
    /// A torn last record was cut off at start-up.
    Recovery,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Prediction => "prediction",
            RecordKind::Refusal => "refusal",
            RecordKind::ClockJump => "clock_jump",
            RecordKind::Recovery => "recovery",
        }
    }
}

/// A record's body, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordBody {
    Prediction(CaseRecord),
    Refusal(CaseRecord),
    ClockJump(ClockJump),
    Recovery(RecoveryNote),
}

impl RecordBody {
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Prediction(_) => RecordKind::Prediction,
            RecordBody::Refusal(_) => RecordKind::Refusal,
            RecordBody::ClockJump(_) => RecordKind::ClockJump,
            RecordBody::Recovery(_) => RecordKind::Recovery,
        }
    }

    /// The case record of a prediction or refusal.
    pub fn case(&self) -> Option<&CaseRecord> {
        match self {
            RecordBody::Prediction(c) | RecordBody::Refusal(c) => Some(c),
            _ => None,
        }
    }

    /// The JSON value that is stored and signed.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            RecordBody::Prediction(c) | RecordBody::Refusal(c) => serde_json::to_value(c),
            RecordBody::ClockJump(j) => serde_json::to_value(j),
            RecordBody::Recovery(r) => serde_json::to_value(r),
        }
    }

    /// Read a stored body of `kind`.
    pub fn from_value(kind: RecordKind, v: &serde_json::Value) -> Result<RecordBody, serde_json::Error> {
        Ok(match kind {
            RecordKind::Prediction => RecordBody::Prediction(CaseRecord::deserialize(v)?),
            RecordKind::Refusal => RecordBody::Refusal(CaseRecord::deserialize(v)?),
            RecordKind::ClockJump => RecordBody::ClockJump(ClockJump::deserialize(v)?),
            RecordKind::Recovery => RecordBody::Recovery(RecoveryNote::deserialize(v)?),
        })
    }
}

/// `predicted` or `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Predicted,
    Refused,
}

impl CaseStatus {
    pub fn name(self) -> &'static str {
        match self {
            CaseStatus::Predicted => "predicted",
            CaseStatus::Refused => "refused",
        }
    }
}

/// A case's prediction or refusal: who (pseudonyms only), what went in (keyed references and
/// hashes), which model, and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The case pseudonym.
    pub case: String,
    /// The case's keyed reference (finds a locked case again after a crash).
    pub case_ref: String,
    /// From the clinical file (the start of the follow-up), when known.
    pub surgery_date: Option<String>,
    pub model: ModelIdentity,
    pub software: Software,
    pub status: CaseStatus,
    /// Why no prediction was made (refusals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligibility: Option<Eligibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
    /// SHA-256 of `inputs` as canonical JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Modalities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
    /// The prediction (predictions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
}

impl CaseRecord {
    /// A record with the case's identity, the model and this software, and nothing else yet.
    pub fn new(
        case: String,
        case_ref: String,
        surgery_date: Option<String>,
        model: ModelIdentity,
        status: CaseStatus,
    ) -> CaseRecord {
        CaseRecord {
            case,
            case_ref,
            surgery_date,
            model,
            software: Software::this(),
            status,
            refusal: None,
            eligibility: None,
            inputs: None,
            inputs_sha256: None,
            modalities: None,
            warnings: None,
            outputs: None,
        }
    }

    /// A minimal prediction for case `case` with risk `risk_2y` (tests, tools, examples).
    pub fn example(case: &str, risk_2y: f64) -> CaseRecord {
        let mut c =
            CaseRecord::new(case.into(), format!("ref-{case}"), None, ModelIdentity::default(), CaseStatus::Predicted);
        c.outputs = Some(Outputs {
            risk_2y,
            risk_2y_uncalibrated: risk_2y,
            risk_group: if risk_2y >= 0.5 { RiskGroup::High } else { RiskGroup::Low },
            threshold: 0.5,
            hazards: vec![risk_2y as f32],
            hazard_intervals_months: vec![[0, 24]],
            horizon_months: Some(24),
            tiles: None,
        });
        c
    }

    /// `ct+slide+clinical`: the modalities the prediction used.
    pub fn modalities_used(&self) -> String {
        self.modalities.as_ref().map(Modalities::used).unwrap_or_default()
    }
}

/// The software that locked the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Software {
    pub name: String,
    pub version: String,
}

impl Software {
    /// This build.
    pub fn this() -> Software {
        Software { name: "crlm-edge".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

/// What the model read, by reference: keyed UIDs and content hashes, never names or paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Inputs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<CtInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slides: Option<Vec<SlideInput>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinical: Option<ClinicalInput>,
}

impl Inputs {
    /// SHA-256 of the canonical JSON (`inputs_sha256`).
    pub fn sha256(&self) -> String {
        let canonical = serde_json::to_value(self).map(|v| v.to_string()).unwrap_or_default();
        crlm_models::sha256_hex(canonical.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtInput {
    /// The series' keyed reference (its UID when `privacy.keep_uids`).
    pub series: String,
    /// Why this series was chosen.
    pub choice: String,
    pub rejected_series: usize,
    /// Every slice in order: keyed SOP reference and the SHA-256 of its Hounsfield units.
    pub images: Vec<ImageRef>,
    /// The segmentation the crop was centred on; null: the body box.
    pub roi: Option<RoiInput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub sop: String,
    pub hu_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoiInput {
    pub source: RoiSource,
    pub sop: String,
    pub labels: Vec<String>,
    pub box_min: [usize; 3],
    pub box_max: [usize; 3],
}

impl RoiInput {
    pub fn new(source: RoiSource, sop: String, labels: Vec<String>, bbox: IndexBox) -> RoiInput {
        RoiInput { source, sop, labels, box_min: bbox.min, box_max: bbox.max }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlideInput {
    /// The slide's neutral label (never its file name).
    pub label: String,
    /// SHA-256 of the slide's file; for a multi-file slide (VMS), of the index's and then each
    /// named file's hex SHA-256 concatenated.
    pub sha256: Option<String>,
    pub level: usize,
    pub tissue_tiles: usize,
    pub tiles_used: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClinicalInput {
    pub record_sha256: String,
}

/// The model's outputs as locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    /// The calibrated risk by `horizon_months` (24 unless configured otherwise).
    pub risk_2y: f64,
    pub risk_2y_uncalibrated: f64,
    pub risk_group: RiskGroup,
    pub threshold: f64,
    /// The network's outputs: interval hazards, or one risk (the package's time axis).
    pub hazards: Vec<f32>,
    /// `[start, end)` in months after surgery, one per hazard.
    pub hazard_intervals_months: Vec<[u32; 2]>,
    /// The horizon `risk_2y` is at (absent in records before the time axis was declared: 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_months: Option<u32>,
    /// Tiles through the tile encoder and tiles from the embedding cache (absent in older
    /// records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<crlm_models::inference::TileCounts>,
}

/// A wall-clock step between two records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockJump {
    pub wall_clock_step_seconds: f64,
}

/// A torn last record cut off at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryNote {
    pub torn_bytes_cut: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crlm_models::case::ModalityStatus;

    /// A body in the shape the service wrote before these types existed reads back, and
    /// writes back to the same JSON.
    #[test]
    fn a_format_1_prediction_body_round_trips_exactly() {
        let stored = serde_json::json!({
            "case": "P-43915E58AF91", "case_ref": "r1", "surgery_date": "2026-01-02",
            "model": {"name": "m", "version": "1", "sha256": "ab", "demo": true, "signer_key_id": "k",
                      "backend": "candle", "device": "cpu", "precision": "fp32"},
            "software": {"name": "crlm-edge", "version": "0.1.0"},
            "status": "predicted",
            "inputs": {"ct": {"series": "s", "choice": "only series", "rejected_series": 0,
                              "images": [{"sop": "u", "hu_sha256": "h"}], "roi": null},
                       "clinical": {"record_sha256": "c"}},
            "inputs_sha256": "x",
            "modalities": {"ct": {"status": "used"}, "slide": {"status": "missing"},
                           "clinical": {"status": "refused", "reason": "why"}},
            "eligibility": {"checked": true, "eligible": true, "reasons": []},
            "warnings": [],
            "outputs": {"risk_2y": 0.25, "risk_2y_uncalibrated": 0.3, "risk_group": "low", "threshold": 0.5,
                        "hazards": [0.25, 0.5], "hazard_intervals_months": [[0, 6], [6, 12]]},
        });
        let body = RecordBody::from_value(RecordKind::Prediction, &stored).unwrap();
        let c = body.case().unwrap();
        assert_eq!(c.modalities.as_ref().unwrap().clinical, ModalityStatus::Refused { reason: "why".into() });
        assert_eq!(c.modalities_used(), "ct");
        assert_eq!(c.outputs.as_ref().unwrap().risk_group, RiskGroup::Low);
        assert_eq!(body.to_value().unwrap().to_string(), stored.to_string());
    }

    #[test]
    fn a_misnamed_field_is_an_error_not_a_null() {
        let v = serde_json::json!({"case": "P", "case_ref": "r", "surgery_date": null,
            "model": {}, "software": {"name": "crlm-edge", "version": "0"}, "status": "predicted"});
        assert!(RecordBody::from_value(RecordKind::Prediction, &v).is_err(), "a model block without fields");
    }
}

//! A FHIR R4 `RiskAssessment` (also valid R5 for the elements used): the 2-year probability of
//! liver metastasis, the model as the performing device, the CT study as the basis. The subject is
//! the case pseudonym; study UIDs are keyed references unless `privacy.keep_uids`.

use super::SiteStudy;
use crlm_ledger::{CaseRecord, Outputs, Record};
use serde_json::{Value, json};

/// SNOMED CT: Secondary malignant neoplasm of liver.
pub const LIVER_METASTASIS_SCT: &str = "94381002";

pub fn risk_assessment(
    record: &Record,
    c: &CaseRecord,
    o: &Outputs,
    record_hash: &str,
    device_key_id: &str,
    site: Option<&SiteStudy>,
    keep_uids: bool,
) -> Value {
    let m = &c.model;
    let demo = m.demo;
    let mut notes = vec![json!({"text": super::RESEARCH_CAUTION})];
    if demo {
        notes.push(json!({"text": crlm_predict::DEMO_NOTICE}));
    }
    let mut basis = Vec::new();
    if let Some(series) = c.inputs.as_ref().and_then(|i| i.ct.as_ref()).map(|ct| ct.series.as_str()) {
        let study = match site {
            Some(s) if keep_uids => {
                json!({"system": "urn:dicom:uid", "value": format!("urn:oid:{}", s.study_instance_uid)})
            }
            _ => json!({"system": "urn:crlm-edge:keyed-series-ref", "value": series}),
        };
        basis.push(json!({"type": "ImagingStudy", "identifier": study, "display": "pre-operative contrast CT"}));
    }
    let group = o.risk_group.name();
    let quantity = |v: u32| json!({"value": v, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"});
    json!({
        "resourceType": "RiskAssessment",
        "id": format!("crlm-{}-{}", device_key_id, record.core.seq),
        "identifier": [{"system": format!("urn:crlm-edge:ledger:{device_key_id}"), "value": record.core.seq.to_string()}],
        "status": "final",
        "method": {
            "coding": [{"system": "urn:crlm-edge:model", "code": m.name, "display": format!("{} {}", m.name, m.version)}],
            "text": format!("model package sha256 {}", m.sha256),
        },
        "code": {"text": "2-year risk of colorectal-cancer liver metastasis after curative surgery"},
        "subject": {"type": "Patient", "identifier": {"system": "urn:crlm-edge:pseudonym", "value": c.case}},
        "occurrenceDateTime": record.core.wall_time,
        "performer": {
            "type": "Device",
            "identifier": {"system": "urn:crlm-edge:model-sha256", "value": m.sha256},
            "display": format!("crlm-edge {} running {} {}{}", c.software.version, m.name, m.version,
                if demo { " (DEMO)" } else { "" }),
        },
        "basis": basis,
        "prediction": [{
            "outcome": {
                "coding": [{"system": "http://snomed.info/sct", "code": LIVER_METASTASIS_SCT,
                            "display": "Secondary malignant neoplasm of liver"}],
                "text": "liver metastasis",
            },
            "probabilityDecimal": o.risk_2y,
            "qualitativeRisk": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/risk-probability",
                                             "code": group, "display": group}]},
            "whenRange": {"low": quantity(0), "high": quantity(24)},
            "rationale": format!("risk group at the locked threshold {}", json!(o.threshold)),
        }],
        "note": notes,
        "extension": [{"url": "urn:crlm-edge:ledger-record-sha256", "valueString": record_hash}],
    })
}

//! The study protocol's eligibility, checked (never assumed) before any prediction: age range,
//! stage I-III (M0), curative resection, contrast CT shortly before surgery. A value that is
//! absent or "unknown" makes eligibility unconfirmable, which is a reason too.

use chrono::NaiveDate;
use crlm_config::EligibilityConfig;
use crlm_models::clinical::ClinicalRecord;

/// Reasons the case is not eligible; empty when it is.
pub fn check(record: &ClinicalRecord, ct_date_from_dicom: Option<NaiveDate>, cfg: &EligibilityConfig) -> Vec<String> {
    let mut reasons = Vec::new();
    if !cfg.enabled {
        return reasons;
    }
    match record.age() {
        Some(a) if a < cfg.min_age || a > cfg.max_age => {
            reasons.push(format!("age {a} is outside the study range {}-{}", cfg.min_age, cfg.max_age));
        }
        Some(_) => {}
        None => reasons.push("age unknown".into()),
    }
    match record.text("M") {
        Some("M0") => {}
        Some(m) => {
            reasons.push(format!("{m}: distant metastasis at diagnosis (stage IV); the study takes stage I-III (M0)"))
        }
        None => reasons.push("M stage unknown: stage I-III (M0) cannot be confirmed".into()),
    }
    match record.text("resection") {
        Some(r) if r == cfg.required_resection => {}
        Some(r) => {
            reasons.push(format!("{r} resection: the study requires a curative {} resection", cfg.required_resection))
        }
        None => reasons.push(format!(
            "resection status unknown: a curative {} resection cannot be confirmed",
            cfg.required_resection
        )),
    }
    let surgery = record.date("surgery_date");
    let ct = record.date("ct_date").or(ct_date_from_dicom);
    match (ct, surgery) {
        (Some(ct), Some(s)) => {
            let days = (s - ct).num_days();
            if days < 0 {
                reasons.push(format!("CT dated {ct} is after surgery on {s}: the study needs a pre-operative CT"));
            } else if days > cfg.max_ct_before_surgery_days {
                reasons.push(format!(
                    "CT {days} days before surgery, more than the {} allowed",
                    cfg.max_ct_before_surgery_days
                ));
            }
        }
        (None, _) => reasons.push("CT date unknown (no ct_date and no DICOM study date)".into()),
        (_, None) => reasons.push("surgery date unknown: the CT-to-surgery interval cannot be checked".into()),
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crlm_models::clinical::parse_clinical;

    fn rec(json: &str) -> ClinicalRecord {
        parse_clinical(json.as_bytes()).unwrap().1.remove(0)
    }

    #[test]
    fn eligible_case_has_no_reason() {
        let r = rec(
            r#"{"patient_id":"P","age":60,"M":"M0","resection":"R0","surgery_date":"2026-03-20","ct_date":"2026-03-01"}"#,
        );
        assert!(check(&r, None, &EligibilityConfig::default()).is_empty());
    }

    #[test]
    fn each_protocol_violation_is_named() {
        let r = rec(
            r#"{"patient_id":"P","age":80,"M":"M1a","resection":"R1","surgery_date":"2026-03-20","ct_date":"2026-01-01"}"#,
        );
        let reasons = check(&r, None, &EligibilityConfig::default());
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("age 80"));
        assert!(reasons[3].contains("78 days"));
    }

    #[test]
    fn unknowns_cannot_confirm_eligibility_and_dicom_date_is_a_fallback() {
        let r = rec(r#"{"patient_id":"P","age":60,"M":"unknown","resection":"R0","surgery_date":"2026-03-20"}"#);
        let d = NaiveDate::from_ymd_opt(2026, 3, 10);
        let reasons = check(&r, d, &EligibilityConfig::default());
        assert_eq!(reasons, vec!["M stage unknown: stage I-III (M0) cannot be confirmed".to_string()]);
    }
}

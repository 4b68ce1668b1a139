//! The package's clinical encoding: a schema-v1 record becomes the feature vector CRLM-Net's
//! clinical branch reads. Every feature's columns in the order the package lists them, then one
//! missingness indicator per distinct field (1 = absent or "unknown"); a missing field's columns
//! are 0. The package is checked against the schema when it is loaded, not per case.

use crate::clinical::{ClinicalRecord, ClinicalValue, FieldKind, field_kind};
use crate::package::spec::{ClinicalEncodingSpec, FeatureEncoding};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodedClinical {
    pub values: Vec<f32>,
    /// Fields the encoding uses that the record lacks (absent or "unknown").
    pub missing_fields: Vec<String>,
}

/// Problems of an encoding against schema v1: unknown fields, or an encoding that does not fit
/// the field's kind (a one-hot level the schema does not have, a log of a category...).
pub fn check_encoding(spec: &ClinicalEncodingSpec) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &spec.features {
        let Some(kind) = field_kind(&f.field) else {
            problems.push(format!("{}: not a schema-v1 field", f.field));
            continue;
        };
        let fits = match (&f.encoding, kind) {
            (FeatureEncoding::Numeric { scale, .. } | FeatureEncoding::Log { scale, .. }, FieldKind::Number) => {
                *scale > 0.0
            }
            (FeatureEncoding::Cut { at }, FieldKind::Number) => !at.is_empty(),
            (FeatureEncoding::OneHot { levels } | FeatureEncoding::Ordinal { levels }, FieldKind::Enum(allowed)) => {
                levels.len() >= 2 && levels.iter().all(|l| allowed.contains(&l.as_str()))
            }
            (FeatureEncoding::Bool, FieldKind::Bool) => true,
            _ => false,
        };
        if !fits {
            problems.push(format!("{}: encoding {:?} does not fit the field's kind {:?}", f.field, f.encoding, kind));
        }
    }
    problems
}

/// Encode one record.
pub fn encode(record: &ClinicalRecord, spec: &ClinicalEncodingSpec) -> EncodedClinical {
    let mut values = Vec::with_capacity(spec.width());
    let mut missing_fields: Vec<String> = Vec::new();
    for f in &spec.features {
        let v = record.values.get(&f.field);
        let number = match v {
            Some(ClinicalValue::Number(x)) => Some(*x),
            _ => None,
        };
        let text = match v {
            Some(ClinicalValue::Text(s)) => Some(s.as_str()),
            _ => None,
        };
        let start = values.len();
        let present = match &f.encoding {
            FeatureEncoding::Numeric { center, scale } => {
                number.map(|x| values.push(((x - center) / scale) as f32)).is_some()
            }
            FeatureEncoding::Log { center, scale } => {
                number.map(|x| values.push(((x.max(0.0).ln_1p() - center) / scale) as f32)).is_some()
            }
            FeatureEncoding::Cut { at } => {
                number.map(|x| values.extend(at.iter().map(|c| f32::from(u8::from(x >= *c))))).is_some()
            }
            FeatureEncoding::OneHot { levels } => {
                text.map(|t| values.extend(levels.iter().map(|l| f32::from(u8::from(l == t))))).is_some()
            }
            FeatureEncoding::Ordinal { levels } => text
                .and_then(|t| levels.iter().position(|l| l == t))
                .map(|i| values.push(i as f32 / (levels.len() - 1).max(1) as f32))
                .is_some(),
            FeatureEncoding::Bool => match v {
                Some(ClinicalValue::Bool(b)) => {
                    values.push(f32::from(u8::from(*b)));
                    true
                }
                _ => false,
            },
        };
        if !present {
            values.truncate(start);
            values.extend(std::iter::repeat_n(0.0, f.encoding.width()));
            if !missing_fields.contains(&f.field) {
                missing_fields.push(f.field.clone());
            }
        }
    }
    for field in spec.fields() {
        values.push(f32::from(u8::from(missing_fields.iter().any(|m| m == field))));
    }
    EncodedClinical { values, missing_fields }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clinical::parse_clinical;
    use crate::package::spec::FeatureSpec;

    fn spec() -> ClinicalEncodingSpec {
        let f = |field: &str, encoding| FeatureSpec { field: field.into(), encoding };
        ClinicalEncodingSpec {
            features: vec![
                f("age", FeatureEncoding::Numeric { center: 60.0, scale: 10.0 }),
                f("pN", FeatureEncoding::OneHot { levels: vec!["N0".into(), "N1a".into(), "N2b".into()] }),
                f("cea_ng_ml", FeatureEncoding::Log { center: 0.0, scale: 1.0 }),
                f("cea_ng_ml", FeatureEncoding::Cut { at: vec![5.0] }),
                f("lymphovascular_invasion", FeatureEncoding::Bool),
                f(
                    "tumour_budding",
                    FeatureEncoding::Ordinal { levels: vec!["Bd1".into(), "Bd2".into(), "Bd3".into()] },
                ),
            ],
        }
    }

    #[test]
    fn encodes_values_and_missingness() {
        let json = br#"{"schema_version":1,"patient_id":"P","case_id":"C","age":70,"pN":"N1a","cea_ng_ml":"unknown",
            "lymphovascular_invasion":true,"tumour_budding":"Bd3"}"#;
        let (_, recs) = parse_clinical(json).unwrap();
        let e = encode(&recs[0], &spec());
        let want = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, /* missing: */ 0.0, 0.0, 1.0, 0.0, 0.0];
        assert_eq!(e.values, want);
        assert_eq!(e.missing_fields, ["cea_ng_ml"]);
        assert_eq!(e.values.len(), spec().width());
        assert!(check_encoding(&spec()).is_empty());
    }

    #[test]
    fn encodings_that_do_not_fit_the_schema_are_named() {
        let mut s = spec();
        s.features.push(FeatureSpec { field: "pT".into(), encoding: FeatureEncoding::Log { center: 0.0, scale: 1.0 } });
        s.features.push(FeatureSpec { field: "shoe_size".into(), encoding: FeatureEncoding::Bool });
        let p = check_encoding(&s);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("pT") && p[1].starts_with("shoe_size"));
    }
}

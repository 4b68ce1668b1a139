//! The clinical-data file, schema v1: a JSON object, or CSV with one row per case and the same
//! column names. Values are validated and kept raw (units as given): encoding for the model
//! belongs to the model package. Every field except `patient_id`, `case_id` and `age` may be
//! `"unknown"` or absent. All problems of a file are collected, each naming field and row.
//! Documented in docs/CLINICAL.md.

use chrono::NaiveDate;
use serde::Serialize;
use std::collections::BTreeMap;

/// Current schema version.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Id,
    Age,
    Enum(&'static [&'static str]),
    Date,
    Measure,
    Count,
    Bool,
}

const FIELDS: &[(&str, Kind)] = &[
    ("patient_id", Kind::Id),
    ("case_id", Kind::Id),
    ("age", Kind::Age),
    ("sex", Kind::Enum(&["M", "F"])),
    ("surgery_date", Kind::Date),
    ("ct_date", Kind::Date),
    ("site", Kind::Enum(&["right_colon", "left_colon", "rectum"])),
    ("pT", Kind::Enum(&["T1", "T2", "T3", "T4a", "T4b"])),
    ("pN", Kind::Enum(&["N0", "N1a", "N1b", "N1c", "N2a", "N2b"])),
    ("M", Kind::Enum(&["M0", "M1a", "M1b", "M1c"])),
    ("resection", Kind::Enum(&["R0", "R1", "R2"])),
    ("cea_ng_ml", Kind::Measure),
    ("ca19_9_u_ml", Kind::Measure),
    ("grade", Kind::Enum(&["G1", "G2", "G3"])),
    ("lymphovascular_invasion", Kind::Bool),
    ("perineural_invasion", Kind::Bool),
    ("tumour_deposits", Kind::Bool),
    ("tumour_budding", Kind::Enum(&["Bd1", "Bd2", "Bd3"])),
    ("nodes_examined", Kind::Count),
    ("nodes_positive", Kind::Count),
    ("mmr", Kind::Enum(&["pMMR", "dMMR"])),
    ("kras", Kind::Enum(&["mutant", "wild_type"])),
    ("nras", Kind::Enum(&["mutant", "wild_type"])),
    ("braf", Kind::Enum(&["mutant", "wild_type"])),
    ("adjuvant_chemotherapy", Kind::Bool),
];

/// What kind of value a schema-v1 field holds (for checking a package's encoding against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Id,
    Number,
    Enum(&'static [&'static str]),
    Date,
    Bool,
}

/// The kind of a schema-v1 field, `None` for a name the schema does not have.
pub fn field_kind(name: &str) -> Option<FieldKind> {
    FIELDS.iter().find(|(n, _)| *n == name).map(|(_, k)| match k {
        Kind::Id => FieldKind::Id,
        Kind::Age | Kind::Measure | Kind::Count => FieldKind::Number,
        Kind::Enum(levels) => FieldKind::Enum(levels),
        Kind::Date => FieldKind::Date,
        Kind::Bool => FieldKind::Bool,
    })
}

/// Names of every schema-v1 field, in documentation order.
pub fn field_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(n, _)| *n)
}

/// One validated value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ClinicalValue {
    Text(String),
    Number(f64),
    Bool(bool),
    /// Given explicitly as "unknown".
    Unknown(UnknownMarker),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMarker {
    Unknown,
}

/// A validated clinical record. Absent fields are simply not in `values`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClinicalRecord {
    pub schema_version: u32,
    pub values: BTreeMap<String, ClinicalValue>,
}

impl ClinicalRecord {
    pub fn patient_id(&self) -> &str {
        self.text("patient_id").unwrap_or_default()
    }
    pub fn case_id(&self) -> Option<&str> {
        self.text("case_id")
    }
    pub fn age(&self) -> Option<f64> {
        match self.values.get("age") {
            Some(ClinicalValue::Number(v)) => Some(*v),
            _ => None,
        }
    }
    /// A text value; `None` when absent or "unknown".
    pub fn text(&self, field: &str) -> Option<&str> {
        match self.values.get(field) {
            Some(ClinicalValue::Text(s)) => Some(s),
            _ => None,
        }
    }
    pub fn date(&self, field: &str) -> Option<NaiveDate> {
        self.text(field).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
    }
    /// SHA-256 of the canonical JSON of the record (sorted keys): its identity in the ledger.
    pub fn hash(&self) -> String {
        crate::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

/// A problem found in a clinical file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{message}", row.map(|r| format!("row {r}: ")).unwrap_or_default())]
pub struct ClinicalProblem {
    /// 1-based data row for CSV (the header is row 0); `None` for JSON.
    pub row: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

/// Why a clinical file could not be used: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clinical file invalid: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ClinicalError {
    pub problems: Vec<ClinicalProblem>,
}

impl ClinicalError {
    fn one(message: impl Into<String>) -> Self {
        ClinicalError { problems: vec![ClinicalProblem { row: None, field: None, message: message.into() }] }
    }
}

/// Does this look like a clinical file (JSON object or CSV with a `patient_id` column)?
pub fn sniff_clinical(head: &[u8]) -> Option<ClinicalFormat> {
    let text = std::str::from_utf8(strip_bom(head)).ok().or_else(|| {
        // The head may end mid-character; accept the valid prefix.
        let b = strip_bom(head);
        let valid = std::str::from_utf8(b).err()?.valid_up_to();
        std::str::from_utf8(&b[..valid]).ok()
    })?;
    let t = text.trim_start();
    if t.starts_with('{') && t.contains("\"patient_id\"") {
        return Some(ClinicalFormat::Json);
    }
    let first_line = t.lines().next()?;
    if first_line.split([',', ';']).any(|c| c.trim().trim_matches('"') == "patient_id") {
        return Some(ClinicalFormat::Csv);
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClinicalFormat {
    Json,
    Csv,
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(b)
}

/// Parse a clinical file of either format into its records (JSON: one; CSV: one per row).
pub fn parse_clinical(bytes: &[u8]) -> Result<(ClinicalFormat, Vec<ClinicalRecord>), ClinicalError> {
    let format = sniff_clinical(bytes).ok_or_else(|| {
        ClinicalError::one("not a clinical file: expected a JSON object or a CSV header with a `patient_id` column")
    })?;
    let text = std::str::from_utf8(strip_bom(bytes)).map_err(|e| ClinicalError::one(format!("not UTF-8 text: {e}")))?;
    let records = match format {
        ClinicalFormat::Json => vec![parse_json(text)?],
        ClinicalFormat::Csv => parse_csv(text)?,
    };
    Ok((format, records))
}

fn parse_json(text: &str) -> Result<ClinicalRecord, ClinicalError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ClinicalError::one(format!("JSON does not parse: {e}")))?;
    let obj = v.as_object().ok_or_else(|| ClinicalError::one("JSON must be one object with the schema-v1 keys"))?;
    let mut raw = Vec::new();
    let mut problems = Vec::new();
    for (k, val) in obj {
        if k == "schema_version" {
            if val.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
                problems.push(problem(
                    None,
                    k,
                    format!("schema_version {val} is not supported (this appliance reads 1)"),
                ));
            }
            continue;
        }
        let s = match val {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                problems.push(problem(None, k, format!("value {other} must be a string, number or boolean")));
                continue;
            }
        };
        raw.push((k.clone(), s));
    }
    let rec = validate(None, raw, &mut problems);
    if problems.is_empty() { Ok(rec) } else { Err(ClinicalError { problems }) }
}

fn parse_csv(text: &str) -> Result<Vec<ClinicalRecord>, ClinicalError> {
    let delim = if text.lines().next().is_some_and(|l| l.contains(';') && !l.contains(',')) { b';' } else { b',' };
    let mut rdr = csv::ReaderBuilder::new().delimiter(delim).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| ClinicalError::one(format!("CSV header unreadable: {e}")))?.clone();
    let mut problems = Vec::new();
    for h in headers.iter() {
        if !FIELDS.iter().any(|(n, _)| *n == h) && h != "schema_version" {
            problems.push(ClinicalProblem {
                row: Some(0),
                field: Some(h.to_string()),
                message: format!(
                    "unknown column `{h}`; allowed columns: {}",
                    FIELDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    for required in ["patient_id", "age"] {
        if !headers.iter().any(|h| h == required) {
            problems.push(problem(Some(0), required, format!("required column `{required}` is missing")));
        }
    }
    if !problems.is_empty() {
        return Err(ClinicalError { problems });
    }
    let mut out = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let row_no = i + 1;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                problems.push(ClinicalProblem {
                    row: Some(row_no),
                    field: None,
                    message: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        let raw: Vec<(String, String)> = headers
            .iter()
            .zip(row.iter())
            .filter(|(h, v)| *h != "schema_version" && !v.is_empty())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        out.push(validate(Some(row_no), raw, &mut problems));
    }
    if out.is_empty() && problems.is_empty() {
        problems.push(problem(Some(1), "patient_id", "the CSV has a header but no data row".into()));
    }
    if problems.is_empty() { Ok(out) } else { Err(ClinicalError { problems }) }
}

fn problem(row: Option<usize>, field: &str, message: String) -> ClinicalProblem {
    ClinicalProblem { row, field: Some(field.to_string()), message: format!("`{field}`: {message}") }
}

fn validate(row: Option<usize>, raw: Vec<(String, String)>, problems: &mut Vec<ClinicalProblem>) -> ClinicalRecord {
    let mut values = BTreeMap::new();
    for (k, v) in raw {
        let Some(&(name, kind)) = FIELDS.iter().find(|(n, _)| *n == k) else {
            problems.push(ClinicalProblem {
                row,
                field: Some(k.clone()),
                message: format!("unknown key `{k}`; see docs/CLINICAL.md for schema v1"),
            });
            continue;
        };
        let v = v.trim();
        if v.eq_ignore_ascii_case("unknown") && !matches!(kind, Kind::Id | Kind::Age) {
            values.insert(name.to_string(), ClinicalValue::Unknown(UnknownMarker::Unknown));
            continue;
        }
        match parse_value(kind, v) {
            Ok(val) => {
                values.insert(name.to_string(), val);
            }
            Err(msg) => problems.push(problem(row, name, msg)),
        }
    }
    for required in ["patient_id", "age"] {
        if !values.contains_key(required)
            && !problems.iter().any(|p| p.row == row && p.field.as_deref() == Some(required))
        {
            problems.push(problem(row, required, "is required".into()));
        }
    }
    if let (Some(ClinicalValue::Number(pos)), Some(ClinicalValue::Number(exam))) =
        (values.get("nodes_positive"), values.get("nodes_examined"))
        && pos > exam
    {
        problems.push(problem(row, "nodes_positive", format!("{pos} is more than nodes_examined {exam}")));
    }
    ClinicalRecord { schema_version: SCHEMA_VERSION, values }
}

fn parse_value(kind: Kind, v: &str) -> Result<ClinicalValue, String> {
    match kind {
        Kind::Id => {
            if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control()) {
                Err("must be 1-64 printable characters".into())
            } else {
                Ok(ClinicalValue::Text(v.to_string()))
            }
        }
        Kind::Age => match v.parse::<f64>() {
            Ok(a) if a.is_finite() && (0.0..=120.0).contains(&a) => Ok(ClinicalValue::Number(a)),
            Ok(a) => Err(format!("{a} is out of range 0-120 years")),
            Err(_) => Err(format!("`{v}` is not a number of years")),
        },
        Kind::Enum(allowed) => allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(v))
            .map(|a| ClinicalValue::Text((*a).to_string()))
            .ok_or_else(|| format!("`{v}` is not one of {} or \"unknown\"", allowed.join(", "))),
        Kind::Date => NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .map(|d| ClinicalValue::Text(d.format("%Y-%m-%d").to_string()))
            .map_err(|_| format!("`{v}` is not an ISO date (YYYY-MM-DD)")),
        Kind::Measure => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(ClinicalValue::Number(x)),
            _ => Err(format!("`{v}` is not a non-negative number")),
        },
        Kind::Count => match v.parse::<u32>() {
            Ok(x) if x <= 500 => Ok(ClinicalValue::Number(f64::from(x))),
            _ => Err(format!("`{v}` is not a whole number 0-500")),
        },
        Kind::Bool => match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(ClinicalValue::Bool(true)),
            "false" | "no" | "0" => Ok(ClinicalValue::Bool(false)),
            _ => Err(format!("`{v}` is not true/false")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_record_parses_and_keeps_raw_values() {
        let j = br#"{"patient_id":"P1","age":61,"sex":"F","pT":"t3","M":"M0","cea_ng_ml":"unknown","tumour_deposits":false}"#;
        let (fmt, recs) = parse_clinical(j).unwrap();
        assert_eq!(fmt, ClinicalFormat::Json);
        assert_eq!(recs[0].patient_id(), "P1");
        assert_eq!(recs[0].text("pT"), Some("T3"));
        assert_eq!(recs[0].values["cea_ng_ml"], ClinicalValue::Unknown(UnknownMarker::Unknown));
    }

    #[test]
    fn out_of_range_age_and_bad_enum_are_both_reported() {
        let j = br#"{"patient_id":"P1","age":212,"site":"colon"}"#;
        let err = parse_clinical(j).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("212 is out of range"));
        assert!(err.to_string().contains("right_colon"));
    }

    #[test]
    fn csv_wrong_column_is_named() {
        let c = b"patient_id,age,stage\nP1,60,III\n";
        let err = parse_clinical(c).unwrap_err();
        assert!(err.to_string().contains("unknown column `stage`"), "{err}");
    }

    #[test]
    fn csv_rows_become_records() {
        let c = b"patient_id,age,resection\nP1,60,R0\nP2,55,unknown\n";
        let (_, recs) = parse_clinical(c).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].text("resection"), None);
        assert_ne!(recs[0].hash(), recs[1].hash());
    }

    #[test]
    fn not_clinical_is_rejected() {
        assert!(sniff_clinical(b"{\"foo\": 1}").is_none());
        assert!(sniff_clinical(b"a,b,c\n1,2,3").is_none());
    }
}

//! Reading the predictions (the ledger export, or any CSV with `pseudonym` and `risk_2y`) and the
//! outcomes, and joining them by pseudonym. Every row that cannot be used is reported with why;
//! nothing is dropped silently.

use super::{Patient, ValidateError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Days per month for `time_days` (365.25 / 12).
pub const DAYS_PER_MONTH: f64 = 30.4375;

/// A row left out, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Excluded {
    pub file: &'static str,
    /// 1-based data row (the header is row 0).
    pub row: usize,
    pub pseudonym: String,
    pub reason: String,
}

struct Prediction {
    row: usize,
    risk: f64,
    high: Option<bool>,
    locked_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    surgery_date: Option<chrono::NaiveDate>,
}

struct Outcome {
    row: usize,
    time: f64,
    event: bool,
    centre: Option<String>,
    stage: Option<String>,
}

fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), ValidateError> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| ValidateError::Input(format!("{}: {e}", path.display())))?;
    let header: Vec<String> = r
        .headers()
        .map_err(|e| ValidateError::Input(format!("{}: {e}", path.display())))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| ValidateError::Input(format!("{}: {e}", path.display())))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok((header, rows))
}

fn col(header: &[String], name: &str) -> Option<usize> {
    header.iter().position(|h| h == name)
}

/// What [`load`] returns.
pub struct Loaded {
    pub patients: Vec<Patient>,
    pub excluded: Vec<Excluded>,
    /// The locked threshold (from the file, else the command line).
    pub threshold: Option<f64>,
}

/// Join predictions and outcomes: the usable patients and every exclusion with its reason.
/// `threshold` (from the command line) defines the groups when the file has no `risk_group`.
pub fn load(predictions: &Path, outcomes: &Path, threshold: Option<f64>) -> Result<Loaded, ValidateError> {
    let mut excluded = Vec::new();
    let (ph, prows) = read_csv(predictions)?;
    let need = |h: &[String], name: &str, file: &Path| {
        col(h, name).ok_or_else(|| ValidateError::Input(format!("{}: no `{name}` column", file.display())))
    };
    let p_id = need(&ph, "pseudonym", predictions)?;
    let p_risk = need(&ph, "risk_2y", predictions)?;
    let (p_group, p_thr, p_locked, p_surgery) =
        (col(&ph, "risk_group"), col(&ph, "threshold"), col(&ph, "locked_at"), col(&ph, "surgery_date"));
    let mut file_threshold: Option<f64> = None;
    let mut preds: HashMap<String, Prediction> = HashMap::new();
    let mut seen_dup: HashSet<String> = HashSet::new();
    for (k, r) in prows.iter().enumerate() {
        let row = k + 1;
        let id = r.get(p_id).cloned().unwrap_or_default();
        let ex = |reason: String| Excluded { file: "predictions", row, pseudonym: id.clone(), reason };
        if id.is_empty() {
            excluded.push(ex("no pseudonym".into()));
            continue;
        }
        let Some(risk) = r.get(p_risk).and_then(|v| v.parse::<f64>().ok()).filter(|v| (0.0..=1.0).contains(v)) else {
            let why = match r.get(p_risk).map(String::as_str) {
                None | Some("") => "no risk_2y (a refusal or an ineligible patient)".to_string(),
                Some(v) => format!("risk_2y `{v}` is not a probability"),
            };
            excluded.push(ex(why));
            continue;
        };
        if preds.contains_key(&id) || seen_dup.contains(&id) {
            seen_dup.insert(id.clone());
            excluded.push(ex("duplicate pseudonym in the predictions (all its rows are left out)".into()));
            continue;
        }
        let thr = p_thr.and_then(|c| r.get(c)).and_then(|v| v.parse::<f64>().ok());
        if let Some(t) = thr {
            file_threshold.get_or_insert(t);
        }
        let high = match p_group.and_then(|c| r.get(c)).map(|g| g.to_ascii_lowercase()) {
            Some(g) if g == "high" => Some(true),
            Some(g) if g == "low" => Some(false),
            _ => thr.or(threshold).map(|t| risk >= t),
        };
        let locked_at = p_locked.and_then(|c| r.get(c)).and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok());
        let surgery_date =
            p_surgery.and_then(|c| r.get(c)).and_then(|v| chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").ok());
        preds.insert(id, Prediction { row, risk, high, locked_at, surgery_date });
    }
    for id in &seen_dup {
        if let Some(p) = preds.remove(id) {
            excluded.push(Excluded {
                file: "predictions",
                row: p.row,
                pseudonym: id.clone(),
                reason: "duplicate pseudonym in the predictions (all its rows are left out)".into(),
            });
        }
    }

    let (oh, orows) = read_csv(outcomes)?;
    let o_id = need(&oh, "pseudonym", outcomes)?;
    let (o_months, o_days) = (col(&oh, "time_months"), col(&oh, "time_days"));
    if o_months.is_none() && o_days.is_none() {
        return Err(ValidateError::Input(format!("{}: no `time_months` or `time_days` column", outcomes.display())));
    }
    let o_event = need(&oh, "event", outcomes)?;
    let (o_centre, o_stage) = (col(&oh, "centre").or_else(|| col(&oh, "center")), col(&oh, "stage"));
    let mut outs: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut out_dup: HashSet<String> = HashSet::new();
    for (k, r) in orows.iter().enumerate() {
        let row = k + 1;
        let id = r.get(o_id).cloned().unwrap_or_default();
        let ex = |reason: String| Excluded { file: "outcomes", row, pseudonym: id.clone(), reason };
        if id.is_empty() {
            excluded.push(ex("no pseudonym".into()));
            continue;
        }
        let time = match (o_months.and_then(|c| r.get(c)), o_days.and_then(|c| r.get(c))) {
            (Some(m), _) if !m.is_empty() => m.parse::<f64>().ok(),
            (_, Some(d)) if !d.is_empty() => d.parse::<f64>().ok().map(|d| d / DAYS_PER_MONTH),
            _ => None,
        };
        let Some(time) = time.filter(|t| t.is_finite()) else {
            excluded.push(ex("no readable time".into()));
            continue;
        };
        if time < 0.0 {
            excluded.push(ex(format!("negative time ({time} months)")));
            continue;
        }
        let event = match r.get(o_event).map(String::as_str) {
            Some("1") => true,
            Some("0") => false,
            other => {
                excluded.push(ex(format!("event `{}` is not 0 or 1", other.unwrap_or(""))));
                continue;
            }
        };
        if outs.contains_key(&id) || out_dup.contains(&id) {
            out_dup.insert(id.clone());
            excluded.push(ex("duplicate pseudonym in the outcomes (all its rows are left out)".into()));
            continue;
        }
        let opt = |c: Option<usize>| c.and_then(|c| r.get(c)).filter(|v| !v.is_empty()).cloned();
        outs.insert(id, Outcome { row, time, event, centre: opt(o_centre), stage: opt(o_stage) });
    }
    for id in &out_dup {
        if let Some(o) = outs.remove(id) {
            excluded.push(Excluded {
                file: "outcomes",
                row: o.row,
                pseudonym: id.clone(),
                reason: "duplicate pseudonym in the outcomes (all its rows are left out)".into(),
            });
        }
    }

    let mut patients = Vec::new();
    for (id, o) in &outs {
        let Some(p) = preds.get(id) else {
            excluded.push(Excluded {
                file: "outcomes",
                row: o.row,
                pseudonym: id.clone(),
                reason: "no locked prediction for this pseudonym".into(),
            });
            continue;
        };
        // A prediction locked after the outcome was known is not a prospective prediction.
        // (Checked arithmetic: a time of 1e30 months is bad data, not a reason to panic.)
        let outcome_day = p.surgery_date.and_then(|surgery| {
            chrono::TimeDelta::try_days((o.time * DAYS_PER_MONTH).floor() as i64)
                .and_then(|d| surgery.checked_add_signed(d))
        });
        if let (Some(locked), Some(outcome_day)) = (p.locked_at, outcome_day)
            && locked.date_naive() > outcome_day
            && o.event
        {
            excluded.push(Excluded {
                file: "predictions",
                row: p.row,
                pseudonym: id.clone(),
                reason: format!("locked on {} after the outcome on {outcome_day}", locked.date_naive()),
            });
            continue;
        }
        patients.push(Patient {
            pseudonym: id.clone(),
            risk: p.risk,
            high: p.high,
            time: o.time,
            event: o.event,
            centre: o.centre.clone(),
            stage: o.stage.clone(),
        });
    }
    let mut unmatched: Vec<_> = preds.iter().filter(|(id, _)| !outs.contains_key(*id)).collect();
    unmatched.sort_by_key(|(_, p)| p.row);
    for (id, p) in unmatched {
        excluded.push(Excluded {
            file: "predictions",
            row: p.row,
            pseudonym: id.clone(),
            reason: "no outcome for this pseudonym".into(),
        });
    }
    excluded.sort_by(|a, b| (a.file, a.row).cmp(&(b.file, b.row)));
    Ok(Loaded { patients, excluded, threshold: file_threshold.or(threshold) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_times_are_data_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let (p, o) = (d.path().join("p.csv"), d.path().join("o.csv"));
        std::fs::write(
            &p,
            "pseudonym,risk_2y,surgery_date,locked_at\nA,0.2,2026-01-01,2026-01-02T00:00:00Z\nB,0.4,2026-01-01,2026-01-02T00:00:00Z\n",
        )
        .unwrap();
        std::fs::write(&o, "pseudonym,time_months,event\nA,1e30,1\nB,inf,1\n").unwrap();
        let loaded = load(&p, &o, None).unwrap();
        assert_eq!(loaded.patients.len(), 1, "A kept (a huge time is not before the lock)");
        assert!(loaded.excluded.iter().any(|e| e.pseudonym == "B" && e.reason.contains("no readable time")));
    }
}

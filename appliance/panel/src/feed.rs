//! The panel's state from the service's own records: the state database and the last scan.
//! Only pseudonyms reach the panel; clinical-file problems are summarised without echoing values.

use super::state::{IngestView, ItemView, PanelState, ProblemView};
use crlm_config::Config;
use crlm_state::{CtHeld, SlidesHeld, StateDb, now_ms};

/// Build the panel state now.
pub fn build(db: &StateDb, cfg: &Config) -> PanelState {
    let now = now_ms();
    let mut st = PanelState {
        device: cfg.display.device_name.clone(),
        time: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        broker: "not configured".into(),
        disk_free_bytes: crlm_drivers::health::disk_free_bytes(&cfg.state.path),
        ..PanelState::default()
    };
    st.last_case = db.latest_case().ok().flatten().map(|(case, state)| format!("{case} {state}"));
    st.ingest = db.latest_waiting_case().ok().flatten().map(|(case, m, created)| IngestView {
        case,
        ct: match &m.ct {
            CtHeld::Found { series_description, slices, .. } => ItemView {
                found: true,
                detail: format!("{}, {slices} slices", series_description.as_deref().unwrap_or("CT series")),
            },
            CtHeld::Missing { .. } => ItemView { found: false, detail: String::new() },
        },
        slide: match m.slide {
            SlidesHeld::Found { count } => ItemView { found: true, detail: format!("{count} slide(s)") },
            SlidesHeld::Missing => ItemView { found: false, detail: String::new() },
        },
        clinical: ItemView {
            found: m.has_clinical(),
            detail: if m.has_clinical() { "clinical file".into() } else { String::new() },
        },
        waiting_seconds: u64::try_from((now - created) / 1000).unwrap_or(0),
    });
    let since = now - (cfg.display.problem_seconds * 1000.0) as i64;
    st.problem = db
        .latest_quarantine(since)
        .ok()
        .flatten()
        .map(|q| problem_view(&q.check, &q.reason, &q.action, q.case.as_deref()));
    st
}

fn problem_view(check: &str, reason: &str, action: &str, case: Option<&str>) -> ProblemView {
    let title = match check {
        "case.eligibility" => "Case not eligible for the study".to_string(),
        "case.consistency" => "Case folder is inconsistent".to_string(),
        c if c.starts_with("clinical.") => "Clinical file rejected".to_string(),
        c if c.starts_with("slide.") => "Slide rejected".to_string(),
        c if c.starts_with("dicom.") => "CT file rejected".to_string(),
        _ => "File rejected".to_string(),
    };
    // Clinical-file messages can echo field values typed by staff: summarise instead.
    let what = if check.starts_with("clinical.") {
        "The clinical file does not follow schema v1; the quarantine record on the box lists every problem.".to_string()
    } else {
        reason.to_string()
    };
    let what = match case {
        Some(c) => format!("Case {c}: {what}"),
        None => what,
    };
    ProblemView { title, what, action: action.to_string(), code: check.to_string() }
}

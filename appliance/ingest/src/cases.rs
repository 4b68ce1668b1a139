//! Cases: which case a file belongs to, and when a case is complete.
//!
//! A case is a top-level folder of the share (`share/<case>/...`, any depth inside), or for
//! loose DICOM at the share root, PatientID + StudyInstanceUID (joined to the root clinical file
//! that names that patient). A case closes when it holds every required modality and has been
//! quiet for the quiet window (or its folder has `READY`), or as partial when
//! `cases.partial_after_seconds` pass with a modality missing. Closing checks eligibility.

use super::recognise::{DicomDetails, DicomRole, Problem, Recognised};
use super::series::{self, SeriesChoice};
use super::{IngestError, Ingestor, ScanReport, eligibility};
use crlm_models::clinical::ClinicalRecord;
use crlm_models::dicom::DicomHeader;
use crlm_models::slide::SlideHeader;
use crlm_state::{
    CaseModalities, CaseState, ClinicalHeld, Closing, CtHeld, NewFile, OpenCaseRow as OpenCase, SlidesHeld, now_ms,
};
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// A case that changed state in a scan (for logs, the display and the service status).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaseChange {
    pub case: String,
    pub state: CaseState,
    pub reasons: Vec<String>,
}

enum CaseKey {
    Folder(String),
    Study { patient_id: String, study: String },
}

impl CaseKey {
    fn as_key(&self) -> String {
        match self {
            CaseKey::Folder(f) => format!("folder:{f}"),
            CaseKey::Study { patient_id, study } => format!("study:{patient_id}|{study}"),
        }
    }
}

/// How a case's reason about files identical to another case's begins (the scan reports each
/// for an alert: the same slide under two patients is a lab error the study must hear about).
pub const CROSS_CASE_REASON: &str = "the same file under two cases is a lab error:";

/// Accept a recognised file: a duplicate of known content, part of a case, or (root clinical
/// file) a source of records for root studies. One transaction.
pub(super) fn accept_file(
    ing: &mut Ingestor,
    rel: &Path,
    size: u64,
    mtime_ns: i64,
    sha: &str,
    rec: Recognised,
    report: &mut ScanReport,
) -> Result<(), IngestError> {
    let rel_s = rel.to_string_lossy().into_owned();
    let now = now_ms();
    let kind = rec.kind().as_str();
    let details = rec.details().to_string();
    // Identical content already accepted: a re-export, not a new case. Not for a multi-file
    // slide's index or parts: two different slides may share a part's bytes (the same macro
    // image, an MRXS .mrxs that says little) and even their index's (a VMS index names files and
    // sizes only), so no one file of them tells a re-export.
    let file = NewFile { path: &rel_s, size, mtime_ns, sha256: Some(sha), kind, details: Some(&details) };
    let multi_file = match &rec {
        Recognised::SlidePart { .. } => true,
        Recognised::Slide(h) => !h.members.is_empty(),
        _ => false,
    };
    if !multi_file && let Some(case_id) = ing.db.accepted_content(sha)? {
        ing.db.record_duplicate(&file, case_id, now)?;
        report.duplicates += 1;
        tracing::info!(stage = "ingest", file = %super::short_hash(rel), "identical re-export ignored");
        return Ok(());
    }
    // A multi-file slide's index comes last (it waits for its parts): the whole slide's content
    // tells whether it is a copy of one another folder (or this one) brought first.
    let slide_set = match &rec {
        Recognised::Slide(h) if !h.members.is_empty() => slide_set(ing, rel, sha, &h.members)?,
        _ => None,
    };
    if let Some(set) = &slide_set
        && let Some(first) = ing.db.slide_set_case(&set.content)?
    {
        let tx = ing.db.begin()?;
        tx.insert_duplicate_file(&file, first, now)?;
        tx.mark_duplicates(&set.part_ids, first)?;
        let mut emptied = BTreeSet::new();
        for c in set.part_cases.iter().filter(|c| **c != first) {
            if tx.drop_case_if_empty(*c)? {
                emptied.insert(*c);
            }
        }
        tx.commit()?;
        report.duplicates += 1 + set.part_ids.len();
        tracing::info!(stage = "ingest", file = %super::short_hash(rel), parts = set.part_ids.len(),
            cases_dropped = emptied.len(), "identical re-export of a multi-file slide ignored");
        return Ok(());
    }
    let in_folder = rel.components().count() > 1;
    let key = if in_folder {
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        Some(CaseKey::Folder(top))
    } else {
        match &rec {
            Recognised::Dicom { header, .. } => match &header.patient_id {
                Some(pid) => Some(CaseKey::Study {
                    patient_id: pid.clone(),
                    study: header
                        .study_instance_uid
                        .clone()
                        .or_else(|| header.study_date.clone().map(|d| format!("date:{d}")))
                        .unwrap_or_else(|| "unknown".into()),
                }),
                None => {
                    let p = Problem {
                        kind: rec.kind(),
                        check: "case.grouping",
                        reason: "loose DICOM at the share root without a PatientID cannot be grouped into a case"
                            .into(),
                        action: "Put the series into a case folder (share/<case>/...) together with its slide and clinical file.",
                    };
                    return ing.refuse(rel, size, mtime_ns, Some(sha.to_string()), p, report);
                }
            },
            Recognised::Slide(_) | Recognised::SlidePart { .. } => {
                let p = Problem {
                    kind: rec.kind(),
                    check: "case.grouping",
                    reason: "a slide at the share root cannot be assigned to a case (slides carry no patient ID)"
                        .into(),
                    action: "Put the slide into its case folder (share/<case>/...).",
                };
                return ing.refuse(rel, size, mtime_ns, Some(sha.to_string()), p, report);
            }
            Recognised::Clinical { .. } => None,
        }
    };
    let tx = ing.db.begin()?;
    let mut case_id: Option<i64> = None;
    if let Some(key) = &key {
        let case_key = key.as_key();
        let pseudonym = match key {
            CaseKey::Study { patient_id, .. } => ing.secret.patient_pseudonym(patient_id),
            CaseKey::Folder(_) => ing.secret.case_pseudonym(&case_key),
        };
        let (id, state, patient) = tx.ensure_case(&case_key, &pseudonym, now)?;
        case_id = Some(id);
        if state != CaseState::Waiting {
            let reason =
                format!("a {kind} file arrived after the case was {state}; it was not used (export a new case folder)");
            tx.append_case_reason(id, &reason)?;
        }
        tx.touch_case(id, now)?;
        // The patient becomes known from the CT or the clinical file: the pseudonym follows it.
        let pid = match &rec {
            Recognised::Dicom { header, .. } => header.patient_id.clone(),
            Recognised::Clinical { records, .. } if records.len() == 1 => Some(records[0].patient_id().to_string()),
            _ => None,
        };
        if patient.is_none()
            && let Some(pid) = pid
        {
            tx.set_patient(id, &pid, &ing.secret.patient_pseudonym(&pid))?;
        }
    }
    let file_id = tx.insert_accepted_file(&file, case_id, now)?;
    if let (Some(set), Some(case_id)) = (&slide_set, case_id) {
        tx.insert_slide_set(file_id, case_id, &set.content)?;
    }
    if let Recognised::Clinical { records, .. } = &rec {
        let case_ref = key.as_ref().map(|k| k.as_key());
        for (i, r) in records.iter().enumerate() {
            let json = serde_json::to_string(r).unwrap_or_default();
            tx.insert_clinical_record(file_id, i as i64 + 1, r.patient_id(), case_ref.as_deref(), &json, &r.hash())?;
            if key.is_none() {
                // A root clinical file wakes the root studies of that patient.
                tx.wake_root_studies(r.patient_id(), now)?;
            }
        }
    }
    tx.commit()?;
    report.accepted += 1;
    tracing::info!(stage = "ingest", kind, file = %super::short_hash(rel), "file accepted");
    Ok(())
}

/// A multi-file slide whose parts are all taken in: its content hash and its parts' rows.
struct SlideSet {
    content: String,
    part_ids: Vec<i64>,
    /// The cases the parts were accepted into (this folder's).
    part_cases: BTreeSet<i64>,
}

/// The slide set of an index at `rel`, or `None` when a part is not (or no longer) an accepted
/// file: then the index is accepted as it stands and the worker finds the slide incomplete.
fn slide_set(ing: &Ingestor, rel: &Path, index_sha: &str, members: &[String]) -> Result<Option<SlideSet>, IngestError> {
    let dir = rel.parent().unwrap_or(Path::new(""));
    let mut shas = Vec::with_capacity(members.len());
    let mut set = SlideSet { content: String::new(), part_ids: Vec::new(), part_cases: BTreeSet::new() };
    for m in members {
        let part = crlm_models::slide::index::member_path(dir, m);
        match ing.db.latest_file(&part.to_string_lossy())? {
            Some(crlm_state::FileRow { id, sha256: Some(sha), status, case_id }) if status == "accepted" => {
                shas.push(sha);
                set.part_ids.push(id);
                set.part_cases.extend(case_id);
            }
            _ => return Ok(None),
        }
    }
    set.content = crlm_models::slide::index::slide_set_sha256(index_sha, &shas);
    Ok(Some(set))
}

/// Re-evaluate every waiting case; close those that are complete, partial, ineligible or in conflict.
pub(super) fn evaluate(ing: &mut Ingestor, ready_folders: &HashSet<PathBuf>) -> Result<Vec<CaseChange>, IngestError> {
    let open = ing.db.open_cases()?;
    let mut changes = Vec::new();
    for case in open {
        if let Some(change) = evaluate_case(ing, &case, ready_folders)? {
            changes.push(change);
        }
    }
    Ok(changes)
}

fn evaluate_case(
    ing: &mut Ingestor,
    case: &OpenCase,
    ready_folders: &HashSet<PathBuf>,
) -> Result<Option<CaseChange>, IngestError> {
    let now = now_ms();
    let cfg = ing.cfg.clone();
    // Files of the case.
    let files = ing.db.accepted_file_details(case.id)?;
    let mut ct_images: Vec<(String, DicomHeader)> = Vec::new();
    let mut dicom_patients = BTreeSet::new();
    let mut roi_files = 0usize;
    let mut slides = 0usize;
    let mut dicom_slides = BTreeSet::new();
    let mut ct_study_date = None;
    for (path, kind, details) in &files {
        match kind.as_str() {
            "dicom" => {
                let Ok(DicomDetails { header: h, role }) = serde_json::from_str::<DicomDetails>(details) else {
                    continue;
                };
                if let Some(p) = &h.patient_id {
                    dicom_patients.insert(p.clone());
                }
                match role {
                    Some(DicomRole::CtImage) => {
                        let folder =
                            Path::new(path).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                        ct_images.push((series::series_key(&h, &folder), h));
                    }
                    Some(DicomRole::RegionOfInterest) => roi_files += 1,
                    _ => {}
                }
            }
            "slide" => {
                // A DICOM slide is a series of files (levels, label): one slide per series that
                // has a level (a label alone is no slide).
                match serde_json::from_str::<SlideHeader>(details).ok() {
                    Some(SlideHeader { dicom_series: Some(series), levels, .. }) => {
                        if !levels.is_empty() {
                            dicom_slides.insert(series);
                        }
                    }
                    _ => slides += 1,
                }
            }
            _ => {}
        }
    }
    let slides = slides + dicom_slides.len();
    let choice: SeriesChoice = series::choose_series(&ct_images, &cfg.series);
    if let Some(chosen) = &choice.chosen {
        ct_study_date = ct_images
            .iter()
            .find(|(k, _)| *k == chosen.series)
            .and_then(|(_, h)| h.acquisition_date.clone().or_else(|| h.study_date.clone()))
            .and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y%m%d").ok());
    }
    // Clinical record(s) of the case.
    let records = if case.key.starts_with("folder:") {
        ing.db.clinical_records_of_case(case.id)?
    } else {
        ing.db.root_clinical_records(case.patient_id.as_deref().unwrap_or_default())?
    };
    let folder_name = case.key.strip_prefix("folder:").unwrap_or("");
    let parsed: Vec<(ClinicalRecord, String)> = records
        .into_iter()
        .filter_map(|(r, h)| serde_json::from_str::<ClinicalRecordOwned>(&r).ok().map(|r| (r.into_record(), h)))
        .collect();
    // Several rows: keep the one naming this case's patient or folder.
    let mut matching: Vec<&(ClinicalRecord, String)> = parsed
        .iter()
        .filter(|(r, _)| {
            parsed.len() == 1
                || dicom_patients.contains(r.patient_id())
                || (!folder_name.is_empty() && r.case_id() == Some(folder_name))
        })
        .collect();
    matching.dedup_by(|a, b| a.1 == b.1);
    let mut conflicts = Vec::new();
    if dicom_patients.len() > 1 {
        conflicts.push(format!("CT images of {} different patients in one case", dicom_patients.len()));
    }
    if matching.len() > 1 {
        conflicts.push(format!(
            "{} different clinical records match this case; keep one clinical file per case",
            matching.len()
        ));
    }
    let clinical = matching.first().map(|(r, h)| (r.clone(), h.clone()));
    if let Some((r, _)) = &clinical
        && !dicom_patients.is_empty()
        && !dicom_patients.contains(r.patient_id())
    {
        conflicts.push("the clinical file names a different patient than the CT (patient IDs differ)".into());
    }
    let patient_id = clinical
        .as_ref()
        .map(|(r, _)| r.patient_id().to_string())
        .or_else(|| dicom_patients.iter().next().cloned())
        .or(case.patient_id.clone());
    let pseudonym =
        patient_id.as_deref().map(|p| ing.secret.patient_pseudonym(p)).unwrap_or_else(|| case.pseudonym.clone());

    let modalities = CaseModalities {
        ct: match &choice.chosen {
            Some(c) => CtHeld::Found { series_description: c.description.clone(), slices: c.slices, roi_files },
            None => CtHeld::Missing { reason: choice.reason.clone() },
        },
        slide: if slides > 0 { SlidesHeld::Found { count: slides } } else { SlidesHeld::Missing },
        clinical: match &clinical {
            Some((_, h)) => ClinicalHeld::Found { record_hash: h.clone() },
            None => ClinicalHeld::Missing,
        },
    };
    let present = |m: &str| match m {
        "ct" => modalities.has_ct(),
        "slide" => modalities.has_slide(),
        "clinical" => modalities.has_clinical(),
        _ => true,
    };
    let missing: Vec<&str> = cfg.cases.require.iter().map(String::as_str).filter(|m| !present(m)).collect();
    let ready = Path::new(folder_name).components().next().is_some() && ready_folders.contains(Path::new(folder_name));
    let quiet_ms = (cfg.share.quiet_seconds * 1000.0) as i64;
    let settled = ready || now - case.last_file_ms >= quiet_ms;
    let timed_out = now - case.created_ms >= (cfg.cases.partial_after_seconds * 1000.0) as i64;
    let series_json = serde_json::to_string(&choice).unwrap_or_default();
    let clinical_hash = clinical.as_ref().map(|(_, h)| h.clone());

    let (state, mut reasons) = if !conflicts.is_empty() && settled {
        (CaseState::Quarantined, conflicts)
    } else if !settled || (!missing.is_empty() && !ready && !timed_out) {
        // Still waiting: keep the live view current.
        ing.db.update_waiting_case(case.id, &modalities, &series_json, &pseudonym, patient_id.as_deref())?;
        return Ok(None);
    } else {
        let mut reasons: Vec<String> = missing
            .iter()
            .map(|m| {
                let why = if ready { "the folder is marked READY" } else { "the waiting time ran out" };
                match *m {
                    "ct" => format!("no usable CT series ({}) and {why}", choice.reason),
                    other => format!("{other} missing and {why}"),
                }
            })
            .collect();
        let ineligible = match &clinical {
            Some((r, _)) => eligibility::check(r, ct_study_date, &cfg.eligibility),
            None if cfg.eligibility.enabled => {
                vec!["no clinical file: eligibility (age, stage, resection) cannot be checked".into()]
            }
            None => vec![],
        };
        if !ineligible.is_empty() {
            reasons.extend(ineligible);
            (CaseState::Ineligible, reasons)
        } else if missing.is_empty() {
            (CaseState::Complete, reasons)
        } else {
            (CaseState::Partial, reasons)
        }
    };
    // Keep reasons recorded earlier (late files), then write the closing state atomically.
    let mut all = ing.db.case_reasons(case.id)?;
    all.append(&mut reasons);
    // Files of this folder whose content another case brought first (a folder whose every file
    // is such a copy is a re-export and never becomes a case).
    if !folder_name.is_empty() {
        for (kind, count, other) in ing.db.copies_of_other_cases(folder_name, case.id)? {
            all.push(format!(
                "{CROSS_CASE_REASON} {count} {kind} file(s) identical to case {other}'s were not used (check which case they belong to)"
            ));
        }
    }
    // A case-level quarantine record first (deterministic name: a rerun rewrites it), then the
    // closing state and its quarantine row in one transaction.
    let quarantine_row = if state == CaseState::Ineligible || state == CaseState::Quarantined {
        let id = format!("case-{}-{state}", case.id);
        let (check, action) = if state == CaseState::Ineligible {
            (
                "case.eligibility",
                "No prediction will be made. If the clinical data are wrong, correct the clinical file and export the case again as a new folder.",
            )
        } else {
            (
                "case.consistency",
                "Check that the folder holds one patient's CT, slide and clinical file; export it again as a new folder.",
            )
        };
        let rec = super::quarantine::QuarantineRecord {
            version: super::quarantine::RECORD_VERSION,
            id,
            created_at: crlm_state::rfc3339(now),
            file: None,
            case: Some(pseudonym.clone()),
            kind: "case".into(),
            check: check.into(),
            reason: all.join("; "),
            action: action.into(),
            sha256: None,
            moved_to: None,
        };
        let record_file = ing
            .quarantine
            .record(&ing.share_root, rec)
            .map_err(|e| IngestError::Quarantine { path: ing.quarantine.dir.display().to_string(), source: e })?;
        Some((check, action, record_file))
    } else {
        None
    };
    let tx = ing.db.begin()?;
    if let Some((check, action, record_file)) = &quarantine_row {
        let (reason, record_file) = (all.join("; "), record_file.display().to_string());
        let q = crlm_state::Quarantined { check, reason: &reason, action, record_file: &record_file };
        tx.insert_case_quarantine(case.id, &q, now)?;
    }
    let closing = Closing {
        state,
        modalities: &modalities,
        reasons: &all,
        series_choice: &series_json,
        clinical_hash: clinical_hash.as_deref(),
        pseudonym: &pseudonym,
        patient_id: patient_id.as_deref(),
    };
    tx.close_case(case.id, &closing, now)?;
    tx.commit()?;
    tracing::info!(stage = "case", case = %pseudonym, state = %state, "case closed");
    Ok(Some(CaseChange { case: pseudonym, state, reasons: all }))
}

/// The stored JSON form of a clinical record (as serialised by `ClinicalRecord`).
#[derive(serde::Deserialize)]
pub struct ClinicalRecordOwned {
    schema_version: u32,
    values: std::collections::BTreeMap<String, serde_json::Value>,
}

impl ClinicalRecordOwned {
    pub fn into_record(self) -> ClinicalRecord {
        use crlm_models::clinical::{ClinicalValue, UnknownMarker};
        let values = self
            .values
            .into_iter()
            .map(|(k, v)| {
                let cv = match v {
                    serde_json::Value::Bool(b) => ClinicalValue::Bool(b),
                    serde_json::Value::Number(n) => ClinicalValue::Number(n.as_f64().unwrap_or(f64::NAN)),
                    serde_json::Value::String(s) if s == "unknown" => ClinicalValue::Unknown(UnknownMarker::Unknown),
                    serde_json::Value::String(s) => ClinicalValue::Text(s),
                    _ => ClinicalValue::Unknown(UnknownMarker::Unknown),
                };
                (k, cv)
            })
            .collect();
        ClinicalRecord { schema_version: self.schema_version, values }
    }
}

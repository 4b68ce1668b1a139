//! A case folder to the model's inputs: the files found (recognised as the service does), the CT
//! series chosen, eligibility, the region of interest, preprocessing and tile sampling.

use crate::doc::{ClinicalInput, CtInput, DocInputs, RoiBox};
use crate::*;
use crlm_config::Config;
use crlm_ingest::eligibility;
use crlm_ingest::recognise::{DicomRole, Outcome, Recognised, recognise};
use crlm_ingest::series::{SeriesChoice, SeriesSummary, choose_series, plane_count, series_key};
use crlm_ingest::share::{self, ShareEntry};
use crlm_models::case::Eligibility;
use crlm_models::clinical::ClinicalRecord;
use crlm_models::ct::preprocess::preprocess;
use crlm_models::ct::roi::{RegionOfInterest, read_roi};
use crlm_models::ct::volume::load_series_with_headers;
use crlm_models::dicom::DicomHeader;
use crlm_models::encode::encode;
use crlm_models::inference::{CaseInputs, ModalityInput};
use crlm_models::package::ModelSpec;
use crlm_models::slide::read::SlideReader;
use crlm_models::slide::sample::{ModelTiles, sample_tiles};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The files of a case, sorted by role. Labels name files in messages: relative paths for
/// `crlm predict`, neutral names in the service (file names can carry identifiers).
#[derive(Debug, Default)]
pub struct CaseFiles {
    /// The folder the files' relative paths start from (the share in the service, the case
    /// folder for `crlm predict`): series without a UID are keyed by their folder below it, as
    /// ingest keys them.
    pub root: PathBuf,
    /// The CT series ingest chose when the case closed (what `crlm cases` shows). When set, it is
    /// the series used, whatever changed since: the choice is made once.
    pub chosen_series: Option<SeriesChoice>,
    pub ct_images: Vec<(PathBuf, DicomHeader)>,
    /// DICOM SEG and RTSTRUCT files: where the CT crop is centred when one fits the series.
    pub roi_files: Vec<(PathBuf, DicomHeader)>,
    /// Slide path and its label.
    pub slides: Vec<(PathBuf, String)>,
    pub clinical: Vec<ClinicalRecord>,
    pub warnings: Vec<String>,
}

/// The CT series a case used: what the ledger records about it.
#[derive(Debug, Clone)]
pub struct CtUsed {
    /// SeriesInstanceUID (or the stand-in key of a series without one).
    pub series: String,
    pub choice: String,
    pub rejected_series: usize,
    /// (SOPInstanceUID, SHA-256 of the slice's decoded Hounsfield units as little-endian f32),
    /// in slice order: the exact numbers the model read.
    pub images: Vec<(String, String)>,
    /// The header of the first slice (study UIDs and the identity an on-site SR repeats).
    pub first_header: DicomHeader,
    /// The segmentation the crop was centred on, and its SOPInstanceUID; `None`: the body box.
    pub roi: Option<(RegionOfInterest, String)>,
}

/// A slide a case used; as the `crlm predict --json` document reports it, without its path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlideUsed {
    #[serde(skip)]
    pub path: PathBuf,
    /// Its path relative to the case folder.
    #[serde(rename = "file")]
    pub label: String,
    pub tissue_tiles: usize,
    pub tiles_used: usize,
    pub level: usize,
}

pub(crate) fn entry_rel(e: &ShareEntry) -> &Path {
    match e {
        ShareEntry::File { rel, .. } | ShareEntry::Symlink { rel, .. } | ShareEntry::Special { rel } => rel,
    }
}

pub(crate) fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Recognise every file under `dir` by content, walked and opened exactly as the service walks
/// its share (beneath the folder, markers and temporary names skipped, links refused).
pub fn gather(dir: &Path, cfg: &Config) -> Result<CaseFiles, PredictError> {
    let mut out = CaseFiles { root: dir.to_path_buf(), ..CaseFiles::default() };
    let root = share::open_share(dir)?;
    let mut entries = share::walk(&root, &HashSet::new())?.entries;
    entries.sort_by(|a, b| entry_rel(a).cmp(entry_rel(b)));
    let mut dicom_series = HashSet::new();
    for entry in entries {
        let rel_path = match entry {
            ShareEntry::File { rel, nlink: 1, .. } => rel,
            ShareEntry::File { rel, .. } | ShareEntry::Symlink { rel, .. } | ShareEntry::Special { rel } => {
                out.warnings.push(format!("{}: not used (links and special files are refused)", rel.display()));
                continue;
            }
        };
        let p = dir.join(&rel_path);
        let file = share::open_beneath(&root, &rel_path)?;
        match recognise(&file, dir, &rel_path, &cfg.limits) {
            Outcome::Usable(Recognised::Dicom { header, role: DicomRole::CtImage }) => out.ct_images.push((p, *header)),
            Outcome::Usable(Recognised::Dicom { header, role: DicomRole::RegionOfInterest }) => {
                out.roi_files.push((p, *header))
            }
            Outcome::Usable(Recognised::Dicom { .. }) => {}
            // A DICOM slide's files (levels, label) are one slide: the first file of each series
            // stands for it, and the reader gathers the rest from beside it.
            Outcome::Usable(Recognised::Slide(h)) => {
                if let Some(series) = &h.dicom_series
                    && (h.levels.is_empty() || !dicom_series.insert(series.clone()))
                {
                    continue;
                }
                out.slides.push((p, rel_path.display().to_string()))
            }
            Outcome::Usable(Recognised::Clinical { records, .. }) => out.clinical.extend(records),
            // A multi-file slide's part: read through its index.
            Outcome::Usable(Recognised::SlidePart { .. }) => {}
            Outcome::NotYet(pr) | Outcome::Bad(pr) => {
                out.warnings.push(format!("{}: not used ({}: {})", rel(dir, &p), pr.check, pr.reason))
            }
        }
    }
    Ok(out)
}

/// The region of interest for the chosen series: the first SEG or RTSTRUCT (in path order) in
/// the series' frame of reference that reads and holds the package's labels. Segmentations that
/// do not fit, or cannot be read, are said in the warnings; the body box is used without one.
pub(crate) fn region_of_interest(
    roi_files: &[(PathBuf, DicomHeader)],
    ct_headers: &[DicomHeader],
    vol: &crlm_models::ct::CtVolume,
    labels: &[String],
    limits: &crlm_models::limits::Limits,
    warnings: &mut Vec<String>,
) -> Option<(RegionOfInterest, String)> {
    let ct = ct_headers.first()?;
    for (path, h) in roi_files {
        let same_frame = match (&h.frame_of_reference_uid, &ct.frame_of_reference_uid) {
            (Some(a), Some(b)) => a == b,
            // Without a frame of reference on one side, the same study is the best evidence.
            _ => h.study_instance_uid.is_some() && h.study_instance_uid == ct.study_instance_uid,
        };
        if !same_frame {
            warnings.push(format!(
                "{}: a segmentation of another frame of reference than the CT series; not used",
                path.display()
            ));
            continue;
        }
        match read_roi(path, h, vol, labels, limits) {
            Ok(roi) => {
                if roi.clipped {
                    warnings.push(format!("{}: the segmentation reaches outside the CT volume", path.display()));
                }
                return Some((roi, h.sop_instance_uid.clone().unwrap_or_default()));
            }
            Err(e) => warnings.push(format!("CT: {e}; the body box is used")),
        }
    }
    None
}

/// A case folder turned into model inputs, with what the document reports about them.
pub struct PreparedCase {
    pub inputs: CaseInputs,
    /// The file of each entry of `inputs.slides`, in the same order.
    pub slide_files: Vec<PathBuf>,
    pub ct_used: Option<CtUsed>,
    pub slides_used: Vec<SlideUsed>,
    pub clinical_used: Option<ClinicalRecord>,
    /// What the document reports of the inputs.
    pub inputs_doc: DocInputs,
    pub eligibility: Eligibility,
    /// Set when the case must not be predicted (not eligible).
    pub refusal: Option<String>,
    pub warnings: Vec<String>,
    pub timings_ms: Timings,
}

/// Recognise, choose, load and preprocess a case folder as the package asks.
pub fn prepare_case(dir: &Path, spec: &ModelSpec, cfg: &Config) -> Result<PreparedCase, PredictError> {
    let t = Instant::now();
    let files = gather(dir, cfg)?;
    let gather_ms = ms(t);
    let mut prepared = prepare_files(&files, spec, cfg)?;
    prepared.timings_ms.push_front("gather", gather_ms);
    Ok(prepared)
}

/// Preprocess a case's files as the package asks (the service gathers them from its database).
pub fn prepare_files(files: &CaseFiles, spec: &ModelSpec, cfg: &Config) -> Result<PreparedCase, PredictError> {
    let mut warnings = files.warnings.clone();
    let mut inputs_doc = DocInputs::default();
    let mut ct_used = None;

    // CT: the service's series choice, the volume, the model grid.
    let t = Instant::now();
    let keyed: Vec<(String, DicomHeader)> = files
        .ct_images
        .iter()
        .map(|(p, h)| {
            let rel = p.strip_prefix(&files.root).unwrap_or(p);
            (series_key(h, &rel.parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default()), h.clone())
        })
        .collect();
    let mut ct_date = None;
    let mut dicom_patient: Option<String> = None;
    let ct: ModalityInput<_> = if keyed.is_empty() {
        ModalityInput::Missing
    } else {
        let choice = match &files.chosen_series {
            Some(closed) => closed_choice(closed, &keyed),
            None => choose_series(&keyed, &cfg.series),
        };
        match &choice.chosen {
            None => ModalityInput::Refused(format!("no usable CT series: {}", choice.reason)),
            Some(chosen) => {
                let (paths, headers): (Vec<PathBuf>, Vec<DicomHeader>) = files
                    .ct_images
                    .iter()
                    .zip(&keyed)
                    .filter(|(_, (k, _))| *k == chosen.series)
                    .map(|((p, h), _)| (p.clone(), h.clone()))
                    .unzip();
                dicom_patient = headers.first().and_then(|h| h.patient_id.clone());
                ct_date = headers
                    .first()
                    .and_then(|h| h.acquisition_date.clone().or_else(|| h.study_date.clone()))
                    .and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y%m%d").ok());
                match load_series_with_headers(&paths, &headers, &cfg.limits) {
                    Err(e) => ModalityInput::Refused(format!("CT series unusable: {e}")),
                    Ok(vol) => {
                        let plane = vol.columns * vol.rows;
                        // Each slice's hash is of its HU as little-endian f32, whatever the
                        // volume holds them as, so that it does not change with the loader.
                        let images = vol
                            .sop_instance_uids
                            .iter()
                            .enumerate()
                            .map(|(z, uid)| {
                                let slice = vol.hu.range_f32(z * plane, plane);
                                let bytes: Vec<u8> = slice.iter().flat_map(|v| v.to_le_bytes()).collect();
                                (uid.clone(), crlm_models::sha256_hex(&bytes))
                            })
                            .collect();
                        let roi = region_of_interest(
                            &files.roi_files,
                            &headers,
                            &vol,
                            &spec.ct.roi_labels,
                            &cfg.limits,
                            &mut warnings,
                        );
                        let tensor = preprocess(&vol, &spec.ct, roi.as_ref().map(|(r, _)| (r.bbox, r.source)));
                        ct_used = Some(CtUsed {
                            series: chosen.series.clone(),
                            choice: choice.reason.clone(),
                            rejected_series: choice.rejected.len(),
                            images,
                            first_header: headers.first().cloned().unwrap_or_default(),
                            roi: roi.clone(),
                        });
                        warnings.extend(vol.report.warnings.iter().map(|w| format!("CT: {w}")));
                        inputs_doc.ct = Some(CtInput {
                            series_instance_uid: chosen.series.clone(),
                            series_description: chosen.description.clone(),
                            slices: vol.slices,
                            choice: choice.reason.clone(),
                            rejected_series: choice.rejected.len(),
                            roi: tensor.roi,
                            roi_labels: roi.as_ref().map(|(r, _)| r.labels.clone()).unwrap_or_default(),
                            roi_box: roi.as_ref().map(|(r, _)| RoiBox { bbox: r.bbox, clipped: r.clipped }),
                            roi_centre_index: tensor.centre_index,
                            spacing_mm: vol.spacing,
                            model_shape: tensor.shape,
                        });
                        ModalityInput::Used(tensor)
                    }
                }
            }
        }
    };
    let ct_ms = ms(t);

    // Clinical: one record for the patient; eligibility is checked, never assumed.
    let t = Instant::now();
    let mut eligibility = Eligibility::default();
    let record = match files.clinical.len() {
        0 => None,
        1 => files.clinical.first(),
        n => match &dicom_patient {
            Some(pid) => files.clinical.iter().find(|r| r.patient_id() == pid).or_else(|| {
                warnings.push(format!("{n} clinical records and none for the CT's patient"));
                None
            }),
            None => {
                warnings.push(format!("{n} clinical records and no CT to tell which is this case's"));
                None
            }
        },
    };
    if let (Some(r), Some(pid)) = (record, &dicom_patient)
        && r.patient_id() != pid
    {
        return Err(PredictError::Case(
            "the clinical record and the CT belong to different patients (PatientID differs); fix the case folder"
                .into(),
        ));
    }
    let clinical = match record {
        None if files.clinical.is_empty() => ModalityInput::Missing,
        None => ModalityInput::Refused("no clinical record matches this case's patient".into()),
        Some(r) => {
            let reasons = eligibility::check(r, ct_date, &cfg.eligibility);
            eligibility = Eligibility::checked(cfg.eligibility.enabled, reasons);
            let e = encode(r, &spec.clinical);
            inputs_doc.clinical =
                Some(ClinicalInput { record_sha256: r.hash(), missing_fields: e.missing_fields.clone() });
            ModalityInput::Used(e)
        }
    };
    let clinical_ms = ms(t);
    let refusal = eligibility.refusal().map(|reasons| format!("not eligible for the study: {reasons}"));

    // Slides: the package's tiles, its tile budget shared over the case's slides.
    let t = Instant::now();
    let (mut slide_files, mut slides): (Vec<PathBuf>, Vec<ModelTiles>) = (Vec::new(), Vec::new());
    let mut slides_used = Vec::new();
    let mut slide_problems = Vec::new();
    let per_slide = spec.slide.max_tiles.per_slide(files.slides.len());
    for (p, label) in &files.slides {
        let r = SlideReader::open(p, &cfg.limits).and_then(|r| sample_tiles(Arc::new(r), &spec.slide, per_slide));
        match r {
            Ok(m) if m.tiles.is_empty() => slide_problems.push(format!("{label}: no tissue tiles")),
            Ok(m) => {
                slides_used.push(SlideUsed {
                    path: p.clone(),
                    label: label.clone(),
                    tissue_tiles: m.tissue_tiles,
                    tiles_used: m.tiles.len(),
                    level: m.level,
                });
                slide_files.push(p.clone());
                slides.push(m);
            }
            // The reader's message names the path: name the label instead.
            Err(e) => {
                slide_problems.push(format!("{label}: {}", e.to_string().replace(&p.display().to_string(), label)))
            }
        }
    }
    let slide_input = if files.slides.is_empty() {
        ModalityInput::Missing
    } else if slides.is_empty() {
        ModalityInput::Refused(slide_problems.join("; "))
    } else {
        warnings.extend(slide_problems.iter().map(|w| format!("slide not used: {w}")));
        ModalityInput::Used(slides)
    };
    inputs_doc.slides = slides_used.clone();
    let slide_ms = ms(t);

    Ok(PreparedCase {
        inputs: CaseInputs { ct, slides: slide_input, clinical },
        slide_files,
        ct_used,
        slides_used,
        clinical_used: record.cloned(),
        inputs_doc,
        eligibility,
        refusal,
        warnings,
        timings_ms: Timings::from([("ct", ct_ms), ("clinical", clinical_ms), ("slide", slide_ms)]),
    })
}

/// The choice made when the case closed, against the images there are now: the same series, or
/// none (with the reason) when its images are gone. Never a different series.
fn closed_choice(closed: &SeriesChoice, keyed: &[(String, DicomHeader)]) -> SeriesChoice {
    let Some(chosen) = &closed.chosen else { return closed.clone() };
    let images: Vec<&DicomHeader> = keyed.iter().filter(|(k, _)| *k == chosen.series).map(|(_, h)| h).collect();
    if images.is_empty() {
        return SeriesChoice {
            chosen: None,
            reason: "the CT series chosen when the case closed is gone (its files changed or were removed)".into(),
            rejected: closed.rejected.clone(),
        };
    }
    let planes = plane_count(&images);
    let mut choice = closed.clone();
    if planes != chosen.slices {
        choice.reason = format!(
            "{} (chosen when the case closed with {} slices; {planes} are unchanged)",
            closed.reason, chosen.slices
        );
    }
    choice.chosen = Some(SeriesSummary { slices: planes, ..chosen.clone() });
    choice
}

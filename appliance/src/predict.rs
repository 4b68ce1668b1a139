//! `crlm predict`: one case folder through the service's own recognition, series selection,
//! eligibility, preprocessing and the model, without the service. Each modality ends `used`,
//! `missing` or `refused` with a reason; the package decides whether the subset present may be
//! predicted from.

use crate::config::Config;
use crate::ingest::eligibility;
use crate::ingest::recognise::{DicomRole, Outcome, Recognised, recognise};
use crate::ingest::series::{choose_series, series_key};
use crate::ingest::share::{self, ShareEntry};
use crlm_models::backend::{BackendKind, OnnxOptions, RawInput};
use crlm_models::clinical::ClinicalRecord;
use crlm_models::ct::preprocess::preprocess;
use crlm_models::ct::roi::{RegionOfInterest, read_roi};
use crlm_models::ct::volume::load_series_with_headers;
use crlm_models::dicom::DicomHeader;
use crlm_models::encode::encode;
use crlm_models::inference::{CaseInputs, ModalityInput, Model, ModelError, ModelOutput};
use crlm_models::package::{ModelPackage, ModelSpec, PackageSource, TrustStore};
use crlm_models::slide::read::SlideReader;
use crlm_models::slide::sample::{ModelTiles, sample_tiles};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What every output of a demo package carries.
pub const DEMO_NOTICE: &str = "DEMO - NOT FOR CLINICAL USE";
/// Version of the `crlm predict --json` document.
pub const PREDICT_FORMAT: u32 = 1;
/// How many of the highest-attention tiles are reported.
pub const TOP_TILES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Case(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Load the configured package (or `override_path`), verify it, and build the network on the
/// configured backend.
pub fn load_model(cfg: &Config, override_path: Option<&Path>) -> Result<Model, ModelError> {
    load_model_on(cfg, override_path, cfg.model.backend)
}

/// As [`load_model`], on the given backend.
pub fn load_model_on(cfg: &Config, override_path: Option<&Path>, backend: BackendKind) -> Result<Model, ModelError> {
    let trust = TrustStore::from_files(&cfg.model.trusted_keys)?;
    let package = ModelPackage::load(&package_source(cfg, override_path), &trust)?;
    let model = Model::with_backend(package, backend, &onnx_options(cfg))?;
    let info = model.backend_info();
    tracing::info!(
        backend = %info.name, provider = %info.provider, precision = %info.precision,
        onnxruntime = info.runtime.as_deref().unwrap_or("-"), "model backend"
    );
    Ok(model)
}

/// `[onnx]` with the engine cache defaulting to `<state.path>/trt-engines`.
pub fn onnx_options(cfg: &Config) -> OnnxOptions {
    let mut o = cfg.onnx.clone();
    if o.engine_cache.as_os_str().is_empty() {
        o.engine_cache = cfg.state.path.join("trt-engines");
    }
    o
}

/// The model block of every prediction document and ledger record: the package and what ran it.
pub fn model_json(model: &Model) -> Value {
    let p = &model.package;
    let b = model.backend_info();
    let mut v = json!({
        "name": p.spec.name,
        "version": p.spec.version,
        "sha256": p.sha256,
        "demo": p.spec.demo,
        "signer_key_id": p.signer_key_id,
        "backend": b.name,
        "device": b.provider,
        "precision": b.precision,
    });
    if let Some(r) = b.runtime {
        v["onnxruntime"] = json!(r);
    }
    v
}

/// Which package: `override_path`, else `model.path`, else the built-in demo.
pub fn package_source(cfg: &Config, override_path: Option<&Path>) -> PackageSource {
    match override_path {
        Some(p) => PackageSource::from_path(p),
        None if cfg.model.path.as_os_str().is_empty() => PackageSource::BuiltInDemo,
        None => PackageSource::from_path(&cfg.model.path),
    }
}

/// The files of a case, sorted by role. Labels name files in messages: relative paths for
/// `crlm predict`, neutral names in the service (file names can carry identifiers).
#[derive(Debug, Default)]
pub struct CaseFiles {
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

/// A slide a case used.
#[derive(Debug, Clone)]
pub struct SlideUsed {
    pub path: PathBuf,
    pub label: String,
    pub tissue_tiles: usize,
    pub tiles_used: usize,
    pub level: usize,
}

fn entry_rel(e: &ShareEntry) -> &Path {
    match e {
        ShareEntry::File { rel, .. } | ShareEntry::Symlink { rel, .. } | ShareEntry::Special { rel } => rel,
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Recognise every file under `dir` by content, walked and opened exactly as the service walks
/// its share (beneath the folder, markers and temporary names skipped, links refused).
pub fn gather(dir: &Path, cfg: &Config) -> Result<CaseFiles, PredictError> {
    let mut out = CaseFiles::default();
    let root = share::open_share(dir)?;
    let mut entries = share::walk(&root, &HashSet::new())?.entries;
    entries.sort_by(|a, b| entry_rel(a).cmp(entry_rel(b)));
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
        match recognise(&file, &cfg.limits) {
            Outcome::Usable(Recognised::Dicom { header, role: DicomRole::CtImage }) => out.ct_images.push((p, *header)),
            Outcome::Usable(Recognised::Dicom { header, role: DicomRole::RegionOfInterest }) => {
                out.roi_files.push((p, *header))
            }
            Outcome::Usable(Recognised::Dicom { .. }) => {}
            Outcome::Usable(Recognised::Slide(_)) => out.slides.push((p, rel_path.display().to_string())),
            Outcome::Usable(Recognised::Clinical { records, .. }) => out.clinical.extend(records),
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
fn region_of_interest(
    roi_files: &[(PathBuf, DicomHeader)],
    ct_headers: &[DicomHeader],
    vol: &crlm_models::ct::CtVolume,
    labels: &[String],
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
        match read_roi(path, h, vol, labels) {
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

/// The result of `predict_case`: the JSON document, and the model's output when it predicted.
#[derive(Default)]
pub struct CaseResult {
    pub json: Value,
    pub output: Option<ModelOutput>,
    /// Tiles per slide (for the heatmap), in the order of the attention.
    pub slides: Vec<(PathBuf, ModelTiles)>,
    pub ct_used: Option<CtUsed>,
    pub slides_used: Vec<SlideUsed>,
    pub clinical_used: Option<ClinicalRecord>,
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

/// A case folder turned into model inputs, with what the document reports about them.
pub struct PreparedCase {
    pub inputs: CaseInputs,
    /// The file of each entry of `inputs.slides`, in the same order.
    pub slide_files: Vec<PathBuf>,
    pub ct_used: Option<CtUsed>,
    pub slides_used: Vec<SlideUsed>,
    pub clinical_used: Option<ClinicalRecord>,
    pub inputs_json: serde_json::Map<String, Value>,
    pub eligibility: Value,
    /// Set when the case must not be predicted (not eligible).
    pub refusal: Option<String>,
    pub warnings: Vec<String>,
    pub timings_ms: Vec<(&'static str, f64)>,
}

/// Recognise, choose, load and preprocess a case folder as the package asks.
pub fn prepare_case(dir: &Path, spec: &ModelSpec, cfg: &Config) -> Result<PreparedCase, PredictError> {
    let t = Instant::now();
    let files = gather(dir, cfg)?;
    let gather_ms = ms(t);
    let mut prepared = prepare_files(&files, spec, cfg)?;
    prepared.timings_ms.insert(0, ("gather", gather_ms));
    Ok(prepared)
}

/// Preprocess a case's files as the package asks (the service gathers them from its database).
pub fn prepare_files(files: &CaseFiles, spec: &ModelSpec, cfg: &Config) -> Result<PreparedCase, PredictError> {
    let threads = match cfg.model.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut warnings = files.warnings.clone();
    let mut inputs_json = serde_json::Map::new();
    let mut ct_used = None;

    // CT: the service's series choice, the volume, the model grid.
    let t = Instant::now();
    let keyed: Vec<(String, DicomHeader)> = files
        .ct_images
        .iter()
        .map(|(p, h)| (series_key(h, &p.parent().map(|d| d.display().to_string()).unwrap_or_default()), h.clone()))
        .collect();
    let mut ct_date = None;
    let mut dicom_patient: Option<String> = None;
    let ct: ModalityInput<_> = if keyed.is_empty() {
        ModalityInput::Missing
    } else {
        let choice = choose_series(&keyed, &cfg.series);
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
                        let images = vol
                            .sop_instance_uids
                            .iter()
                            .zip(vol.hu.chunks(plane.max(1)))
                            .map(|(uid, slice)| {
                                let bytes: Vec<u8> = slice.iter().flat_map(|v| v.to_le_bytes()).collect();
                                (uid.clone(), crlm_models::sha256_hex(&bytes))
                            })
                            .collect();
                        let roi =
                            region_of_interest(&files.roi_files, &headers, &vol, &spec.ct.roi_labels, &mut warnings);
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
                        inputs_json.insert(
                            "ct".into(),
                            json!({
                                "series_instance_uid": chosen.series,
                                "series_description": chosen.description,
                                "slices": vol.slices,
                                "choice": choice.reason,
                                "rejected_series": choice.rejected.len(),
                                "roi": tensor.roi,
                                "roi_labels": roi.as_ref().map(|(r, _)| r.labels.clone()).unwrap_or_default(),
                                "roi_box": roi.as_ref().map(|(r, _)| json!({"min": r.bbox.min, "max": r.bbox.max, "clipped": r.clipped})),
                                "roi_centre_index": tensor.centre_index,
                                "spacing_mm": vol.spacing,
                                "model_shape": tensor.shape,
                            }),
                        );
                        ModalityInput::Used(tensor)
                    }
                }
            }
        }
    };
    let ct_ms = ms(t);

    // Clinical: one record for the patient; eligibility is checked, never assumed.
    let t = Instant::now();
    let mut eligibility_json = json!({"checked": false});
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
            eligibility_json =
                json!({"checked": cfg.eligibility.enabled, "eligible": reasons.is_empty(), "reasons": reasons});
            let e = encode(r, &spec.clinical);
            inputs_json
                .insert("clinical".into(), json!({"record_sha256": r.hash(), "missing_fields": e.missing_fields}));
            ModalityInput::Used(e)
        }
    };
    let clinical_ms = ms(t);
    let refusal = (eligibility_json["eligible"] == json!(false)).then(|| {
        let reasons: Vec<String> = serde_json::from_value(eligibility_json["reasons"].clone()).unwrap_or_default();
        format!("not eligible for the study: {}", reasons.join("; "))
    });

    // Slides: the package's tiles, its tile budget shared over the case's slides.
    let t = Instant::now();
    let (mut slide_files, mut slides): (Vec<PathBuf>, Vec<ModelTiles>) = (Vec::new(), Vec::new());
    let mut slides_used = Vec::new();
    let mut slide_json = Vec::new();
    let mut slide_problems = Vec::new();
    let per_slide = (spec.slide.max_tiles / files.slides.len().max(1)).max(1);
    for (p, label) in &files.slides {
        let r = SlideReader::open(p, &cfg.limits).and_then(|r| sample_tiles(&r, &spec.slide, per_slide, threads));
        match r {
            Ok(m) if m.tiles.is_empty() => slide_problems.push(format!("{label}: no tissue tiles")),
            Ok(m) => {
                slide_json.push(json!({
                    "file": label, "tissue_tiles": m.tissue_tiles, "tiles_used": m.tiles.len(), "level": m.level,
                }));
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
    if !slide_json.is_empty() {
        inputs_json.insert("slides".into(), Value::Array(slide_json));
    }
    let slide_ms = ms(t);

    Ok(PreparedCase {
        inputs: CaseInputs { ct, slides: slide_input, clinical },
        slide_files,
        ct_used,
        slides_used,
        clinical_used: record.cloned(),
        inputs_json,
        eligibility: eligibility_json,
        refusal,
        warnings,
        timings_ms: vec![("ct", ct_ms), ("clinical", clinical_ms), ("slide", slide_ms)],
    })
}

/// Run one case folder through preprocessing and the model. A refusal (not eligible, or a
/// modality subset the package forbids) is a document with `status: refused`, not an error.
pub fn predict_case(dir: &Path, model: &Model, cfg: &Config) -> Result<CaseResult, PredictError> {
    let t_all = Instant::now();
    let prepared = prepare_case(dir, &model.package.spec, cfg)?;
    predict_prepared(prepared, model, t_all)
}

/// The model on a prepared case (`t_all`: when the case's work began, for the timings).
pub fn predict_prepared(prepared: PreparedCase, model: &Model, t_all: Instant) -> Result<CaseResult, PredictError> {
    let PreparedCase {
        inputs,
        slide_files,
        ct_used,
        slides_used,
        clinical_used,
        inputs_json,
        eligibility: eligibility_json,
        refusal: not_eligible,
        warnings,
        mut timings_ms,
    } = prepared;
    let used = |mut r: CaseResult| {
        r.ct_used = ct_used.clone();
        r.slides_used = slides_used.clone();
        r.clinical_used = clinical_used.clone();
        r
    };
    if let Some(reason) = not_eligible {
        return Ok(used(refusal(model, reason, eligibility_json, warnings)));
    }
    let modalities = json!({
        "ct": status_json(inputs.ct.status()),
        "slide": status_json(inputs.slides.status()),
        "clinical": status_json(inputs.clinical.status()),
    });
    let t = Instant::now();
    let output = match model.predict(&inputs) {
        Ok(o) => o,
        Err(e @ ModelError::ModalitiesNotAllowed { .. }) => {
            let mut r = refusal(model, e.to_string(), eligibility_json, warnings);
            r.json["modalities"] = modalities;
            return Ok(used(r));
        }
        Err(e) => return Err(e.into()),
    };
    timings_ms.push(("model", ms(t)));
    let slides: Vec<(PathBuf, ModelTiles)> = match inputs.slides {
        ModalityInput::Used(tiles) => slide_files.into_iter().zip(tiles).collect(),
        _ => Vec::new(),
    };
    timings_ms.push(("total", ms(t_all)));

    let mut top: Vec<(usize, usize, f32)> = Vec::new();
    if let Some(att) = &output.tile_attention {
        let mut k = 0;
        for (s, (_, m)) in slides.iter().enumerate() {
            for i in 0..m.tiles.len() {
                top.push((s, i, att.get(k).copied().unwrap_or(0.0)));
                k += 1;
            }
        }
        top.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        top.truncate(TOP_TILES);
    }
    let top_tiles: Vec<Value> = top
        .iter()
        .map(|(s, i, a)| {
            let (_, m) = &slides[*s];
            let tile = m.tiles[*i];
            let label = slides_used.get(*s).map(|u| u.label.as_str()).unwrap_or("slide");
            json!({"slide": label, "x": tile.x, "y": tile.y, "size": tile.size, "attention": a})
        })
        .collect();
    let mut d = match model_header(model, "predicted") {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    d.insert("risk_2y".into(), json!(output.risk_2y));
    d.insert("risk_group".into(), json!(output.risk_group));
    d.insert("threshold".into(), json!(output.threshold));
    d.insert("risk_2y_uncalibrated".into(), json!(output.risk_2y_uncalibrated));
    d.insert("hazards".into(), json!(output.hazards));
    d.insert(
        "hazard_intervals_months".into(),
        json!((0..output.hazards.len()).map(|k| [k * 6, k * 6 + 6]).collect::<Vec<_>>()),
    );
    d.insert("modalities".into(), modalities);
    d.insert("eligibility".into(), eligibility_json);
    d.insert("inputs".into(), Value::Object(inputs_json));
    d.insert("top_tiles".into(), Value::Array(top_tiles));
    d.insert("slice_attention".into(), json!(output.slice_attention));
    d.insert(
        "timings_ms".into(),
        Value::Object(timings_ms.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()),
    );
    d.insert("warnings".into(), json!(warnings));
    Ok(used(CaseResult { json: Value::Object(d), output: Some(output), slides, ..CaseResult::default() }))
}

fn status_json((status, reason): (&str, Option<&str>)) -> Value {
    match reason {
        Some(r) => json!({"status": status, "reason": r}),
        None => json!({"status": status}),
    }
}

/// The fields every document starts with: format, status, model identity, the demo notice.
fn model_header(model: &Model, status: &str) -> Value {
    let p = &model.package;
    let mut m = model_json(model);
    m["trust"] = json!(p.trust);
    let mut v = json!({
        "format": PREDICT_FORMAT,
        "status": status,
        "model": m,
    });
    if p.spec.demo {
        v["notice"] = json!(DEMO_NOTICE);
    }
    v
}

fn refusal(model: &Model, reason: String, eligibility: Value, warnings: Vec<String>) -> CaseResult {
    let mut v = model_header(model, "refused");
    v["refusal"] = json!(reason);
    v["eligibility"] = eligibility;
    v["warnings"] = json!(warnings);
    CaseResult { json: v, ..CaseResult::default() }
}

/// A human summary of a result document.
pub fn summary(doc: &Value) -> String {
    let mut s = String::new();
    if let Some(n) = doc["notice"].as_str() {
        s.push_str(&format!("*** {n} ***\n"));
    }
    let m = &doc["model"];
    let sha: String = m["sha256"].as_str().unwrap_or("?").chars().take(12).collect();
    s.push_str(&format!(
        "model: {} {} (sha256 {sha}...), candle on CPU\n",
        m["name"].as_str().unwrap_or("?"),
        m["version"].as_str().unwrap_or("?"),
    ));
    if doc["status"] == "refused" {
        s.push_str(&format!("REFUSED: {}\n", doc["refusal"].as_str().unwrap_or("?")));
    } else {
        s.push_str(&format!(
            "2-year liver-metastasis risk: {:.3}  group: {} (threshold {})\n",
            doc["risk_2y"].as_f64().unwrap_or(f64::NAN),
            doc["risk_group"].as_str().unwrap_or("?"),
            doc["threshold"]
        ));
    }
    if let Some(mods) = doc["modalities"].as_object() {
        for (k, v) in mods {
            s.push_str(&format!(
                "  {k}: {}{}\n",
                v["status"].as_str().unwrap_or("?"),
                v["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
            ));
        }
    }
    if let Some(ws) = doc["warnings"].as_array() {
        for w in ws {
            s.push_str(&format!("warning: {}\n", w.as_str().unwrap_or("")));
        }
    }
    s
}

/// Render each slide's thumbnail with the tile attention laid over it (blue low, red high;
/// normalised to the case's highest attention), for the pathologist's QC. Never shown on the
/// study display. One PNG per slide: `out`, then `out-2.png`, ...
pub fn write_heatmaps(result: &CaseResult, out: &Path, cfg: &Config) -> Result<Vec<PathBuf>, PredictError> {
    let Some(att) = result.output.as_ref().and_then(|o| o.tile_attention.as_ref()) else {
        return Err(PredictError::Case("no slide was used, so there is no attention map".into()));
    };
    let max = att.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
    let mut written = Vec::new();
    let mut k = 0;
    for (i, (path, tiles)) in result.slides.iter().enumerate() {
        let reader = SlideReader::open(path, &cfg.limits).map_err(|e| PredictError::Case(e.to_string()))?;
        let levels = &reader.header.levels;
        let level = levels.iter().position(|l| l.width.max(l.height) <= 2048).unwrap_or(levels.len().saturating_sub(1));
        let l = &levels[level];
        let (w, h) = (l.width as u32, l.height as u32);
        let mut rgb = reader.read_region(level, 0, 0, w, h).map_err(|e| PredictError::Case(e.to_string()))?;
        for t in &tiles.tiles {
            let a = att.get(k).copied().unwrap_or(0.0) / max;
            k += 1;
            let colour = heat(a);
            let (x0, y0) = ((t.x as f64 / l.downsample) as u32, (t.y as f64 / l.downsample) as u32);
            let side = ((t.size as f64 / l.downsample).round() as u32).max(1);
            for y in y0..(y0 + side).min(h) {
                for x in x0..(x0 + side).min(w) {
                    let p = ((y * w + x) * 3) as usize;
                    let edge = x == x0 || y == y0;
                    for (c, v) in colour.iter().enumerate() {
                        let base = f32::from(rgb.pixels[p + c]);
                        let alpha = if edge { 0.8 } else { 0.45 };
                        rgb.pixels[p + c] = (base * (1.0 - alpha) + f32::from(*v) * alpha).round() as u8;
                    }
                }
            }
        }
        let png = crlm_drivers::display::png::encode_8bit(w, h, false, &rgb.pixels)
            .map_err(|e| PredictError::Case(format!("heatmap PNG: {e}")))?;
        let target = if i == 0 {
            out.to_path_buf()
        } else {
            let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("heatmap");
            out.with_file_name(format!("{stem}-{}.png", i + 1))
        };
        crate::fsutil::write_atomic(&target, &png, 0o644)?;
        written.push(target);
    }
    Ok(written)
}

/// Blue (0) through yellow to red (1).
fn heat(a: f32) -> [u8; 3] {
    let a = a.clamp(0.0, 1.0);
    if a < 0.5 {
        let t = a * 2.0;
        [(255.0 * t) as u8, (255.0 * t) as u8, (255.0 * (1.0 - t)) as u8]
    } else {
        let t = (a - 0.5) * 2.0;
        [255, (255.0 * (1.0 - t)) as u8, 0]
    }
}

/// Time the network on random-free, deterministic inputs: ms per CT volume (the CT branch and
/// the whole model) and tiles per second through the tile encoder. Medians of `repeat` runs.
pub fn bench(model: &Model, tiles: usize, repeat: usize) -> Result<String, PredictError> {
    let spec = &model.package.spec;
    let [x, y, z] = spec.ct.shape;
    let t = spec.slide.tile_px as usize;
    let backend = model.backend();
    let ct: Vec<f32> = (0..x * y * z).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let px: Vec<f32> = (0..tiles * 3 * t * t).map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0).collect();
    let clin = vec![0f32; spec.clinical.width()];
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time = |f: &mut dyn FnMut() -> Result<(), PredictError>| -> Result<f64, PredictError> {
        f()?; // warm-up (TensorRT builds its engines here)
        let mut v = Vec::new();
        for _ in 0..repeat.max(1) {
            let s = Instant::now();
            f()?;
            v.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(median(v))
    };
    let ct_only = RawInput { ct: Some(&ct), tiles: None, clinical: Some(&clin) };
    let ct_ms = time(&mut || backend.forward(&ct_only).map(|_| ()).map_err(PredictError::from))?;
    let tile_ms = time(&mut || backend.embed_tiles(&px, tiles).map(|_| ()).map_err(PredictError::from))?;
    let all = RawInput { ct: Some(&ct), tiles: Some((&px, tiles)), clinical: Some(&clin) };
    let all_ms = time(&mut || backend.forward(&all).map(|_| ()).map_err(PredictError::from))?;
    let info = backend.info();
    let threads = match info.name.as_str() {
        "candle" => format!("{} threads", candle_core::utils::get_num_threads()),
        _ => "threads from [onnx] threads".into(),
    };
    Ok(format!(
        "{} ({}, {}{}), {threads}, median of {repeat}\n  CT volume {:?} (+ clinical, fusion): {ct_ms:.1} ms\n  tile encoder: {tiles} tiles of {t} px in {tile_ms:.1} ms = {:.0} tiles/s\n  whole model, CT + {tiles} tiles + clinical: {all_ms:.1} ms\n",
        info.name,
        info.provider,
        info.precision,
        info.runtime.map(|r| format!(", ONNX Runtime {r}")).unwrap_or_default(),
        spec.ct.shape,
        tiles as f64 / (tile_ms / 1000.0)
    ))
}

/// How two models (or one package on two backends) differ on the same prepared cases:
/// `crlm model compare`, the INT8 accuracy report of docs/BACKENDS.md.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub a: Value,
    pub b: Value,
    pub cases: usize,
    /// Cases neither model could predict (not eligible, refused, failed), with the reason.
    pub skipped: Vec<(String, String)>,
    pub risk_abs_diff_max: f64,
    pub risk_abs_diff_mean: f64,
    /// Largest difference over every hazard and attention weight.
    pub other_abs_diff_max: f64,
    pub group_changes: usize,
    pub group_change_fraction: f64,
}

/// Prepare each case folder once and run both models on it. The packages must read the same
/// inputs (CT grid, tiles, clinical encoding).
pub fn compare(a: &Model, b: &Model, dirs: &[PathBuf], cfg: &Config) -> Result<Comparison, PredictError> {
    let (sa, sb) = (&a.package.spec, &b.package.spec);
    if sa.ct != sb.ct || sa.slide != sb.slide || sa.clinical != sb.clinical {
        return Err(PredictError::Case("the two packages do not read the same inputs (ct, slide, clinical)".into()));
    }
    let (mut max, mut sum, mut other, mut flips, mut n) = (0f64, 0f64, 0f64, 0usize, 0usize);
    let mut skipped = Vec::new();
    let diff = |x: &Option<Vec<f32>>, y: &Option<Vec<f32>>| match (x, y) {
        (Some(x), Some(y)) if x.len() == y.len() => {
            x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())).fold(0.0, f64::max)
        }
        (None, None) => 0.0,
        _ => f64::INFINITY,
    };
    for d in dirs {
        let label = d.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let prepared = match prepare_case(d, sa, cfg) {
            Ok(p) if p.refusal.is_none() => p,
            Ok(p) => {
                skipped.push((label, p.refusal.unwrap_or_default()));
                continue;
            }
            Err(e) => {
                skipped.push((label, e.to_string()));
                continue;
            }
        };
        let (oa, ob) = match (a.predict(&prepared.inputs), b.predict(&prepared.inputs)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) | (_, Err(e)) => {
                skipped.push((label, e.to_string()));
                continue;
            }
        };
        let d_risk = (oa.risk_2y - ob.risk_2y).abs();
        max = max.max(d_risk);
        sum += d_risk;
        other = other
            .max(diff(&Some(oa.hazards.clone()), &Some(ob.hazards.clone())))
            .max(diff(&oa.slice_attention, &ob.slice_attention))
            .max(diff(&oa.tile_attention, &ob.tile_attention));
        flips += usize::from(oa.risk_group != ob.risk_group);
        n += 1;
    }
    let header = |m: &Model| {
        let mut v = model_json(m);
        v["threshold"] = json!(m.package.spec.decision.threshold);
        v
    };
    Ok(Comparison {
        a: header(a),
        b: header(b),
        cases: n,
        skipped,
        risk_abs_diff_max: max,
        risk_abs_diff_mean: if n > 0 { sum / n as f64 } else { 0.0 },
        other_abs_diff_max: other,
        group_changes: flips,
        group_change_fraction: if n > 0 { flips as f64 / n as f64 } else { 0.0 },
    })
}

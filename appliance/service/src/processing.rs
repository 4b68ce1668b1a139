//! Closed cases through the model, into the ledger, then into the outbox.
//!
//! The study's rule is "locked before shown or sent", so the order is fixed: (1) predict,
//! (2) append the record to the ledger (fsynced: the lock), (3) record the lock in the state
//! database, (4) write the outputs. A crash between any two steps is resumed at start-up: a case
//! whose lock is in the ledger but not in the database is found by its `case_ref` and never
//! predicted twice; outputs are a function of the locked record and are rewritten atomically.
//!
//! Nothing that identifies the patient enters a record: the case pseudonym, keyed references for
//! DICOM UIDs (unless `privacy.keep_uids`), content hashes, and file labels (`slide 1`) instead of
//! names. Messages from readers are scrubbed of the case's paths before they are recorded.

use crlm_config::Config;
use crlm_ingest::cases::ClinicalRecordOwned;
use crlm_ingest::pseudonym::SiteSecret;
use crlm_ingest::recognise::{DicomRole, Outcome, Recognised, recognise};
use crlm_ingest::series::SeriesChoice;
use crlm_ingest::share;
use crlm_ledger::{
    self as ledger, CaseRecord, CaseStatus, ClinicalInput, CtInput, ImageRef, Inputs, Ledger, LedgerError, Outputs,
    Record, RecordBody, RecordKind, Recovery, RecoveryNote, RoiInput, SlideInput,
};
use crlm_models::case::ModelIdentity;
use crlm_models::clinical::ClinicalRecord;
use crlm_models::dicom::DicomHeader;
use crlm_models::inference::Model;
use crlm_mqtt::{self as mqtt, AlertCode};
use crlm_outputs::{self as outputs, OutputError, SiteStudy};
use crlm_predict::{CaseFiles, CaseResult, PredictError, Timings, predict_prepared, prepare_files};
use crlm_state::{CaseState, StateDb, StateError, WorkRow, now_ms};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Predict(#[from] PredictError),
    #[error(transparent)]
    Outputs(#[from] OutputError),
    #[error("cannot open {what}: {source}")]
    Open { what: String, source: std::io::Error },
    #[error("processing stopped on an internal error (a panic: {0}); the case is not retried")]
    Panic(String),
    #[error(
        "processing this case was cut off {0} times without finishing (the service died mid-case: \
         a crash in a decoder or the model, a hang past model.case_timeout_seconds, or power cuts); \
         it is not tried again"
    )]
    Interrupted(u32),
}

/// A case that went through (or was resumed): what the service reports and shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Processed {
    pub case: String,
    /// `predicted`, `refused` or `ineligible`.
    pub state: CaseState,
    pub seq: u64,
    pub record_hash: String,
    pub risk_2y: Option<f64>,
    pub risk_group: Option<String>,
    pub outputs: Vec<PathBuf>,
    pub seconds: f64,
    /// The lock was found in the ledger after a restart (not predicted again).
    pub resumed: bool,
    /// Where the time went, in ms, in order: `files` (listed and hashed), the preparation's
    /// `ct`, `clinical` and `slide`, `model` and `total` when the model ran, `ledger` (the
    /// fsynced append), `outputs`.
    pub timings_ms: Timings,
}

pub struct Processor {
    cfg: Config,
    model: Arc<Model>,
    ledger: Ledger,
    db: StateDb,
    secret: SiteSecret,
    share: cap_std::fs::Dir,
}

impl Processor {
    /// Open the ledger (cutting off a torn last record, reported for an alert) and the state.
    pub fn open(cfg: &Config, model: Arc<Model>) -> Result<(Self, Option<Recovery>), ProcessError> {
        let key = ledger::device_key(&cfg.keys_dir())?;
        let (mut ledger, recovery) = Ledger::open(&cfg.ledger_dir(), key)?;
        let db = StateDb::open(&cfg.database_path())?;
        // Locks the state database holds beyond the ledger's end were cut off with its tail (a
        // disk that lost written data at a power cut): those cases are decided and locked again.
        let lost = db.locked_from(ledger.len())?;
        if !lost.is_empty() {
            let tx = db.begin()?;
            for (id, _, _) in &lost {
                tx.unlock(*id, now_ms())?;
            }
            tx.commit()?;
        }
        if let Some(r) = &recovery {
            // The cut is itself recorded, so an auditor sees it in the chain.
            ledger.append(&RecordBody::Recovery(RecoveryNote { torn_bytes_cut: r.cut_bytes }))?;
        }
        let secret_path = cfg.keys_dir().join("site.secret");
        let secret = SiteSecret::load_or_create(&secret_path)
            .map_err(|e| ProcessError::Open { what: secret_path.display().to_string(), source: e })?;
        let share = share::open_share(&cfg.share.path)
            .map_err(|e| ProcessError::Open { what: "the share".into(), source: e })?;
        let p = Processor { cfg: cfg.clone(), model, ledger, db, secret, share };
        if let Some(r) = &recovery {
            p.alert(
                AlertCode::LedgerRecovery,
                &format!("a torn last ledger record ({} bytes) was cut off at start-up", r.cut_bytes),
            )?;
        }
        for (_, case, seq) in &lost {
            let why = format!(
                "case {case}: its lock (ledger record {seq}) was lost with the ledger's tail; the case is decided and locked again"
            );
            tracing::warn!(stage = "ledger", alert = "ledger_recovery", case = %case, seq, "{why}");
            p.alert(AlertCode::LedgerRecovery, &why)?;
        }
        Ok((p, recovery))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Cases waiting for a lock, or locked without their outputs, oldest first.
    pub fn pending(&self) -> Result<Vec<i64>, ProcessError> {
        Ok(self.db.work_pending()?)
    }

    /// Count a start of processing `case_id` (durable before the work begins); returns the
    /// starts that have not ended, this one included.
    pub fn begin_attempt(&self, case_id: i64) -> Result<u32, ProcessError> {
        Ok(self.db.begin_attempt(case_id, now_ms())?)
    }

    /// Whether the case's decision is already in the ledger: finishing it (recording the lock,
    /// the outbox rows, the outputs) decodes nothing, so it is never given up as interrupted,
    /// and a lock is never left unreported.
    pub fn is_locked(&self, case_id: i64) -> bool {
        let Ok(case) = self.db.work_row(case_id) else { return false };
        case.ledger_seq.is_some() || self.ledger.find_case(&self.secret.keyed_ref("case", &case.key)).is_some()
    }

    /// Processing `case_id` ended, whatever the outcome.
    pub fn end_attempt(&self, case_id: i64) -> Result<(), ProcessError> {
        Ok(self.db.end_attempt(case_id)?)
    }

    /// The pseudonym of a case (for progress messages).
    pub fn pseudonym(&self, case_id: i64) -> Option<String> {
        self.db.pseudonym(case_id).ok().flatten()
    }

    /// Record that a case could not be processed for a reason outside it; it is not retried
    /// automatically (`crlm cases` shows the failure).
    pub fn mark_failed(&self, case_id: i64, why: &str) -> Result<(), ProcessError> {
        let tx = self.db.begin()?;
        tx.mark_failed(case_id, why, now_ms())?;
        if self.cfg.mqtt.enabled {
            let case = self.pseudonym(case_id);
            let why = self.scrub(why, &CaseFiles::default());
            mqtt::outbox::enqueue_alert(&tx, &self.cfg.mqtt, AlertCode::CaseFailed, &why, case.as_deref())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Queue an alert for the fleet (nothing is queued with MQTT off).
    pub fn alert(&self, code: AlertCode, message: &str) -> Result<(), ProcessError> {
        if self.cfg.mqtt.enabled {
            mqtt::outbox::enqueue_alert(&self.db, &self.cfg.mqtt, code, message, None)?;
        }
        Ok(())
    }

    /// Predict (or refuse), lock and write the outputs of one case.
    pub fn process(&mut self, case_id: i64) -> Result<Processed, ProcessError> {
        let t = Instant::now();
        let case = self.db.work_row(case_id)?;
        let case_ref = self.secret.keyed_ref("case", &case.key);
        // The model's own timings, plus this worker's steps (ms).
        let mut timings = Timings::default();
        let ms = |t: Instant| (t.elapsed().as_secs_f64() * 1e4).round() / 10.0;
        let existing = match case.ledger_seq {
            Some(seq) => Some(seq as u64),
            None => self.ledger.find_case(&case_ref).map(|(seq, _)| seq),
        };
        let (record, hash, files, resumed) = match existing {
            Some(seq) => {
                let (record, hash) = ledger::read_record(&self.cfg.ledger_dir(), seq)?.ok_or_else(|| {
                    LedgerError::Bad { line: seq as usize + 1, reason: "the record the state names is missing".into() }
                })?;
                let files = self.case_files(&case)?;
                (record, hash, files, true)
            }
            None => {
                let step = Instant::now();
                let files = self.case_files(&case)?;
                let files_ms = ms(step);
                let (body, model_timings) = self.decide(&case, &case_ref, &files)?;
                timings.push("files", files_ms);
                timings.extend(model_timings);
                let step = Instant::now();
                let record = self.ledger.append(&body)?;
                timings.push("ledger", ms(step));
                let hash = record.hash();
                (record, hash, files, false)
            }
        };
        let locked = record.case();
        let state = match (record.core.kind, case.state) {
            (_, CaseState::Ineligible) => CaseState::Ineligible,
            (RecordKind::Prediction, _) => CaseState::Predicted,
            _ => CaseState::Refused,
        };
        // The lock enters the state database together with the messages that report it.
        let tx = self.db.begin()?;
        tx.record_lock(case.id, record.core.seq, &hash, state, now_ms())?;
        if self.cfg.mqtt.enabled && case.ledger_seq.is_none() {
            let m = &self.cfg.mqtt;
            if let Some(result) = mqtt::result_payload(m, &record, &hash) {
                mqtt::outbox::enqueue(&tx, mqtt::STREAM_RESULT, &mqtt::topic(m, "result"), result)?;
            }
            if record.core.kind == RecordKind::Refusal {
                let why = locked.as_ref().and_then(|c| c.refusal.as_deref()).unwrap_or("refused");
                mqtt::outbox::enqueue_alert(&tx, m, AlertCode::Refusal, why, Some(&case.pseudonym))?;
            }
        }
        tx.commit()?;
        let site = self.site_study(&record, &files.0);
        let step = Instant::now();
        let written = outputs::write_all(&self.cfg, &record, &hash, self.ledger.key_id(), site.as_ref())?;
        timings.push("outputs", ms(step));
        self.db.set_outputs_written(case.id, now_ms())?;
        let out = locked.as_ref().and_then(|c| c.outputs.as_ref());
        Ok(Processed {
            case: case.pseudonym,
            state,
            seq: record.core.seq,
            record_hash: hash,
            risk_2y: out.map(|o| o.risk_2y),
            risk_group: out.map(|o| o.risk_group.name().to_string()),
            outputs: written,
            seconds: t.elapsed().as_secs_f64(),
            timings_ms: timings,
            resumed,
        })
    }

    /// Run the model (or not, for an ineligible case) and compose the ledger record's body.
    fn decide(
        &self,
        case: &WorkRow,
        case_ref: &str,
        (files, shas): &(CaseFiles, HashMap<PathBuf, String>),
    ) -> Result<(RecordBody, Timings), ProcessError> {
        let clinical = files.clinical.first();
        if case.state == CaseState::Ineligible {
            let reason = format!("not eligible for the study: {}", case.reasons.join("; "));
            let mut c = self.case_record(case, case_ref, clinical, CaseStatus::Refused);
            c.refusal = Some(self.scrub(&reason, files));
            c.eligibility = Some(crlm_models::case::Eligibility {
                checked: true,
                eligible: Some(false),
                reasons: Some(case.reasons.clone()),
            });
            c.inputs = Some(Inputs { clinical: clinical.map(clinical_input), ..Inputs::default() });
            return Ok((RecordBody::Refusal(c), Timings::default()));
        }
        let t_all = Instant::now();
        let result = match prepare_files(files, &self.model.package.spec, &self.cfg)
            .and_then(|p| predict_prepared(p, &self.model, t_all))
        {
            Ok(r) => r,
            // A case whose inputs contradict each other is refused and locked as such.
            Err(PredictError::Case(why)) => {
                let mut c = self.case_record(case, case_ref, clinical, CaseStatus::Refused);
                c.refusal = Some(self.scrub(&why, files));
                return Ok((RecordBody::Refusal(c), Timings::default()));
            }
            Err(e) => return Err(e.into()),
        };
        let body = self.result_record(case, case_ref, files, shas, &result);
        Ok((body, result.timings_ms))
    }

    /// The fields every case record starts with.
    fn case_record(
        &self,
        case: &WorkRow,
        case_ref: &str,
        clinical: Option<&ClinicalRecord>,
        status: CaseStatus,
    ) -> CaseRecord {
        CaseRecord::new(
            case.pseudonym.clone(),
            case_ref.to_string(),
            clinical.and_then(|r| r.date("surgery_date")).map(|d| d.to_string()),
            ModelIdentity::of(&self.model),
            status,
        )
    }

    fn uid(&self, uid: &str) -> String {
        if self.cfg.privacy.keep_uids { uid.to_string() } else { self.secret.keyed_ref("uid", uid) }
    }

    fn result_record(
        &self,
        case: &WorkRow,
        case_ref: &str,
        files: &CaseFiles,
        shas: &HashMap<PathBuf, String>,
        r: &CaseResult,
    ) -> RecordBody {
        let clinical = r.clinical_used.as_ref().or(files.clinical.first());
        let status = if r.output.is_some() { CaseStatus::Predicted } else { CaseStatus::Refused };
        let mut c = self.case_record(case, case_ref, clinical, status);
        let inputs = Inputs {
            ct: r.ct_used.as_ref().map(|ct| CtInput {
                series: self.uid(&ct.series),
                choice: ct.choice.clone(),
                rejected_series: ct.rejected_series,
                images: ct
                    .images
                    .iter()
                    .map(|(sop, h)| ImageRef { sop: self.uid(sop), hu_sha256: h.clone() })
                    .collect(),
                // The segmentation the crop was centred on (null: the body box).
                roi: ct
                    .roi
                    .as_ref()
                    .map(|(roi, sop)| RoiInput::new(roi.source, self.uid(sop), roi.labels.clone(), roi.bbox)),
            }),
            slides: (!r.slides_used.is_empty()).then(|| {
                r.slides_used
                    .iter()
                    .map(|s| SlideInput {
                        label: s.label.clone(),
                        sha256: shas.get(&s.path).cloned(),
                        level: s.level,
                        tissue_tiles: s.tissue_tiles,
                        tiles_used: s.tiles_used,
                    })
                    .collect()
            }),
            clinical: clinical.map(clinical_input),
        };
        c.inputs_sha256 = Some(inputs.sha256());
        c.inputs = Some(inputs);
        c.modalities = r.modalities.as_ref().map(|m| m.map_reasons(|s| self.scrub(s, files)));
        c.eligibility = Some(r.eligibility.clone());
        c.warnings = Some(r.warnings.iter().map(|w| self.scrub(w, files)).collect());
        match &r.output {
            Some(o) => {
                c.outputs = Some(Outputs {
                    risk_2y: o.risk_2y,
                    risk_2y_uncalibrated: o.risk_2y_uncalibrated,
                    risk_group: o.risk_group,
                    threshold: o.threshold,
                    hazards: o.hazards.clone(),
                    hazard_intervals_months: o.intervals_months.clone(),
                    horizon_months: Some(o.horizon_months),
                    tiles: Some(o.tiles),
                });
                RecordBody::Prediction(c)
            }
            None => {
                c.refusal = Some(self.scrub(r.refusal.as_deref().unwrap_or("refused"), files));
                RecordBody::Refusal(c)
            }
        }
    }

    /// Replace the case's file paths (which can carry names) with neutral labels.
    fn scrub(&self, text: &str, files: &CaseFiles) -> String {
        let mut s = text.to_string();
        for (p, label) in &files.slides {
            s = s.replace(&p.display().to_string(), label);
        }
        for (p, _) in &files.ct_images {
            s = s.replace(&p.display().to_string(), "a CT image");
        }
        for (p, _) in &files.roi_files {
            s = s.replace(&p.display().to_string(), "a segmentation");
        }
        let root = self.cfg.share.path.display().to_string();
        if !root.is_empty() {
            s = s.replace(&root, "the share");
        }
        s
    }

    /// The case's accepted files, re-read beneath the share exactly as ingest accepted them.
    /// A file changed since acceptance is not used (its hash would not be the one recorded).
    fn case_files(&self, case: &WorkRow) -> Result<(CaseFiles, HashMap<PathBuf, String>), ProcessError> {
        // The choice made when the case closed is the one used (crlm cases shows it).
        let mut files = CaseFiles {
            root: self.cfg.share.path.clone(),
            chosen_series: case.series_choice.as_deref().and_then(|s| serde_json::from_str::<SeriesChoice>(s).ok()),
            ..CaseFiles::default()
        };
        let mut shas = HashMap::new();
        let rows = self.db.accepted_file_versions(case.id)?;
        // Every accepted version, and whether it is still the file on the share: a multi-file
        // slide is used only if each file its index names is. Each file is opened here and again
        // below rather than kept open: a case may hold thousands of files (a CT series and an
        // MRXS slide's data files), past the unit's LimitNOFILE of 4096.
        let mut unchanged: HashMap<String, Option<String>> = HashMap::new();
        for r in &rows {
            let file = share::open_beneath(&self.share, Path::new(&r.path));
            if file.is_ok_and(|f| same_version(&f, r.size, r.mtime_ns)) {
                unchanged.insert(r.path.clone(), r.sha256.clone());
            }
        }
        let mut slide_no = 0;
        for crlm_state::FileVersion { path: rel, size, mtime_ns, sha256: sha } in rows {
            let label = format!("file {}", crlm_ingest::short_hash(Path::new(&rel)));
            let file = match share::open_beneath(&self.share, Path::new(&rel)) {
                Ok(f) => f,
                Err(e) => {
                    files.warnings.push(format!("{label}: gone since it was accepted ({})", e.kind()));
                    continue;
                }
            };
            if !same_version(&file, size, mtime_ns) {
                files.warnings.push(format!("{label}: changed since it was accepted; not used"));
                continue;
            }
            let path = self.cfg.share.path.join(&rel);
            match recognise(&file, &self.cfg.share.path, Path::new(&rel), &self.cfg.limits) {
                Outcome::Usable(Recognised::Dicom { header, role: DicomRole::CtImage }) => {
                    files.ct_images.push((path, *header))
                }
                Outcome::Usable(Recognised::Slide(h)) => {
                    // A multi-file slide (VMS, MRXS): its files as accepted, or it is not used.
                    // Its hash in the record is of the index's and those files' hashes, in order.
                    let dir = Path::new(&rel).parent().unwrap_or(Path::new(""));
                    let mut part_shas = Vec::new();
                    for m in &h.members {
                        match unchanged
                            .get(&crlm_models::slide::index::member_path(dir, m).to_string_lossy().into_owned())
                        {
                            Some(Some(part)) => part_shas.push(part.clone()),
                            _ => break,
                        }
                    }
                    if part_shas.len() != h.members.len() {
                        files.warnings.push(format!(
                            "{label}: a file of this slide was not accepted with it, or changed since; not used"
                        ));
                        continue;
                    }
                    slide_no += 1;
                    if let Some(sha) = sha {
                        let sha = if part_shas.is_empty() {
                            sha
                        } else {
                            crlm_models::slide::index::slide_set_sha256(&sha, &part_shas)
                        };
                        shas.insert(path.clone(), sha);
                    }
                    files.slides.push((path, format!("slide {slide_no}")));
                }
                Outcome::Usable(Recognised::Dicom { header, role: DicomRole::RegionOfInterest }) => {
                    files.roi_files.push((path, *header))
                }
                Outcome::Usable(_) => {}
                Outcome::NotYet(p) | Outcome::Bad(p) => files.warnings.push(format!("{label}: not used ({})", p.check)),
            }
        }
        if let Some(hash) = &case.clinical_hash {
            let record = self.db.clinical_record(hash)?;
            if let Some(r) = record.and_then(|r| serde_json::from_str::<ClinicalRecordOwned>(&r).ok()) {
                files.clinical.push(r.into_record());
            }
        }
        Ok((files, shas))
    }

    /// The study a result for the local PACS refers to, from the chosen series' headers.
    fn site_study(&self, record: &Record, files: &CaseFiles) -> Option<SiteStudy> {
        let series_ref = record.case()?.inputs?.ct?.series;
        let images: Vec<&DicomHeader> = files
            .ct_images
            .iter()
            .map(|(_, h)| h)
            .filter(|h| h.series_instance_uid.as_deref().is_some_and(|u| self.uid(u) == series_ref))
            .collect();
        let first = images.first()?;
        Some(SiteStudy {
            study_instance_uid: first.study_instance_uid.clone()?,
            series_instance_uid: first.series_instance_uid.clone()?,
            study_date: first.study_date.clone(),
            identity: first.identity.clone(),
            patient_id: first.patient_id.clone(),
            instances: images
                .iter()
                .filter_map(|h| Some((h.sop_class_uid.clone()?, h.sop_instance_uid.clone()?)))
                .collect(),
        })
    }
}

/// The clinical record's reference in a ledger record: its hash only.
fn clinical_input(r: &ClinicalRecord) -> ClinicalInput {
    ClinicalInput { record_sha256: r.hash() }
}

/// Is `file` still the version accepted (its size and modification time)?
fn same_version(file: &std::fs::File, size: i64, mtime_ns: i64) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| m.len() as i64 == size && m.mtime() * 1_000_000_000 + m.mtime_nsec() == mtime_ns)
}

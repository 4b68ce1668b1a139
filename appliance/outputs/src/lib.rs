//! Per-case result files, written into the outbox after the prediction is locked
//! (docs/OUTPUTS.md): `result.json` (this project's schema), a FHIR `RiskAssessment`, and a DICOM
//! Comprehensive SR for the local PACS. Each is a function of the locked ledger record (plus the
//! CT study's identity for the on-site SR), written atomically, so a rerun after a crash writes
//! the same bytes. Each names the model's hash, and says DEMO where it applies.
//!
//! # In the data path
//!
//! - Owns: result.json, FHIR RiskAssessment and DICOM SR per locked case.
//! - Inputs: a locked `Record` and its `CaseRecord`.
//! - Outputs: files in the outbox folder.
//! - Place: ledger -> **outputs**.
//! - Depends on: crlm-ledger, crlm-predict (the demo notice), crlm-config.

pub mod dicom_sr;
pub mod fhir;
pub mod result_json;

use crlm_config::Config;
use crlm_core::fsutil;
use crlm_ledger::{Record, RecordKind};
use crlm_models::dicom::header::StudyIdentity;
use std::path::{Path, PathBuf};

/// Every output carries this.
pub const RESEARCH_CAUTION: &str = "RESEARCH USE ONLY. Output of the CRLM validation study's locked model; the study \
protocol forbids using it to guide patient care. Not a medical device.";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot build the DICOM SR: {0}")]
    Dicom(String),
}

/// The CT study a result refers to, as the site's PACS knows it (kept on the box).
#[derive(Debug, Clone, Default)]
pub struct SiteStudy {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub study_date: Option<String>,
    pub patient_id: Option<String>,
    pub identity: StudyIdentity,
    /// (SOPClassUID, SOPInstanceUID) of the CT images the model read.
    pub instances: Vec<(String, String)>,
}

/// The outbox folder of one case: `<outbox>/<pseudonym>/`.
pub fn case_dir(cfg: &Config, pseudonym: &str) -> PathBuf {
    cfg.outbox_dir().join(pseudonym)
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf, OutputError> {
    if let Some(dir) = path.parent() {
        fsutil::ensure_dir(dir, 0o750).map_err(|e| OutputError::Io { path: dir.display().to_string(), source: e })?;
    }
    fsutil::write_atomic(path, bytes, 0o640)
        .map_err(|e| OutputError::Io { path: path.display().to_string(), source: e })?;
    Ok(path.to_path_buf())
}

/// Write the configured outputs of a locked record. File names carry the ledger sequence, so two
/// studies of one patient never overwrite each other. Refusals get `result.json` only.
pub fn write_all(
    cfg: &Config,
    record: &Record,
    record_hash: &str,
    device_key_id: &str,
    site: Option<&SiteStudy>,
) -> Result<Vec<PathBuf>, OutputError> {
    // Outputs are written for cases: predictions and refusals.
    let Some(c) = record.case() else { return Ok(Vec::new()) };
    let dir = case_dir(cfg, &c.case);
    let seq = record.core.seq;
    let mut written = Vec::new();
    if cfg.outputs.result_json {
        let doc = result_json::document(record, &c, record_hash, device_key_id);
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        written.push(write(&dir.join(format!("result-{seq:06}.json")), &bytes)?);
    }
    let Some(out) = c.outputs.as_ref().filter(|_| record.core.kind == RecordKind::Prediction) else {
        return Ok(written);
    };
    if cfg.outputs.fhir {
        let doc = fhir::risk_assessment(record, &c, out, record_hash, device_key_id, site, cfg.privacy.keep_uids);
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        written.push(write(&dir.join(format!("riskassessment-{seq:06}.fhir.json")), &bytes)?);
    }
    if cfg.outputs.dicom_sr {
        let bytes = dicom_sr::write_sr(record, &c, out, record_hash, site, cfg.outputs.sr_identifiers)?;
        written.push(write(&dir.join(format!("sr-{seq:06}.dcm")), &bytes)?);
    }
    Ok(written)
}

//! A prepared case through the model: the `crlm predict --json` document, refusals, the summary.

use crate::doc::{DocModel, DocPrediction, DocStatus, PredictDocument, TopTile};
use crate::*;
use crlm_config::Config;
use crlm_models::case::{Eligibility, Modalities, ModalityStatus, ModelIdentity};
use crlm_models::clinical::ClinicalRecord;
use crlm_models::inference::{ModalityInput, Model, ModelError, ModelOutput, RiskGroup};
use crlm_models::slide::sample::ModelTiles;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The result of `predict_case`: the JSON document, and the model's output when it predicted.
pub struct CaseResult {
    /// The `crlm predict --json` document (format 1).
    pub doc: PredictDocument,
    /// Eligibility as checked (`checked: false` when switched off).
    pub eligibility: Eligibility,
    /// What became of each modality (absent when the case was refused before the model).
    pub modalities: Option<Modalities>,
    /// Why the case was not predicted.
    pub refusal: Option<String>,
    pub warnings: Vec<String>,
    pub output: Option<ModelOutput>,
    /// Tiles per slide (for the heatmap), in the order of the attention.
    pub slides: Vec<(PathBuf, ModelTiles)>,
    pub ct_used: Option<CtUsed>,
    pub slides_used: Vec<SlideUsed>,
    pub clinical_used: Option<ClinicalRecord>,
    /// Where the time went (empty for a refusal before the model).
    pub timings_ms: Timings,
}

pub(crate) fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
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
        inputs_doc,
        eligibility,
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
        return Ok(used(refusal(model, reason, eligibility, warnings)));
    }
    let modalities = Modalities {
        ct: ModalityStatus::of(&inputs.ct),
        slide: ModalityStatus::of(&inputs.slides),
        clinical: ModalityStatus::of(&inputs.clinical),
    };
    let t = Instant::now();
    let output = match model.predict(&inputs) {
        Ok(o) => o,
        Err(e @ ModelError::ModalitiesNotAllowed { .. }) => {
            let mut r = refusal(model, e.to_string(), eligibility, warnings);
            r.doc.modalities = Some(modalities.clone());
            r.modalities = Some(modalities);
            return Ok(used(r));
        }
        Err(e) => return Err(e.into()),
    };
    timings_ms.push("model", ms(t));
    let slides: Vec<(PathBuf, ModelTiles)> = match inputs.slides {
        ModalityInput::Used(tiles) => slide_files.into_iter().zip(tiles).collect(),
        _ => Vec::new(),
    };
    timings_ms.push("total", ms(t_all));

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
    let top_tiles = top
        .iter()
        .filter_map(|&(s, i, attention)| {
            let tile = slides.get(s)?.1.tiles.get(i)?;
            let slide = slides_used.get(s).map(|u| u.label.clone()).unwrap_or_else(|| "slide".into());
            Some(TopTile { slide, x: tile.x, y: tile.y, size: tile.size, attention })
        })
        .collect();
    let prediction = DocPrediction {
        risk_2y: output.risk_2y,
        risk_group: output.risk_group,
        threshold: output.threshold,
        risk_2y_uncalibrated: output.risk_2y_uncalibrated,
        hazards: output.hazards.clone(),
        hazard_intervals_months: output.intervals_months.clone(),
        horizon_months: output.horizon_months,
        tiles: output.tiles,
        inputs: inputs_doc,
        top_tiles,
        slice_attention: output.slice_attention.clone(),
        timings_ms: timings_ms.clone(),
    };
    let doc = PredictDocument {
        prediction: Some(Box::new(prediction)),
        modalities: Some(modalities.clone()),
        eligibility: eligibility.clone(),
        warnings: warnings.clone(),
        ..document(model, DocStatus::Predicted)
    };
    Ok(used(CaseResult {
        doc,
        eligibility,
        modalities: Some(modalities),
        refusal: None,
        warnings,
        output: Some(output),
        slides,
        ct_used: None,
        slides_used: Vec::new(),
        clinical_used: None,
        timings_ms,
    }))
}

/// A document with the fields every one starts with (format, status, the model, the demo
/// notice), to be completed by the caller.
pub(crate) fn document(model: &Model, status: DocStatus) -> PredictDocument {
    let p = &model.package;
    PredictDocument {
        format: PREDICT_FORMAT,
        status,
        model: DocModel { identity: ModelIdentity::of(model), trust: p.trust.clone() },
        notice: p.spec.demo.then_some(DEMO_NOTICE),
        refusal: None,
        prediction: None,
        modalities: None,
        eligibility: Eligibility::default(),
        warnings: Vec::new(),
    }
}

pub(crate) fn refusal(model: &Model, reason: String, eligibility: Eligibility, warnings: Vec<String>) -> CaseResult {
    let doc = PredictDocument {
        refusal: Some(reason.clone()),
        eligibility: eligibility.clone(),
        warnings: warnings.clone(),
        ..document(model, DocStatus::Refused)
    };
    CaseResult {
        doc,
        eligibility,
        modalities: None,
        refusal: Some(reason),
        warnings,
        output: None,
        slides: Vec::new(),
        ct_used: None,
        slides_used: Vec::new(),
        clinical_used: None,
        timings_ms: Timings::default(),
    }
}

/// What a person reads of a case's result: `crlm predict`'s summary, and (from `result.json`)
/// the demo's. Built from typed results, never from a document's keys.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    pub model: &'a ModelIdentity,
    /// Why no prediction was made; `None` with `risk` for a prediction.
    pub refusal: Option<&'a str>,
    pub risk: Option<SummaryRisk>,
    pub modalities: Option<&'a Modalities>,
    pub warnings: &'a [String],
}

/// A prediction as the summary shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryRisk {
    pub horizon_months: u32,
    pub risk: f64,
    pub group: RiskGroup,
    pub threshold: f64,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.model;
        if m.demo {
            writeln!(f, "*** {DEMO_NOTICE} ***")?;
        }
        let sha: String = m.sha256.chars().take(12).collect();
        writeln!(
            f,
            "model: {} {} (sha256 {sha}...), {} on {} ({})",
            m.name,
            m.version,
            m.backend,
            m.device.to_uppercase(),
            m.precision
        )?;
        match (self.refusal, &self.risk) {
            (None, Some(r)) => writeln!(
                f,
                "{}-month liver-metastasis risk: {:.3}  group: {} (threshold {})",
                r.horizon_months,
                r.risk,
                r.group.name(),
                r.threshold
            )?,
            (refusal, _) => writeln!(f, "REFUSED: {}", refusal.unwrap_or("?"))?,
        }
        if let Some(mods) = self.modalities {
            for (k, v) in [("ct", &mods.ct), ("slide", &mods.slide), ("clinical", &mods.clinical)] {
                match v {
                    ModalityStatus::Used => writeln!(f, "  {k}: used")?,
                    ModalityStatus::Missing => writeln!(f, "  {k}: missing")?,
                    ModalityStatus::Refused { reason } => writeln!(f, "  {k}: refused ({reason})")?,
                }
            }
        }
        for w in self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

impl CaseResult {
    /// The summary of this result, predicted by `model`.
    pub fn summary<'a>(&'a self, model: &'a ModelIdentity) -> Summary<'a> {
        Summary {
            model,
            refusal: self.refusal.as_deref(),
            risk: self.output.as_ref().map(|o| SummaryRisk {
                horizon_months: o.horizon_months,
                risk: o.risk_2y,
                group: o.risk_group,
                threshold: o.threshold,
            }),
            modalities: self.modalities.as_ref(),
            warnings: &self.warnings,
        }
    }
}

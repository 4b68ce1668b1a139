//! `crlm synth cohort`: generate the synthetic cohort (models::cohort), write every patient as a
//! real case folder (DICOM series, SVS slide, clinical file), and turn it into model inputs with
//! exactly the code `crlm predict` uses, so the demo model trains on what it will be served.
//! Output: one safetensors file the PyTorch twin's training script reads (docs/MODEL.md).

use candle_core::{Device, Tensor};
use crlm_config::Config;
use crlm_models::cohort::{CaseParts, patient, write_case};
use crlm_models::package::ModelSpec;
use crlm_predict::{PredictError, prepare_case};
use std::collections::HashMap;
use std::path::Path;

/// Tiles kept per case in the training file (MIL trains on a sample; inference reads them all).
pub const TRAIN_TILES: usize = 24;

#[derive(Debug, Clone)]
pub struct CohortOptions {
    pub seed: u64,
    pub patients: u32,
    pub threads: usize,
}

/// One prepared patient: CT tensor, tiles (u8, NHWC), their count, clinical vector, outcome.
struct Row {
    ct: Vec<f32>,
    tiles: Vec<u8>,
    n_tiles: usize,
    clinical: Vec<f32>,
    outcome: [f32; 5],
}

fn prepare_one(seed: u64, i: u32, spec: &ModelSpec, cfg: &Config, work: &Path) -> Result<Row, PredictError> {
    let p = patient(seed, i, None);
    let dir = work.join(format!("p{i:05}"));
    write_case(&dir, &p, CaseParts::default()).map_err(|e| PredictError::Case(e.to_string()))?;
    let prepared = prepare_case(&dir, spec, cfg)?;
    std::fs::remove_dir_all(&dir)?;
    let ct = prepared.inputs.ct.used().ok_or_else(|| PredictError::Case(format!("patient {i}: CT not used")))?;
    let slides =
        prepared.inputs.slides.used().ok_or_else(|| PredictError::Case(format!("patient {i}: slide not used")))?;
    let clinical =
        prepared.inputs.clinical.used().ok_or_else(|| PredictError::Case(format!("patient {i}: clinical not used")))?;
    let t = spec.slide.tile_px as usize;
    let per = t * t * 3;
    let mut tiles = vec![0u8; TRAIN_TILES * per];
    let mut pixels = Vec::new();
    for m in slides {
        pixels.extend(m.read(0..m.tiles.len(), 1).map_err(|e| PredictError::Case(e.to_string()))?);
    }
    let all: Vec<&[u8]> = pixels.chunks_exact(per).collect();
    let n_tiles = all.len().min(TRAIN_TILES);
    for k in 0..n_tiles {
        // Evenly spread over the case's tiles, as the package's sampling rule does.
        tiles[k * per..(k + 1) * per].copy_from_slice(all[k * all.len() / n_tiles]);
    }
    let (time, event) = p.observed();
    Ok(Row {
        ct: ct.data.clone(),
        tiles,
        n_tiles,
        clinical: clinical.values.clone(),
        outcome: [
            time as f32,
            f32::from(u8::from(event)),
            f32::from(u8::from(p.event_2y_true())),
            p.true_risk_2y as f32,
            p.linear_predictor as f32,
        ],
    })
}

/// Generate, prepare and save the cohort to `out` (safetensors).
pub fn export(spec: &ModelSpec, cfg: &Config, opts: &CohortOptions, out: &Path) -> Result<(), PredictError> {
    let work = tempfile::tempdir()?;
    let n = opts.patients as usize;
    let threads = opts.threads.max(1);
    let mut rows: Vec<Option<Row>> = (0..n).map(|_| None).collect();
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for (w, chunk) in rows.chunks_mut(n.div_ceil(threads).max(1)).enumerate() {
            let (work, failed) = (work.path(), &failed);
            let start = w * n.div_ceil(threads).max(1);
            s.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    let i = (start + j) as u32;
                    match prepare_one(opts.seed, i, spec, cfg, work) {
                        Ok(r) => *slot = Some(r),
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                *f = Some(e.to_string());
                            }
                            return;
                        }
                    }
                    if i.is_multiple_of(100) {
                        tracing::info!(stage = "cohort", patient = i, "prepared");
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(PredictError::Case(format!("cohort export failed: {e}")));
    }
    let rows: Vec<Row> = rows.into_iter().flatten().collect();
    let [x, y, z] = spec.ct.shape;
    let t = spec.slide.tile_px as usize;
    let c = spec.clinical.width();
    let err = |e: candle_core::Error| PredictError::Case(e.to_string());
    let dev = Device::Cpu;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    map.insert(
        "ct".into(),
        Tensor::from_vec(rows.iter().flat_map(|r| r.ct.iter().copied()).collect::<Vec<f32>>(), (n, z, y, x), &dev)
            .map_err(err)?,
    );
    map.insert(
        "tiles".into(),
        Tensor::from_vec(
            rows.iter().flat_map(|r| r.tiles.iter().copied()).collect::<Vec<u8>>(),
            (n, TRAIN_TILES, t, t, 3),
            &dev,
        )
        .map_err(err)?,
    );
    map.insert(
        "n_tiles".into(),
        Tensor::from_vec(rows.iter().map(|r| r.n_tiles as u32).collect::<Vec<u32>>(), n, &dev).map_err(err)?,
    );
    map.insert(
        "clinical".into(),
        Tensor::from_vec(rows.iter().flat_map(|r| r.clinical.iter().copied()).collect::<Vec<f32>>(), (n, c), &dev)
            .map_err(err)?,
    );
    // Columns: observed time (months), observed event, true 2-year event, true 2-year risk, linear predictor.
    map.insert(
        "outcome".into(),
        Tensor::from_vec(rows.iter().flat_map(|r| r.outcome).collect::<Vec<f32>>(), (n, 5), &dev).map_err(err)?,
    );
    candle_core::safetensors::save(&map, out).map_err(err)?;
    Ok(())
}

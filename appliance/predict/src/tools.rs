//! Tools around prediction: attention heatmaps, the model benchmark, package comparison.

use crate::*;
use crlm_config::Config;
use crlm_models::backend::RawInput;
use crlm_models::inference::Model;
use crlm_models::slide::read::SlideReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
        crlm_core::fsutil::write_atomic(&target, &png, 0o644)?;
        written.push(target);
    }
    Ok(written)
}

/// Blue (0) through yellow to red (1).
pub(crate) fn heat(a: f32) -> [u8; 3] {
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
    let ct_only = RawInput { ct: Some(&ct), tile_embeddings: None, clinical: Some(&clin) };
    let ct_ms = time(&mut || backend.forward(&ct_only).map(|_| ()).map_err(PredictError::from))?;
    // The tile encoder in the batches the tile stream gives it (the package's tile_batch).
    let batch = model.stream_options().batch.max(1);
    let embed = || -> Result<Vec<f32>, PredictError> {
        let mut h = Vec::new();
        for chunk in px.chunks(batch * 3 * t * t) {
            h.extend(backend.embed_tiles(chunk, chunk.len() / (3 * t * t))?);
        }
        Ok(h)
    };
    let tile_ms = time(&mut || embed().map(|_| ()))?;
    let all_ms = time(&mut || {
        let h = embed()?;
        let all = RawInput { ct: Some(&ct), tile_embeddings: Some((&h, tiles)), clinical: Some(&clin) };
        backend.forward(&all).map(|_| ()).map_err(PredictError::from)
    })?;
    let info = backend.info();
    let threads = match info.name.as_str() {
        "candle" => format!("{} threads", candle_core::utils::get_num_threads()),
        _ => "threads from [onnx] threads".into(),
    };
    Ok(format!(
        "{} ({}, {}{}), {threads}, median of {repeat}\n  CT volume {:?} (+ clinical, fusion): {ct_ms:.1} ms\n  tile encoder: {tiles} tiles of {t} px in batches of {batch} in {tile_ms:.1} ms = {:.0} tiles/s\n  whole model, CT + {tiles} tiles + clinical: {all_ms:.1} ms\n",
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
    pub a: ComparedModel,
    pub b: ComparedModel,
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
    let header = |m: &Model| ComparedModel {
        identity: crlm_models::case::ModelIdentity::of(m),
        threshold: m.package.spec.decision.threshold,
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

/// One side of a comparison: the model as a case record names it, and its locked threshold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComparedModel {
    #[serde(flatten)]
    pub identity: crlm_models::case::ModelIdentity,
    pub threshold: f64,
}

/// How far a package's network is from its authors' own run on the same inputs
/// (`crlm model parity`, docs/MODEL.md "Bring your PyTorch model").
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parity {
    pub cases: usize,
    /// Largest |difference| per output over every case: `hazards`, `tile_embeddings`,
    /// `tile_attention` (those the reference has).
    pub max_abs_diff: std::collections::BTreeMap<String, f32>,
}

/// Run the model's network on the reference inputs of a safetensors file and compare with the
/// outputs stored beside them. Keys per case `i`: inputs `case{i}.ct` (`[Z, Y, X]` on the
/// package grid), `case{i}.tiles` (`[n, 3, T, T]` normalised; n may be 0), `case{i}.clinical`
/// (`[C]`), `case{i}.mask` (`[3]`: which of CT, slide, clinical are present); outputs
/// `case{i}.hazards` and, optionally, `case{i}.tile_embeddings` and `case{i}.tile_attention`.
pub fn parity(model: &Model, reference: &Path) -> Result<Parity, PredictError> {
    let bad = |m: String| PredictError::Case(format!("{}: {m}", reference.display()));
    let r = candle_core::safetensors::load(reference, &candle_core::Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let get = |k: &str| -> Result<Option<Vec<f32>>, PredictError> {
        r.get(k)
            .map(|t| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| bad(format!("{k}: {e}"))))
            .transpose()
    };
    let need = |k: &str| get(k).and_then(|v| v.ok_or_else(|| bad(format!("{k} is missing"))));
    let backend = model.backend();
    let t = model.package.spec.slide.tile_px as usize;
    let mut max_abs_diff = std::collections::BTreeMap::new();
    let mut note = |what: &str, a: &[f32], b: &[f32]| -> Result<(), PredictError> {
        if a.len() != b.len() {
            return Err(bad(format!("{what}: {} values from crlm, {} in the reference", a.len(), b.len())));
        }
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let e = max_abs_diff.entry(what.to_string()).or_insert(0f32);
        *e = e.max(d);
        Ok(())
    };
    let mut cases = 0;
    while r.contains_key(&format!("case{cases}.mask")) {
        let k = |s: &str| format!("case{cases}.{s}");
        let mask = need(&k("mask"))?;
        let present = |i: usize| mask.get(i).is_some_and(|v| *v != 0.0);
        let tiles = get(&k("tiles"))?.unwrap_or_default();
        let n = tiles.len() / (3 * t * t);
        let h = if n > 0 { backend.embed_tiles(&tiles, n)? } else { Vec::new() };
        if let Some(want) = get(&k("tile_embeddings"))?.filter(|_| n > 0) {
            note("tile_embeddings", &h, &want)?;
        }
        let ct = need(&k("ct"))?;
        let clinical = need(&k("clinical"))?;
        let out = backend.forward(&RawInput {
            ct: present(0).then_some(ct.as_slice()),
            tile_embeddings: (present(1) && n > 0).then_some((h.as_slice(), n)),
            clinical: present(2).then_some(clinical.as_slice()),
        })?;
        note("hazards", &out.hazards, &need(&k("hazards"))?)?;
        if let (Some(a), Some(want)) = (&out.tile_attention, get(&k("tile_attention"))?) {
            note("tile_attention", a, &want)?;
        }
        cases += 1;
    }
    if cases == 0 {
        return Err(bad("no case0.mask: not a parity reference (docs/MODEL.md)".into()));
    }
    Ok(Parity { cases, max_abs_diff })
}

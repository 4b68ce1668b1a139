//! A synthetic cohort with a planted, documented risk signal: what the demo model learns from.
//!
//! Each patient has three independent latent scores, one per modality, drawn N(0, 1):
//! - `z_ct` sets the liver's parenchymal texture (heterogeneity amplitude) and the number of small
//!   hypodense foci in the portal-venous CT;
//! - `z_path` sets the nuclear density, nuclear size and hematoxylin darkness of the slide;
//! - `z_clin` shifts pN (and the positive-node count), CEA, lymphovascular invasion and budding.
//!
//! The linear predictor is `eta = BETA * (z_ct + z_path + z_clin)`; each 6-month interval's hazard
//! is `sigmoid(ALPHA[k] + eta)`, so every modality carries a third of the signal. Follow-up is
//! censored uniformly between 6 and 36 months (training sees censoring as in a real cohort); the
//! true 2-year status is kept too, for the holdout AUC. docs/MODEL.md gives the numbers.
//!
//! Everything derives from `(seed, index)` through SplitMix64, so a cohort is the same on every
//! machine and in every version of any dependency.

use crate::dicom::{CtSeriesSpec, DicomError, write_ct_series, writer::uid_from};
use crate::slide::{SlideError, SlideSpec, write_pyramidal_tiff};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Weight of each latent score in the linear predictor.
pub const BETA: f64 = 1.7;
/// Per-interval baseline log-odds (0-6, 6-12, 12-18, 18-24 months): about 25 % 2-year risk.
pub const ALPHA: [f64; 4] = [-3.2, -2.6, -2.8, -3.2];
/// Months per hazard interval.
pub const INTERVAL_MONTHS: f64 = 6.0;

/// CT geometry of a generated series: 128 x 128 pixels of 2.4 mm, 20 slices of 5 mm.
pub const CT_PIXELS: u16 = 128;
pub const CT_PIXEL_MM: f64 = 2.4;
pub const CT_SLICES: u32 = 20;
pub const CT_SLICE_MM: f64 = 5.0;
/// Slide geometry: 1536 x 1536 level-0 pixels of 0.5 microns, three levels.
pub const SLIDE_PIXELS: u32 = 1536;
pub const SLIDE_MPP: f64 = 0.5;

/// SplitMix64: tiny, fast, and stable forever (unlike a library RNG across versions).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A stateless hash of integer coordinates to [0, 1): textures that need no storage.
fn hash01(seed: u64, a: i64, b: i64, c: i64) -> f64 {
    let mut r = Rng::new(
        seed ^ (a as u64).wrapping_mul(0x9E37_79B1)
            ^ (b as u64).wrapping_mul(0x85EB_CA77_C2B2_AE63)
            ^ (c as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.uniform()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// How the CT of a patient looks.
#[derive(Debug, Clone, Serialize)]
pub struct CtLook {
    /// Amplitude (HU) of the liver's smooth texture.
    pub texture_hu: f64,
    /// Centres of hypodense foci inside the liver (mm, LPS, relative to the volume centre).
    pub foci_mm: Vec<[f64; 3]>,
    pub focus_radius_mm: f64,
    pub seed: u64,
}

/// How the slide of a patient looks.
#[derive(Debug, Clone, Serialize)]
pub struct TissueLook {
    /// Probability that an 8-micron cell site holds a nucleus.
    pub nuclear_density: f64,
    /// Nuclear radius in level-0 pixels.
    pub nuclear_radius_px: f64,
    /// 0 (pale) to 1 (dark) hematoxylin.
    pub hematoxylin: f64,
    pub seed: u64,
}

/// One generated patient.
#[derive(Debug, Clone, Serialize)]
pub struct SynthPatient {
    pub index: u32,
    pub patient_id: String,
    pub z_ct: f64,
    pub z_path: f64,
    pub z_clin: f64,
    pub linear_predictor: f64,
    /// True probability of liver metastasis within 24 months.
    pub true_risk_2y: f64,
    /// Month of liver metastasis, if it happens in the first 60 months.
    pub event_month: Option<f64>,
    /// Month at which follow-up ends (censoring).
    pub follow_up_month: f64,
    pub ct: CtLook,
    pub tissue: TissueLook,
    /// The schema-v1 clinical record.
    pub clinical: serde_json::Value,
}

impl SynthPatient {
    /// Observed event within 24 months (needs follow-up or an event to be known).
    pub fn event_2y_true(&self) -> bool {
        self.event_month.is_some_and(|m| m <= 24.0)
    }

    /// Observed (time, event) after censoring.
    pub fn observed(&self) -> (f64, bool) {
        match self.event_month {
            Some(m) if m <= self.follow_up_month => (m, true),
            _ => (self.follow_up_month, false),
        }
    }
}

/// Generate patient `index` of the cohort `seed`. `z` overrides the three latent scores (for
/// sample cases of known risk).
pub fn patient(seed: u64, index: u32, z: Option<[f64; 3]>) -> SynthPatient {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ u64::from(index).wrapping_mul(0x9E37_79B9));
    let drawn = [rng.normal(), rng.normal(), rng.normal()];
    let [z_ct, z_path, z_clin] = z.unwrap_or(drawn);
    let eta = BETA * (z_ct + z_path + z_clin);

    // Event time from the discrete hazards; after 24 months a flat hazard to 60.
    let mut survive = 1.0;
    let mut event_month = None;
    for (k, a) in ALPHA.iter().enumerate() {
        let h = sigmoid(a + eta);
        survive *= 1.0 - h;
        if event_month.is_none() && rng.uniform() < h {
            event_month = Some(k as f64 * INTERVAL_MONTHS + rng.uniform() * INTERVAL_MONTHS);
        }
    }
    if event_month.is_none() && rng.uniform() < sigmoid(ALPHA[3] + eta) {
        event_month = Some(24.0 + rng.uniform() * 36.0);
    }
    let follow_up_month = 6.0 + rng.uniform() * 30.0;

    // CT: texture amplitude and foci count grow with z_ct.
    let texture_hu = (15.0 * (0.8 * z_ct).exp()).clamp(3.0, 90.0);
    let n_foci = (2.0 + 2.5 * z_ct + rng.uniform()).floor().clamp(0.0, 10.0) as usize;
    let foci_mm = (0..n_foci)
        .map(|_| {
            // Inside the liver ellipse (centre (-55, -10), semi-axes 60 x 50 mm), away from its edge.
            let (a, r) = (rng.uniform() * std::f64::consts::TAU, rng.uniform().sqrt() * 0.6);
            [-55.0 + 60.0 * r * a.cos(), -10.0 + 50.0 * r * a.sin(), (rng.uniform() - 0.5) * 60.0]
        })
        .collect();
    let ct = CtLook { texture_hu, foci_mm, focus_radius_mm: 11.0, seed: rng.next_u64() };

    // Slide: denser, larger, darker nuclei with z_path.
    let s = sigmoid(1.1 * z_path);
    let tissue = TissueLook {
        nuclear_density: 0.15 + 0.7 * s,
        nuclear_radius_px: 3.0 + 3.5 * s,
        hematoxylin: s,
        seed: rng.next_u64(),
    };

    let patient_id = format!("SYN{seed:04}-{index:05}");
    let clinical = clinical_record(&mut rng, &patient_id, z_clin);
    SynthPatient {
        index,
        patient_id,
        z_ct,
        z_path,
        z_clin,
        linear_predictor: eta,
        true_risk_2y: 1.0 - survive,
        event_month,
        follow_up_month,
        ct,
        tissue,
        clinical,
    }
}

fn pick<'a>(rng: &mut Rng, options: &[&'a str]) -> &'a str {
    options[((rng.uniform() * options.len() as f64) as usize).min(options.len() - 1)]
}

/// Schema-v1 record whose nodal stage, CEA, LVI and budding follow `z`. About 8 % of the
/// informative fields are "unknown", so the encoding's missingness indicators are exercised.
fn clinical_record(rng: &mut Rng, patient_id: &str, z: f64) -> serde_json::Value {
    let n = z + 0.35 * rng.normal();
    let (pn, nodes_positive) = match n {
        v if v < -0.25 => ("N0", 0),
        v if v < 0.35 => ("N1a", 1),
        v if v < 0.8 => ("N1b", 2 + (rng.uniform() * 2.0) as u32),
        v if v < 1.3 => ("N2a", 4 + (rng.uniform() * 3.0) as u32),
        _ => ("N2b", 7 + (rng.uniform() * 6.0) as u32),
    };
    let pt =
        if pn == "N0" { pick(rng, &["T2", "T3", "T3", "T4a"]) } else { pick(rng, &["T2", "T3", "T3", "T4a", "T4b"]) };
    let cea = (1.0 + 0.75 * z + 0.3 * rng.normal()).exp();
    let lvi = rng.uniform() < sigmoid(1.6 * z - 0.3);
    let b = z + 0.5 * rng.normal();
    let budding = if b < -0.4 {
        "Bd1"
    } else if b < 0.6 {
        "Bd2"
    } else {
        "Bd3"
    };
    let age = 40 + (rng.uniform() * 36.0) as u32;
    let mut v = serde_json::json!({
        "schema_version": 1,
        "patient_id": patient_id,
        "case_id": format!("CASE-{patient_id}"),
        "age": age,
        "sex": pick(rng, &["M", "F"]),
        "surgery_date": "2026-03-20",
        "ct_date": "2026-03-01",
        "site": pick(rng, &["right_colon", "left_colon", "rectum"]),
        "pT": pt,
        "pN": pn,
        "M": "M0",
        "resection": "R0",
        "cea_ng_ml": (cea * 10.0).round() / 10.0,
        "ca19_9_u_ml": "unknown",
        "grade": pick(rng, &["G1", "G2", "G2", "G3"]),
        "lymphovascular_invasion": lvi,
        "perineural_invasion": rng.uniform() < 0.2,
        "tumour_deposits": rng.uniform() < 0.1,
        "tumour_budding": budding,
        "nodes_examined": 12 + (rng.uniform() * 20.0) as u32,
        "nodes_positive": nodes_positive,
        "mmr": pick(rng, &["pMMR", "pMMR", "pMMR", "dMMR"]),
        "kras": pick(rng, &["mutant", "wild_type"]),
        "nras": "wild_type",
        "braf": "wild_type",
        "adjuvant_chemotherapy": pn != "N0",
    });
    for field in ["cea_ng_ml", "lymphovascular_invasion", "tumour_budding", "grade"] {
        if rng.uniform() < 0.08 {
            v[field] = serde_json::Value::from("unknown");
        }
    }
    v
}

/// Hounsfield units of the patient's abdomen at (column, row, slice) of the generated series.
pub fn ct_hu(look: &CtLook, x: u32, y: u32, z: u32) -> i16 {
    let half = f64::from(CT_PIXELS) / 2.0;
    let px = (f64::from(x) + 0.5 - half) * CT_PIXEL_MM;
    let py = (f64::from(y) + 0.5 - half) * CT_PIXEL_MM;
    let pz = (f64::from(z) + 0.5 - f64::from(CT_SLICES) / 2.0) * CT_SLICE_MM;
    let inside = |cx: f64, cy: f64, ax: f64, ay: f64| ((px - cx) / ax).powi(2) + ((py - cy) / ay).powi(2) < 1.0;
    let noise = (hash01(look.seed, i64::from(x), i64::from(y), i64::from(z)) - 0.5) * 16.0;
    let hu = if !inside(0.0, 0.0, 135.0, 105.0) {
        -1000.0
    } else if !inside(0.0, 0.0, 123.0, 93.0) {
        -95.0 + noise
    } else if inside(0.0, 70.0, 16.0, 16.0) {
        420.0 + noise
    } else if inside(18.0, 42.0, 10.0, 10.0) {
        170.0 + noise
    } else if inside(-55.0, -10.0, 60.0, 50.0) {
        let r2 = |f: &[f64; 3]| (px - f[0]).powi(2) + (py - f[1]).powi(2) + (pz - f[2]).powi(2);
        if look.foci_mm.iter().any(|f| r2(f) < look.focus_radius_mm.powi(2)) {
            30.0 + noise
        } else {
            105.0 + look.texture_hu * value_noise(look.seed, px / 12.0, py / 12.0, pz / 12.0) + noise
        }
    } else {
        40.0 + noise
    };
    hu.round() as i16
}

/// Smooth value noise in [-1, 1]: trilinear interpolation of hashed lattice values.
fn value_noise(seed: u64, x: f64, y: f64, z: f64) -> f64 {
    let (x0, y0, z0) = (x.floor(), y.floor(), z.floor());
    let (fx, fy, fz) = (x - x0, y - y0, z - z0);
    let mut acc = 0.0;
    for (dz, wz) in [(0, 1.0 - fz), (1, fz)] {
        for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                let v = hash01(seed, x0 as i64 + dx, y0 as i64 + dy, z0 as i64 + dz) * 2.0 - 1.0;
                acc += v * wx * wy * wz;
            }
        }
    }
    acc
}

/// RGB of the patient's slide at level-0 pixel (x, y).
pub fn tissue_rgb(look: &TissueLook, x: u32, y: u32) -> [u8; 3] {
    let c = f64::from(SLIDE_PIXELS) / 2.0;
    let (dx, dy) = ((f64::from(x) - c) / (c * 0.85), (f64::from(y) - c) / (c * 0.7));
    if dx * dx + dy * dy > 1.0 {
        return [243, 242, 245];
    }
    // One candidate nucleus per 16-pixel (8-micron) cell, jittered inside it.
    const CELL: i64 = 16;
    let (cx, cy) = (i64::from(x) / CELL, i64::from(y) / CELL);
    let grain = (hash01(look.seed ^ 0x5151, i64::from(x), i64::from(y), 0) - 0.5) * 14.0;
    for (ox, oy) in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] {
        let (gx, gy) = (cx + ox, cy + oy);
        if hash01(look.seed, gx, gy, 1) >= look.nuclear_density {
            continue;
        }
        let nx = (gx * CELL) as f64 + 3.0 + hash01(look.seed, gx, gy, 2) * 10.0;
        let ny = (gy * CELL) as f64 + 3.0 + hash01(look.seed, gx, gy, 3) * 10.0;
        if (f64::from(x) - nx).powi(2) + (f64::from(y) - ny).powi(2) < look.nuclear_radius_px.powi(2) {
            let d = look.hematoxylin;
            return [
                (120.0 - 55.0 * d + grain) as u8,
                (80.0 - 40.0 * d + grain) as u8,
                (165.0 - 35.0 * d + grain) as u8,
            ];
        }
    }
    [(226.0 + grain).clamp(0.0, 255.0) as u8, (150.0 + grain) as u8, (192.0 + grain) as u8]
}

#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error(transparent)]
    Slide(#[from] SlideError),
    #[error("I/O error writing a synthetic patient: {0}")]
    Io(#[from] std::io::Error),
}

/// Which parts of a patient's case to write.
#[derive(Debug, Clone, Copy)]
pub struct CaseParts {
    pub ct: bool,
    pub slide: bool,
    pub clinical: bool,
}

impl Default for CaseParts {
    fn default() -> Self {
        CaseParts { ct: true, slide: true, clinical: true }
    }
}

/// Write the patient's case folder: a portal-venous CT series, an SVS slide and clinical.json.
pub fn write_case(dir: &Path, p: &SynthPatient, parts: CaseParts) -> Result<Vec<PathBuf>, CohortError> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let study = uid_from(&format!("{}/study", p.patient_id));
    if parts.ct {
        let mut spec =
            CtSeriesSpec::axial(&p.patient_id, &study, &uid_from(&format!("{}/pv", p.patient_id)), CT_SLICES);
        spec.rows = CT_PIXELS;
        spec.columns = CT_PIXELS;
        spec.pixel_spacing = [CT_PIXEL_MM, CT_PIXEL_MM];
        spec.slice_spacing = CT_SLICE_MM;
        spec.slice_thickness = CT_SLICE_MM;
        let half = f64::from(CT_PIXELS) / 2.0 - 0.5;
        spec.origin = [-half * CT_PIXEL_MM, -half * CT_PIXEL_MM, 0.0];
        spec.series_description = "ABDOMEN PORTAL VENOUS 5.0".into();
        let look = Arc::new(p.ct.clone());
        spec.hu = Arc::new(move |x, y, z| ct_hu(&look, x, y, z));
        files.extend(write_ct_series(&dir.join("ct_portal_venous"), &spec)?);
    }
    if parts.slide {
        let mut spec = SlideSpec::small(SLIDE_PIXELS, SLIDE_PIXELS);
        spec.microns_per_pixel = SLIDE_MPP;
        spec.label_text = Some(format!("{} H&E", p.patient_id));
        let look = Arc::new(p.tissue.clone());
        spec.pixel = Arc::new(move |x, y| tissue_rgb(&look, x, y));
        let path = dir.join("slide_HE_1.svs");
        write_pyramidal_tiff(&path, &spec)?;
        files.push(path);
    }
    if parts.clinical {
        let path = dir.join("clinical.json");
        std::fs::write(&path, p.clinical.to_string())?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_patient_and_risk_follows_the_latent_scores() {
        let a = patient(7, 3, None);
        let b = patient(7, 3, None);
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        let low = patient(7, 3, Some([-1.5; 3]));
        let high = patient(7, 3, Some([1.5; 3]));
        assert!(low.true_risk_2y < 0.05 && high.true_risk_2y > 0.9, "{} {}", low.true_risk_2y, high.true_risk_2y);
        assert!(high.tissue.nuclear_density > low.tissue.nuclear_density);
        assert!(high.ct.texture_hu > low.ct.texture_hu && high.ct.foci_mm.len() > low.ct.foci_mm.len());
    }

    #[test]
    fn cohort_event_rate_is_plausible() {
        let n = 2000;
        let events = (0..n).filter(|i| patient(1, *i, None).event_2y_true()).count();
        let rate = events as f64 / f64::from(n);
        assert!((0.15..0.40).contains(&rate), "2-year event rate {rate}");
    }
}

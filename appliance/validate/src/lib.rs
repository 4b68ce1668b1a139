//! `crlm validate`: the study's pre-specified statistics from the locked predictions
//! (docs/VALIDATION.md). Input reading and joining in [`input`], survival estimators in
//! [`survival`], the measures in [`measures`], the HTML report in [`report`].
//!
//! # In the data path
//!
//! - Owns: the study's statistics.
//! - Inputs: the ledger export (or any CSV with pseudonym and risk) and the outcomes.
//! - Outputs: `metrics.json` (typed as [`doc::Metrics`]) and a self-contained HTML report.
//! - Place: after the ledger export, at the study office (feature `office` of the binary).
//! - Depends on: crlm-core only.

pub mod doc;
pub mod input;
pub mod measures;
pub mod report;
pub mod sample_size;
pub mod survival;

pub use doc::{Metrics, Num};
use measures::{Measures, evaluate};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{0}")]
    Input(String),
    #[error("writing {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0}")]
    TooFew(String),
}

/// One patient with a locked prediction and a known outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Patient {
    pub pseudonym: String,
    /// Predicted risk of liver metastasis by the horizon.
    pub risk: f64,
    /// In the high-risk group at the locked threshold (when groups are defined).
    pub high: Option<bool>,
    /// Months from surgery to liver metastasis or censoring.
    pub time: f64,
    /// Liver metastasis observed at `time` (otherwise censored).
    pub event: bool,
    pub centre: Option<String>,
    pub stage: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub predictions: PathBuf,
    pub outcomes: PathBuf,
    pub horizon_months: f64,
    pub bootstrap: usize,
    pub seed: u64,
    pub threshold: Option<f64>,
    pub out: PathBuf,
    /// Print bootstrap progress on stderr.
    pub progress: bool,
}

/// The measures reported with an interval, in the order of the report.
pub const MEASURES: [&str; 17] = [
    "auc_td",
    "c_harrell",
    "c_uno",
    "auc_binary",
    "brier",
    "ipa",
    "calibration_slope",
    "oe_ratio",
    "ici",
    "e50",
    "e90",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "logrank_p",
    "hazard_ratio",
];

/// 95% intervals by measure name: (low, high).
pub type Intervals = BTreeMap<&'static str, (f64, f64)>;
/// The decision curve's interval: (threshold, low, high) of the model's net benefit.
pub type NetBenefitIntervals = Vec<(f64, f64, f64)>;

/// Percentile bootstrap: resample patients with replacement `b` times (seeded), recompute every
/// measure, and take the 2.5th and 97.5th percentiles of those that could be estimated.
pub fn bootstrap(p: &[Patient], horizon: f64, b: usize, seed: u64, progress: bool) -> (Intervals, NetBenefitIntervals) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draws: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let thresholds = measures::dca_thresholds();
    let mut nb_draws: Vec<Vec<f64>> = vec![Vec::new(); thresholds.len()];
    for k in 0..b {
        let sample: Vec<Patient> = (0..p.len()).map(|_| p[rng.random_range(0..p.len())].clone()).collect();
        let m = evaluate(&sample, horizon, false);
        for (name, v) in m.scalars {
            if v.is_finite() {
                draws.entry(name).or_default().push(v);
            }
        }
        for (i, (_, model, _)) in m.net_benefit.iter().enumerate() {
            nb_draws[i].push(*model);
        }
        if progress && (k + 1) % (b / 20).max(1) == 0 {
            eprint!("\rbootstrap {:>5}/{b} [{:<20}]", k + 1, "#".repeat((k + 1) * 20 / b));
        }
    }
    if progress && b > 0 {
        eprintln!();
    }
    let ci = |mut v: Vec<f64>| -> (f64, f64) {
        if v.len() < 10 {
            return (f64::NAN, f64::NAN);
        }
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        (q(0.025), q(0.975))
    };
    let cis = draws.into_iter().map(|(k, v)| (k, ci(v))).collect();
    let nb = nb_draws
        .into_iter()
        .zip(&thresholds)
        .map(|(v, t)| {
            let (lo, hi) = ci(v);
            (*t, lo, hi)
        })
        .collect();
    (cis, nb)
}

/// The metrics of a cohort: every measure with its estimate and 95% intervals.
pub fn metrics(
    m: &Measures,
    cis: &BTreeMap<&'static str, (f64, f64)>,
    nb_ci: &[(f64, f64, f64)],
    opts: &ValidateOptions,
) -> Metrics {
    let measures = MEASURES
        .iter()
        .map(|&name| {
            let (lo, hi) = cis.get(name).copied().unwrap_or((f64::NAN, f64::NAN));
            let analytical_ci =
                m.analytical.get(name).map(|&(l, h, method)| doc::Interval { low: Num(l), high: Num(h), method });
            (
                name,
                doc::Measure {
                    estimate: Num(m.get(name)),
                    ci_low: Num(lo),
                    ci_high: Num(hi),
                    ci_method: "bootstrap",
                    analytical_ci,
                },
            )
        })
        .collect();
    Metrics {
        format: 1,
        n: m.get("n") as u64,
        events: m.get("events") as u64,
        horizon_months: opts.horizon_months,
        bootstrap: doc::Bootstrap { replicates: opts.bootstrap, seed: opts.seed, method: "percentile" },
        observed_risk: Num(m.get("observed_risk")),
        mean_predicted_risk: Num(m.get("mean_predicted_risk")),
        measures,
        logrank_chi2: Num(m.get("logrank_chi2")),
        net_benefit: m
            .net_benefit
            .iter()
            .zip(nb_ci)
            .map(|(&(threshold, model, all), &(_, lo, hi))| doc::NetBenefit {
                threshold,
                model: Num(model),
                treat_all: Num(all),
                treat_none: 0.0,
                model_ci_low: Num(lo),
                model_ci_high: Num(hi),
            })
            .collect(),
        whole: None,
    }
}

/// Everything `crlm validate` writes; returns the metrics document.
pub fn run(opts: &ValidateOptions) -> Result<Metrics, ValidateError> {
    let input::Loaded { patients, excluded, threshold } =
        input::load(&opts.predictions, &opts.outcomes, opts.threshold)?;
    if patients.len() < 2 {
        return Err(ValidateError::TooFew(format!(
            "{} patient(s) with both a locked prediction and an outcome; see the exclusions",
            patients.len()
        )));
    }
    let h = opts.horizon_months;
    let m = evaluate(&patients, h, true);
    let (cis, nb_ci) = bootstrap(&patients, h, opts.bootstrap, opts.seed, opts.progress);
    let mut doc = metrics(&m, &cis, &nb_ci, opts);
    // Subgroups by centre and by stage (point estimates and intervals on fewer replicates).
    let mut subgroups = BTreeMap::new();
    for (key, get) in [
        ("centre", (|p: &Patient| p.centre.clone()) as fn(&Patient) -> Option<String>),
        ("stage", |p: &Patient| p.stage.clone()),
    ] {
        let mut by: BTreeMap<String, Vec<Patient>> = BTreeMap::new();
        for p in &patients {
            if let Some(v) = get(p) {
                by.entry(v).or_default().push(p.clone());
            }
        }
        if by.is_empty() {
            continue;
        }
        let mut rows = BTreeMap::new();
        for (value, group) in by {
            let gm = evaluate(&group, h, false);
            let (gci, gnb) = bootstrap(&group, h, opts.bootstrap.min(500), opts.seed, false);
            let sub_opts = ValidateOptions { bootstrap: opts.bootstrap.min(500), progress: false, ..opts.clone() };
            rows.insert(value, metrics(&gm, &gci, &gnb, &sub_opts));
        }
        subgroups.insert(key, rows);
    }
    doc.whole = Some(doc::WholeCohort { threshold: Num(threshold.unwrap_or(f64::NAN)), excluded, subgroups });
    std::fs::create_dir_all(&opts.out).map_err(|e| ValidateError::Write(opts.out.display().to_string(), e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = opts.out.join(name);
        crlm_core::fsutil::write_atomic(&path, bytes, 0o644)
            .map_err(|e| ValidateError::Write(path.display().to_string(), e))
    };
    write("metrics.json", serde_json::to_string_pretty(&doc).unwrap_or_default().as_bytes())?;
    write("report.html", report::html(&doc, &m, opts).as_bytes())?;
    Ok(doc)
}

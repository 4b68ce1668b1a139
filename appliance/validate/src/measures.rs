//! The study's measures at the horizon, computed on one set of patients (the whole cohort, a
//! bootstrap resample or a subgroup). Censoring is handled by inverse probability of censoring
//! weights (IPCW) from the Kaplan-Meier estimate of censoring, as scikit-survival does, or by
//! Kaplan-Meier within groups; nobody censored before the horizon is dropped.

use super::Patient;
use super::survival::{KmCurve, censoring_km, cox_binary, kaplan_meier, logrank};
use std::collections::BTreeMap;

/// Thresholds of the decision curve (as dcurves' default grid, without 0 and 1).
pub fn dca_thresholds() -> Vec<f64> {
    (1..100).map(|k| f64::from(k) / 100.0).collect()
}

/// Every scalar measure by name (NaN where not estimable), plus the curves for the report.
#[derive(Debug, Clone, Default)]
pub struct Measures {
    pub scalars: BTreeMap<&'static str, f64>,
    /// Decision curve: (threshold, model, treat all).
    pub net_benefit: Vec<(f64, f64, f64)>,
    /// Time-dependent ROC at the horizon: (false positive rate, true positive rate).
    pub roc: Vec<(f64, f64)>,
    /// Calibration by deciles: (mean predicted, observed by KM, n).
    pub deciles: Vec<(f64, f64, usize)>,
    /// Smoothed calibration: (predicted, observed).
    pub smooth: Vec<(f64, f64)>,
    /// Kaplan-Meier by risk group (low, high).
    pub km_low: Option<KmCurve>,
    pub km_high: Option<KmCurve>,
    /// Analytical 95% intervals where standard: name -> (low, high, method).
    pub analytical: BTreeMap<&'static str, (f64, f64, &'static str)>,
}

impl Measures {
    /// A scalar measure by name; NaN when it was not computed.
    pub fn get(&self, name: &str) -> f64 {
        self.scalars.get(name).copied().unwrap_or(f64::NAN)
    }
}

struct Ipcw {
    /// 1/G(T_i) for events (0 otherwise).
    at_event: Vec<f64>,
    /// 1/G(horizon).
    at_horizon: f64,
}

fn ipcw(p: &[Patient], horizon: f64) -> Option<Ipcw> {
    let time: Vec<f64> = p.iter().map(|x| x.time).collect();
    let event: Vec<bool> = p.iter().map(|x| x.event).collect();
    let g = censoring_km(&time, &event);
    let mut at_event = vec![0.0; p.len()];
    for (i, x) in p.iter().enumerate() {
        if x.event {
            let gi = g.at(x.time);
            if gi <= 0.0 {
                return None;
            }
            at_event[i] = 1.0 / gi;
        }
    }
    let gh = g.at(horizon);
    (gh > 0.0).then_some(Ipcw { at_event, at_horizon: 1.0 / gh })
}

fn conc(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// Compute every measure. `roc_and_curves`: also the curves (not needed in bootstrap replicates).
pub fn evaluate(p: &[Patient], horizon: f64, curves: bool) -> Measures {
    let mut m = Measures::default();
    let n = p.len();
    let mut put = |k: &'static str, v: f64| {
        m.scalars.insert(k, v);
    };
    put("n", n as f64);
    let cases: Vec<usize> = (0..n).filter(|&i| p[i].event && p[i].time <= horizon).collect();
    let controls: Vec<usize> = (0..n).filter(|&i| p[i].time > horizon).collect();
    put("events", cases.len() as f64);
    let time: Vec<f64> = p.iter().map(|x| x.time).collect();
    let event: Vec<bool> = p.iter().map(|x| x.event).collect();
    let km = kaplan_meier(&time, &event);
    let observed_risk = 1.0 - km.at(horizon);
    let w = ipcw(p, horizon);

    // Cumulative/dynamic AUC at the horizon (Uno 2007; scikit-survival's cumulative_dynamic_auc).
    let mut auc_td = f64::NAN;
    if let Some(w) = &w
        && !cases.is_empty()
        && !controls.is_empty()
    {
        let (mut num, mut den) = (0.0, 0.0);
        for &i in &cases {
            let wi = w.at_event[i];
            for &j in &controls {
                num += wi * conc(p[i].risk, p[j].risk);
            }
            den += wi * controls.len() as f64;
        }
        auc_td = num / den;
        if curves {
            let mut cuts: Vec<f64> = p.iter().map(|x| x.risk).collect();
            cuts.sort_by(|a, b| b.total_cmp(a));
            cuts.dedup();
            let wsum: f64 = cases.iter().map(|&i| w.at_event[i]).sum();
            m.roc.push((0.0, 0.0));
            for c in cuts {
                let tp: f64 = cases.iter().filter(|&&i| p[i].risk >= c).map(|&i| w.at_event[i]).sum::<f64>() / wsum;
                let fp = controls.iter().filter(|&&j| p[j].risk >= c).count() as f64 / controls.len() as f64;
                m.roc.push((fp, tp));
            }
        }
    }
    put("auc_td", auc_td);

    // Harrell's C and Uno's C, truncated at the horizon.
    let (mut hn, mut hd, mut un, mut ud) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        if !(p[i].event && p[i].time < horizon) {
            continue;
        }
        let wi = w.as_ref().map(|w| w.at_event[i] * w.at_event[i]).unwrap_or(f64::NAN);
        for j in 0..n {
            let comparable = p[j].time > p[i].time || (p[j].time == p[i].time && !p[j].event);
            if i == j || !comparable {
                continue;
            }
            // As scikit-survival: a later time, or censored at the same time, is comparable.
            let c = conc(p[i].risk, p[j].risk);
            hn += c;
            hd += 1.0;
            un += wi * c;
            ud += wi;
        }
    }
    put("c_harrell", if hd > 0.0 { hn / hd } else { f64::NAN });
    put("c_uno", if ud > 0.0 { un / ud } else { f64::NAN });

    // The plain binary AUC among patients with known 2-year status, with DeLong's interval.
    let (auc_b, se_b) = delong(
        &cases.iter().map(|&i| p[i].risk).collect::<Vec<_>>(),
        &controls.iter().map(|&j| p[j].risk).collect::<Vec<_>>(),
    );
    put("auc_binary", auc_b);
    if se_b.is_finite() {
        m.analytical.insert("auc_binary", ((auc_b - 1.96 * se_b).max(0.0), (auc_b + 1.96 * se_b).min(1.0), "DeLong"));
    }

    // Brier score with IPCW (scikit-survival's brier_score) and the scaled Brier (IPA).
    let mut brier = f64::NAN;
    let mut ipa = f64::NAN;
    if let Some(w) = &w {
        let bs = |pred: &dyn Fn(usize) -> f64| -> f64 {
            (0..n)
                .map(|i| {
                    let r = pred(i);
                    if p[i].event && p[i].time <= horizon {
                        (1.0 - r).powi(2) * w.at_event[i]
                    } else if p[i].time > horizon {
                        r * r * w.at_horizon
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
                / n as f64
        };
        brier = bs(&|i| p[i].risk);
        let null = bs(&|_| observed_risk);
        if null > 0.0 {
            ipa = 1.0 - brier / null;
        }
    }
    put("brier", brier);
    put("ipa", ipa);

    // Calibration: O/E, slope (IPCW-weighted logistic regression on logit(risk)), ICI/E50/E90.
    let mean_pred = p.iter().map(|x| x.risk).sum::<f64>() / n.max(1) as f64;
    put("oe_ratio", if mean_pred > 0.0 { observed_risk / mean_pred } else { f64::NAN });
    put("observed_risk", observed_risk);
    put("mean_predicted_risk", mean_pred);
    let known: Vec<(f64, f64, f64)> = match &w {
        Some(w) => (0..n)
            .filter_map(|i| {
                let lp = logit(p[i].risk);
                if p[i].event && p[i].time <= horizon {
                    Some((lp, 1.0, w.at_event[i]))
                } else if p[i].time > horizon {
                    Some((lp, 0.0, w.at_horizon))
                } else {
                    None
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let (_, slope) = weighted_logistic(&known).unwrap_or((f64::NAN, f64::NAN));
    put("calibration_slope", slope);
    let (ici, e50, e90, smooth) = smoothed_calibration(&known, p, curves);
    put("ici", ici);
    put("e50", e50);
    put("e90", e90);
    m.smooth = smooth;
    if curves {
        m.deciles = deciles(p, horizon);
    }

    // Decision curve for a time-to-event outcome (as dcurves: KM risk among those treated).
    for pt in dca_thresholds() {
        let odds = pt / (1.0 - pt);
        let treat_all = observed_risk - (1.0 - observed_risk) * odds;
        let treated: Vec<&Patient> = p.iter().filter(|x| x.risk >= pt).collect();
        let model = if treated.is_empty() {
            0.0
        } else {
            let f = treated.len() as f64 / n as f64;
            let t: Vec<f64> = treated.iter().map(|x| x.time).collect();
            let e: Vec<bool> = treated.iter().map(|x| x.event).collect();
            let risk = 1.0 - kaplan_meier(&t, &e).at(horizon);
            risk * f - (1.0 - risk) * f * odds
        };
        m.net_benefit.push((pt, model, treat_all));
    }

    // Risk groups at the locked threshold.
    let grouped: Vec<(usize, bool)> = (0..n).filter_map(|i| p[i].high.map(|h| (i, h))).collect();
    let mut names = ["sensitivity", "specificity", "ppv", "npv", "logrank_p", "logrank_chi2", "hazard_ratio"]
        .into_iter()
        .map(|k| (k, f64::NAN))
        .collect::<BTreeMap<_, _>>();
    if grouped.len() == n && n > 0 {
        let high: Vec<bool> = grouped.iter().map(|(_, h)| *h).collect();
        let sub = |want: bool| {
            let t: Vec<f64> = (0..n).filter(|&i| high[i] == want).map(|i| p[i].time).collect();
            let e: Vec<bool> = (0..n).filter(|&i| high[i] == want).map(|i| p[i].event).collect();
            kaplan_meier(&t, &e)
        };
        let (km_h, km_l) = (sub(true), sub(false));
        let n_h = high.iter().filter(|h| **h).count() as f64;
        let f_h = n_h / n as f64;
        let (r_h, s_l) = (1.0 - km_h.at(horizon), km_l.at(horizon));
        if n_h > 0.0 {
            names.insert("ppv", r_h);
        }
        if n_h < n as f64 {
            names.insert("npv", s_l);
        }
        if observed_risk > 0.0 {
            names.insert("sensitivity", if n_h > 0.0 { r_h * f_h / observed_risk } else { 0.0 });
        }
        if observed_risk < 1.0 {
            names.insert("specificity", if n_h < n as f64 { s_l * (1.0 - f_h) / (1.0 - observed_risk) } else { 0.0 });
        }
        if let Some((chi2, pval)) = logrank(&time, &event, &high) {
            names.insert("logrank_chi2", chi2);
            names.insert("logrank_p", pval);
        }
        if let Some((b, se)) = cox_binary(&time, &event, &high) {
            names.insert("hazard_ratio", b.exp());
            m.analytical.insert("hazard_ratio", ((b - 1.96 * se).exp(), (b + 1.96 * se).exp(), "Wald (Cox)"));
        }
        if curves {
            m.km_high = Some(km_h);
            m.km_low = Some(km_l);
        }
    }
    for (k, v) in names {
        m.scalars.insert(k, v);
    }
    m
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn expit(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Weighted logistic regression y ~ a + b x by Newton-Raphson: (a, b).
pub fn weighted_logistic(d: &[(f64, f64, f64)]) -> Option<(f64, f64)> {
    if d.iter().filter(|x| x.1 > 0.5).count() == 0 || d.iter().filter(|x| x.1 < 0.5).count() == 0 {
        return None;
    }
    let (mut a, mut b) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(x, y, w) in d {
            let pr = expit(a + b * x);
            let r = w * (y - pr);
            let v = w * pr * (1.0 - pr);
            ga += r;
            gb += r * x;
            haa += v;
            hab += v * x;
            hbb += v * x * x;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            return None;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a += da;
        b += db;
        if da.abs().max(db.abs()) < 1e-10 {
            return Some((a, b));
        }
    }
    (a.is_finite() && b.is_finite()).then_some((a, b))
}

/// A smoothed calibration curve: the IPCW-weighted observed outcome against logit(risk) by a
/// Gaussian kernel (bandwidth by Silverman's rule); ICI is the mean absolute difference between
/// the curve and the predictions over all patients, E50 and E90 its median and 90th percentile.
fn smoothed_calibration(known: &[(f64, f64, f64)], p: &[Patient], curves: bool) -> (f64, f64, f64, Vec<(f64, f64)>) {
    if known.len() < 5 {
        return (f64::NAN, f64::NAN, f64::NAN, Vec::new());
    }
    let xs: Vec<f64> = known.iter().map(|k| k.0).collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt();
    let h = (1.06 * sd * (xs.len() as f64).powf(-0.2)).max(1e-3);
    let smooth_at = |x0: f64| -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for &(x, y, w) in known {
            let k = w * (-0.5 * ((x - x0) / h).powi(2)).exp();
            num += k * y;
            den += k;
        }
        if den > 0.0 { num / den } else { f64::NAN }
    };
    let mut diffs: Vec<f64> =
        p.iter().map(|x| (smooth_at(logit(x.risk)) - x.risk).abs()).filter(|d| d.is_finite()).collect();
    if diffs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, Vec::new());
    }
    diffs.sort_by(f64::total_cmp);
    let ici = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f).round() as usize];
    let curve = if curves {
        let (lo, hi) = p.iter().fold((1.0f64, 0.0f64), |(lo, hi), x| (lo.min(x.risk), hi.max(x.risk)));
        (0..=50)
            .map(|k| lo + (hi - lo) * f64::from(k) / 50.0)
            .map(|r| (r, smooth_at(logit(r))))
            .filter(|(_, o)| o.is_finite())
            .collect()
    } else {
        Vec::new()
    };
    (ici, q(0.5), q(0.9), curve)
}

/// Predicted against observed (1 - KM at the horizon) by deciles of predicted risk.
fn deciles(p: &[Patient], horizon: f64) -> Vec<(f64, f64, usize)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[a].risk.total_cmp(&p[b].risk));
    let groups = 10.min(p.len());
    (0..groups)
        .filter_map(|g| {
            let part = &idx[g * p.len() / groups..(g + 1) * p.len() / groups];
            if part.is_empty() {
                return None;
            }
            let pred = part.iter().map(|&i| p[i].risk).sum::<f64>() / part.len() as f64;
            let t: Vec<f64> = part.iter().map(|&i| p[i].time).collect();
            let e: Vec<bool> = part.iter().map(|&i| p[i].event).collect();
            Some((pred, 1.0 - kaplan_meier(&t, &e).at(horizon), part.len()))
        })
        .collect()
}

/// The AUC of scores for positives against negatives with DeLong's standard error.
pub fn delong(pos: &[f64], neg: &[f64]) -> (f64, f64) {
    let (m, n) = (pos.len(), neg.len());
    if m == 0 || n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let v10: Vec<f64> = pos.iter().map(|&x| neg.iter().map(|&y| conc(x, y)).sum::<f64>() / n as f64).collect();
    let v01: Vec<f64> = neg.iter().map(|&y| pos.iter().map(|&x| conc(x, y)).sum::<f64>() / m as f64).collect();
    let auc = v10.iter().sum::<f64>() / m as f64;
    if m < 2 || n < 2 {
        return (auc, f64::NAN);
    }
    let var = |v: &[f64]| v.iter().map(|x| (x - auc).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (auc, (var(&v10) / m as f64 + var(&v01) / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(risk: f64, time: f64, event: bool, high: bool) -> Patient {
        Patient { pseudonym: String::new(), risk, high: Some(high), time, event, centre: None, stage: None }
    }

    #[test]
    fn delong_auc_by_hand() {
        let (auc, se) = delong(&[0.9, 0.8, 0.7], &[0.6, 0.75, 0.1]);
        assert!((auc - 8.0 / 9.0).abs() < 1e-12);
        assert!(se > 0.0 && se < 0.2);
    }

    #[test]
    fn weighted_logistic_recovers_known_parameters() {
        // Expected outcomes as weights give the exact maximum-likelihood solution.
        let (a0, b0) = (-0.4, 0.7);
        let d: Vec<(f64, f64, f64)> = (0..41)
            .flat_map(|k| {
                let x = -4.0 + 0.2 * f64::from(k);
                let p = expit(a0 + b0 * x);
                [(x, 1.0, p), (x, 0.0, 1.0 - p)]
            })
            .collect();
        let (a, b) = weighted_logistic(&d).unwrap();
        assert!((a - a0).abs() < 1e-8 && (b - b0).abs() < 1e-8, "{a} {b}");
    }

    #[test]
    fn without_censoring_the_measures_are_the_binary_ones() {
        // Everyone followed beyond the horizon or with an event before it: no weights needed.
        let p: Vec<Patient> = [
            (0.9, 3.0, true),
            (0.7, 30.0, false),
            (0.6, 10.0, true),
            (0.4, 12.0, true),
            (0.3, 40.0, false),
            (0.2, 36.0, false),
            (0.1, 50.0, false),
            (0.05, 20.0, true),
        ]
        .iter()
        .map(|&(r, t, e)| patient(r, t, e, r >= 0.5))
        .collect();
        let m = evaluate(&p, 24.0, true);
        let y: Vec<f64> = p.iter().map(|x| f64::from(u8::from(x.event && x.time <= 24.0))).collect();
        let pos: Vec<f64> = (0..p.len()).filter(|&i| y[i] == 1.0).map(|i| p[i].risk).collect();
        let neg: Vec<f64> = (0..p.len()).filter(|&i| y[i] == 0.0).map(|i| p[i].risk).collect();
        let auc = delong(&pos, &neg).0;
        assert!((m.scalars["auc_td"] - auc).abs() < 1e-12);
        assert!((m.scalars["auc_binary"] - auc).abs() < 1e-12);
        let brier = p.iter().zip(&y).map(|(x, y)| (x.risk - y).powi(2)).sum::<f64>() / p.len() as f64;
        assert!((m.scalars["brier"] - brier).abs() < 1e-12);
        // Net benefit at 0.5: TP/n - FP/n * odds among those at or above the threshold.
        let (tp, fp) = (2.0, 1.0); // risks 0.9 and 0.6 had events by 24 months, 0.7 did not
        let (_, model, all) = m.net_benefit.iter().find(|x| (x.0 - 0.5).abs() < 1e-9).copied().unwrap();
        assert!((model - (tp / 8.0 - fp / 8.0)).abs() < 1e-12, "{model}");
        assert!((all - (0.5 - 0.5)).abs() < 1e-12, "{all}");
        // Groups at 0.5: 3 high (2 events), 5 low (2 events).
        assert!((m.scalars["ppv"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.scalars["npv"] - 3.0 / 5.0).abs() < 1e-12);
        assert!((m.scalars["sensitivity"] - 0.5).abs() < 1e-12);
        assert!((m.scalars["specificity"] - 0.75).abs() < 1e-12);
        assert!((m.scalars["oe_ratio"] - 0.5 / (3.25 / 8.0)).abs() < 1e-12);
    }
}

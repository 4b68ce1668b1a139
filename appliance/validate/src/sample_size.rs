//! `crlm validate sample-size`: how precisely a validation study of n patients can estimate the
//! AUC (C-statistic), observed/expected and the calibration slope, for an expected event rate
//! and AUC, following Riley et al. (Stat Med 2021, "Minimum sample size for external validation
//! of a clinical prediction model with a binary outcome"). The linear predictor is taken to be
//! normal on the logit scale, with mean and spread chosen so that the event rate and the C
//! statistic are as given; the calibration slope's variance is the inverse Fisher information of
//! a logistic recalibration model under that distribution (numerical integration, no simulation).

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Precision {
    pub n: usize,
    pub event_rate: f64,
    pub auc: f64,
    pub expected_events: f64,
    /// 95% interval widths (upper minus lower).
    pub auc_ci_width: f64,
    pub oe_ci: (f64, f64),
    pub calibration_slope_ci_width: f64,
    /// The linear predictor's assumed distribution on the logit scale: (mean, sd).
    pub lp_mean_sd: (f64, f64),
}

/// Gauss-Hermite-free integration: a fine grid over +-8 sd of a normal (exact enough here).
fn normal_grid(mu: f64, sd: f64) -> Vec<(f64, f64)> {
    let k = 2001;
    let step = 16.0 / (k - 1) as f64;
    (0..k)
        .map(|i| {
            let z = -8.0 + step * i as f64;
            let w = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt() * step;
            (mu + sd * z, w)
        })
        .collect()
}

fn expit(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn prevalence(mu: f64, sd: f64) -> f64 {
    normal_grid(mu, sd).iter().map(|(x, w)| w * expit(*x)).sum()
}

/// C statistic of a normal linear predictor with calibrated risks: P(LP_case > LP_control).
fn c_statistic(mu: f64, sd: f64) -> f64 {
    let g = normal_grid(mu, sd);
    let cases: Vec<f64> = g.iter().map(|(x, w)| w * expit(*x)).collect();
    let controls: Vec<f64> = g.iter().map(|(x, w)| w * (1.0 - expit(*x))).collect();
    let (pc, pn) = (cases.iter().sum::<f64>(), controls.iter().sum::<f64>());
    // Sweep: controls below each case value.
    let (mut below, mut num) = (0.0, 0.0);
    for i in 0..g.len() {
        num += cases[i] * (below + 0.5 * controls[i]);
        below += controls[i];
    }
    num / (pc * pn)
}

fn mean_for(rate: f64, sd: f64) -> f64 {
    let (mut lo, mut hi) = (-20.0, 20.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if prevalence(mid, sd) < rate {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The normal linear predictor with the given event rate and C statistic: (mean, sd).
pub fn linear_predictor(rate: f64, auc: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (1e-3, 10.0);
    for _ in 0..60 {
        let sd = 0.5 * (lo + hi);
        if c_statistic(mean_for(rate, sd), sd) < auc {
            lo = sd;
        } else {
            hi = sd;
        }
    }
    let sd = 0.5 * (lo + hi);
    (mean_for(rate, sd), sd)
}

/// The expected precision for `n` patients.
pub fn precision(n: usize, rate: f64, auc: f64) -> Precision {
    let nf = n as f64;
    // C statistic: Newcombe's variance, as Riley et al. 2021 (their equation 5).
    let c = auc;
    let var_c = c * (1.0 - c) * (1.0 + (nf / 2.0 - 1.0) * (1.0 - c) / (2.0 - c) + (nf / 2.0 - 1.0) * c / (1.0 + c))
        / (nf * nf * rate * (1.0 - rate));
    // O/E: SE of ln(O/E) = sqrt((1 - rate) / (n rate)).
    let se_ln_oe = ((1.0 - rate) / (nf * rate)).sqrt();
    // Calibration slope: inverse Fisher information of logit(p) = a + b LP at a = 0, b = 1.
    let (mu, sd) = linear_predictor(rate, auc);
    let (mut i00, mut i01, mut i11) = (0.0, 0.0, 0.0);
    for (x, w) in normal_grid(mu, sd) {
        let v = expit(x) * (1.0 - expit(x)) * w;
        i00 += v;
        i01 += v * x;
        i11 += v * x * x;
    }
    let det = nf * nf * (i00 * i11 - i01 * i01);
    let var_slope = nf * i00 / det;
    Precision {
        n,
        event_rate: rate,
        auc,
        expected_events: nf * rate,
        auc_ci_width: 2.0 * 1.96 * var_c.sqrt(),
        oe_ci: ((-1.96 * se_ln_oe).exp(), (1.96 * se_ln_oe).exp()),
        calibration_slope_ci_width: 2.0 * 1.96 * var_slope.sqrt(),
        lp_mean_sd: (mu, sd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linear_predictor_has_the_asked_rate_and_c() {
        let (mu, sd) = linear_predictor(0.1, 0.75);
        assert!((prevalence(mu, sd) - 0.1).abs() < 1e-6);
        assert!((c_statistic(mu, sd) - 0.75).abs() < 1e-6);
    }

    #[test]
    fn precision_grows_with_n() {
        let small = precision(160, 0.15, 0.75);
        let large = precision(1600, 0.15, 0.75);
        assert!(large.auc_ci_width < small.auc_ci_width / 2.5);
        assert!(large.calibration_slope_ci_width < small.calibration_slope_ci_width / 2.5);
        // Riley et al. 2021: Newcombe's SE of C is about 0.043 for n = 160, 15% events, C = 0.75.
        assert!(small.auc_ci_width > 0.1 && small.auc_ci_width < 0.25, "{small:?}");
        assert!((small.expected_events - 24.0).abs() < 1e-9);
    }
}

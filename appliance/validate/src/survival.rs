//! Survival building blocks: Kaplan-Meier (of the event, and of censoring for the inverse
//! probability of censoring weights, with scikit-survival's convention for ties), the log-rank
//! test and a one-covariate Cox model.

/// A right-continuous step function S(t) from the Kaplan-Meier estimator.
#[derive(Debug, Clone, Default)]
pub struct KmCurve {
    /// Distinct observed times, ascending.
    pub times: Vec<f64>,
    /// S just after each time.
    pub surv: Vec<f64>,
    /// Number at risk just before each time.
    pub at_risk: Vec<usize>,
    pub events: Vec<usize>,
}

impl KmCurve {
    /// S(t): the product over event times <= t.
    pub fn at(&self, t: f64) -> f64 {
        match self.times.partition_point(|&x| x <= t) {
            0 => 1.0,
            k => self.surv[k - 1],
        }
    }

    /// Number at risk at time t (observed time >= t).
    pub fn at_risk_at(&self, t: f64) -> usize {
        let k = self.times.partition_point(|&x| x < t);
        self.at_risk.get(k).copied().unwrap_or(0)
    }
}

/// Counts per distinct time: (time, events, censored, at risk).
fn counts(time: &[f64], event: &[bool]) -> Vec<(f64, usize, usize, usize)> {
    let mut idx: Vec<usize> = (0..time.len()).collect();
    idx.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let mut out: Vec<(f64, usize, usize, usize)> = Vec::new();
    let n = time.len();
    let mut i = 0;
    while i < n {
        let t = time[idx[i]];
        let (mut d, mut c) = (0, 0);
        let at_risk = n - i;
        while i < n && time[idx[i]] == t {
            if event[idx[i]] {
                d += 1;
            } else {
                c += 1;
            }
            i += 1;
        }
        out.push((t, d, c, at_risk));
    }
    out
}

/// Kaplan-Meier estimate of the event-free survival.
pub fn kaplan_meier(time: &[f64], event: &[bool]) -> KmCurve {
    let mut km = KmCurve::default();
    let mut s = 1.0;
    for (t, d, _, r) in counts(time, event) {
        if r > 0 {
            s *= 1.0 - d as f64 / r as f64;
        }
        km.times.push(t);
        km.surv.push(s);
        km.at_risk.push(r);
        km.events.push(d);
    }
    km
}

/// Kaplan-Meier estimate of the censoring distribution G. At a time with both events and
/// censorings, the events happen first (they leave the risk set), as in scikit-survival's
/// `CensoringDistributionEstimator`, so the weights match it.
pub fn censoring_km(time: &[f64], event: &[bool]) -> KmCurve {
    let mut km = KmCurve::default();
    let mut g = 1.0;
    for (t, d, c, r) in counts(time, event) {
        let r = r - d;
        if r > 0 && c > 0 {
            g *= 1.0 - c as f64 / r as f64;
        }
        km.times.push(t);
        km.surv.push(g);
        km.at_risk.push(r);
        km.events.push(c);
    }
    km
}

/// The log-rank test of two groups: (chi-square with 1 df, p-value).
pub fn logrank(time: &[f64], event: &[bool], group: &[bool]) -> Option<(f64, f64)> {
    let mut idx: Vec<usize> = (0..time.len()).collect();
    idx.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let (mut n, mut n1) = (time.len() as f64, group.iter().filter(|g| **g).count() as f64);
    let (mut o_minus_e, mut var) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let t = time[idx[i]];
        let (mut d, mut d1, mut leave, mut leave1) = (0.0, 0.0, 0.0, 0.0);
        while i < idx.len() && time[idx[i]] == t {
            let k = idx[i];
            if event[k] {
                d += 1.0;
                if group[k] {
                    d1 += 1.0;
                }
            }
            leave += 1.0;
            if group[k] {
                leave1 += 1.0;
            }
            i += 1;
        }
        if d > 0.0 && n > 1.0 {
            o_minus_e += d1 - d * n1 / n;
            var += d * (n1 / n) * (1.0 - n1 / n) * (n - d) / (n - 1.0);
        }
        n -= leave;
        n1 -= leave1;
    }
    if var <= 0.0 {
        return None;
    }
    let chi2 = o_minus_e * o_minus_e / var;
    Some((chi2, chi2_1df_p(chi2)))
}

/// Upper tail of the chi-square distribution with 1 degree of freedom.
pub fn chi2_1df_p(x: f64) -> f64 {
    libm::erfc((x / 2.0).sqrt())
}

/// Cox proportional hazards with one binary covariate (Breslow ties), by Newton-Raphson:
/// (log hazard ratio, its standard error).
pub fn cox_binary(time: &[f64], event: &[bool], x: &[bool]) -> Option<(f64, f64)> {
    let mut idx: Vec<usize> = (0..time.len()).collect();
    idx.sort_by(|&a, &b| time[b].total_cmp(&time[a])); // descending: risk sets grow
    let mut beta = 0.0f64;
    for _ in 0..50 {
        let (mut score, mut info) = (0.0, 0.0);
        let e = beta.exp();
        let (mut s0, mut s1) = (0.0, 0.0);
        let mut i = 0;
        while i < idx.len() {
            let t = time[idx[i]];
            let start = i;
            while i < idx.len() && time[idx[i]] == t {
                let k = idx[i];
                let w = if x[k] { e } else { 1.0 };
                s0 += w;
                if x[k] {
                    s1 += w;
                }
                i += 1;
            }
            for &k in &idx[start..i] {
                if event[k] {
                    let xbar = s1 / s0;
                    score += f64::from(u8::from(x[k])) - xbar;
                    info += xbar * (1.0 - xbar);
                }
            }
        }
        if info <= 0.0 {
            return None;
        }
        let step = score / info;
        beta += step.clamp(-5.0, 5.0);
        if step.abs() < 1e-10 {
            return beta.is_finite().then(|| (beta, 1.0 / info.sqrt()));
        }
        if beta.abs() > 30.0 {
            return None; // no events in one group: the ratio is not estimable
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaplan_meier_by_hand() {
        // times 1,2,2,3,4 with events 1,1,0,1,0
        let t = [1.0, 2.0, 2.0, 3.0, 4.0];
        let e = [true, true, false, true, false];
        let km = kaplan_meier(&t, &e);
        assert!((km.at(1.0) - 0.8).abs() < 1e-12);
        assert!((km.at(2.5) - 0.8 * 0.75).abs() < 1e-12);
        assert!((km.at(3.0) - 0.8 * 0.75 * 0.5).abs() < 1e-12);
        assert_eq!(km.at(0.5), 1.0);
        assert_eq!(km.at_risk_at(2.0), 4);
        // Censoring at 2 with one event at 2: at risk for censoring 4 - 1 = 3.
        let g = censoring_km(&t, &e);
        assert!((g.at(2.0) - (1.0 - 1.0 / 3.0)).abs() < 1e-12);
        assert!((g.at(4.0) - 0.0).abs() < 1e-12);
    }

    #[test]
    fn chi_square_tail() {
        assert!((chi2_1df_p(3.841458820694124) - 0.05).abs() < 1e-9);
        assert!((chi2_1df_p(0.0) - 1.0).abs() < 1e-12);
    }
}

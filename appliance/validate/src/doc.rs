//! The metrics document (`metrics.json`) as types: what `crlm validate` writes, what its HTML
//! report and the command's summary read.

use super::input::Excluded;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// A number as the document writes it: `null` where it is not finite (a measure that cannot be
/// computed on these patients).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Num(pub f64);

impl Num {
    /// The value, if finite.
    pub fn value(self) -> Option<f64> {
        self.0.is_finite().then_some(self.0)
    }
}

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.value() {
            Some(v) => s.serialize_f64(v),
            None => s.serialize_none(),
        }
    }
}

/// One measure: its estimate and 95% intervals.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub estimate: Num,
    pub ci_low: Num,
    pub ci_high: Num,
    /// `bootstrap` (percentile).
    pub ci_method: &'static str,
    /// The standard analytical interval where there is one (DeLong, Wald).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analytical_ci: Option<Interval>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub low: Num,
    pub high: Num,
    pub method: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub replicates: usize,
    pub seed: u64,
    /// `percentile`.
    pub method: &'static str,
}

/// One threshold of the decision curve.
#[derive(Debug, Clone, Serialize)]
pub struct NetBenefit {
    pub threshold: f64,
    pub model: Num,
    pub treat_all: Num,
    pub treat_none: f64,
    pub model_ci_low: Num,
    pub model_ci_high: Num,
}

/// The measures of a cohort (the whole cohort, or a subgroup).
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// 1.
    pub format: u32,
    pub n: u64,
    pub events: u64,
    pub horizon_months: f64,
    pub bootstrap: Bootstrap,
    pub observed_risk: Num,
    pub mean_predicted_risk: Num,
    /// Each of [`super::MEASURES`], under its name.
    #[serde(flatten)]
    pub measures: BTreeMap<&'static str, Measure>,
    pub logrank_chi2: Num,
    pub net_benefit: Vec<NetBenefit>,
    /// Only in the whole cohort's document.
    #[serde(flatten)]
    pub whole: Option<WholeCohort>,
}

/// What only the whole cohort's document has.
#[derive(Debug, Clone, Serialize)]
pub struct WholeCohort {
    /// The locked risk threshold (`null` when there is none).
    pub threshold: Num,
    /// Every row left out, with the reason.
    pub excluded: Vec<Excluded>,
    /// By `centre` and by `stage`: each value's metrics.
    pub subgroups: BTreeMap<&'static str, BTreeMap<String, Metrics>>,
}

impl Metrics {
    /// A measure's estimate (NaN when absent or not computable).
    pub fn estimate(&self, name: &str) -> Num {
        self.measures.get(name).map(|m| m.estimate).unwrap_or(Num(f64::NAN))
    }
}

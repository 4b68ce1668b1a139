//! The statisticians' report: one self-contained HTML file with inline SVG plots (time-dependent
//! ROC, calibration, decision curve, Kaplan-Meier by risk group with numbers at risk) and the
//! tables of metrics.json, plus the TRIPOD+AI items it covers.

use super::doc::{Metrics, Num};
use super::measures::Measures;
use super::{MEASURES, ValidateOptions};
use std::fmt::Write as _;

/// The measures each subgroup's row shows.
const SUBGROUP_MEASURES: [&str; 5] = ["auc_td", "c_harrell", "brier", "oe_ratio", "calibration_slope"];

const W: f64 = 360.0;
const H: f64 = 280.0;
const PAD: f64 = 44.0;

/// Escape text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line of a plot: points, colour, dashed, label.
type Series<'a> = (Vec<(f64, f64)>, &'a str, bool, &'a str);

/// How a plot is drawn: dots on the first series; the legend at the bottom (for falling curves).
#[derive(Clone, Copy, Default)]
struct Style {
    dots: bool,
    legend_low: bool,
}

/// A line plot in [x0, x1] x [y0, y1]: series of (points, colour, dashed, label).
fn plot(title: &str, xl: &str, yl: &str, x: (f64, f64), y: (f64, f64), series: &[Series<'_>], style: Style) -> String {
    let sx = |v: f64| PAD + (v - x.0) / (x.1 - x.0) * (W - PAD - 10.0);
    let sy = |v: f64| H - PAD - (v - y.0) / (y.1 - y.0) * (H - PAD - 24.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11"><text x="{}" y="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = write!(
        s,
        r##"<rect x="{PAD}" y="24" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        W - PAD - 10.0,
        H - PAD - 24.0
    );
    for k in 0..=4 {
        let fx = x.0 + (x.1 - x.0) * f64::from(k) / 4.0;
        let fy = y.0 + (y.1 - y.0) * f64::from(k) / 4.0;
        let _ =
            write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, sx(fx), H - PAD + 14.0, tick(fx));
        let _ =
            write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, PAD - 4.0, sy(fy) + 4.0, tick(fy));
    }
    let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, W / 2.0, H - 8.0, esc(xl));
    let _ = write!(
        s,
        r#"<text x="12" y="{:.1}" text-anchor="middle" transform="rotate(-90 12 {:.1})">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(yl)
    );
    for (i, (pts, colour, dashed, label)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|(a, b)| format!("{:.1},{:.1}", sx(*a), sy(b.clamp(y.0, y.1))))
            .collect();
        if path.is_empty() {
            continue;
        }
        let dash = if *dashed { r#" stroke-dasharray="5 4""# } else { "" };
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} points="{}"/>"#,
            path.join(" ")
        );
        if style.dots && i == 0 {
            for p in &path {
                let (a, b) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(s, r#"<circle cx="{a}" cy="{b}" r="3" fill="{colour}"/>"#);
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            PAD + 8.0,
            if style.legend_low {
                H - PAD - 12.0 - 13.0 * (series.len() - 1 - i) as f64
            } else {
                40.0 + 13.0 * i as f64
            },
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

fn tick(v: f64) -> String {
    if v.fract().abs() < 1e-9 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// Kaplan-Meier curve as step points up to `end`.
fn steps(km: &super::survival::KmCurve, end: f64) -> Vec<(f64, f64)> {
    let mut pts = vec![(0.0, 1.0)];
    let mut s = 1.0;
    for (t, v) in km.times.iter().zip(&km.surv) {
        if *t > end {
            break;
        }
        pts.push((*t, s));
        pts.push((*t, *v));
        s = *v;
    }
    pts.push((end, s));
    pts
}

fn fmt(v: Num) -> String {
    match v.value() {
        Some(x) if x != 0.0 && x.abs() < 0.001 => format!("{x:.2e}"),
        Some(x) => format!("{x:.3}"),
        None => "n/a".into(),
    }
}

/// The report as one HTML document.
pub fn html(doc: &Metrics, m: &Measures, opts: &ValidateOptions) -> String {
    let h = opts.horizon_months;
    let mut s = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>crlm validate</title><style>
body{font-family:sans-serif;max-width:1120px;margin:24px auto;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px}.note{color:#555;font-size:90%}</style></head><body>"#,
    );
    let _ = write!(
        s,
        "<h1>Validation of the locked predictions</h1><p>Liver metastasis within {h} months of surgery. {} patients, {} events by the horizon; \
         observed risk (Kaplan-Meier) {}, mean predicted risk {}. Locked threshold: {}. 95% intervals: percentile bootstrap, {} replicates, seed {}.</p>",
        doc.n,
        doc.events,
        fmt(doc.observed_risk),
        fmt(doc.mean_predicted_risk),
        fmt(doc.whole.as_ref().map_or(Num(f64::NAN), |w| w.threshold)),
        opts.bootstrap,
        opts.seed
    );
    s.push_str("<h2>Measures</h2><table><tr><th>Measure</th><th>Estimate</th><th>95% CI (bootstrap)</th><th>Analytical 95% CI</th></tr>");
    for name in MEASURES {
        let Some(v) = doc.measures.get(name) else { continue };
        let analytical = v
            .analytical_ci
            .as_ref()
            .map(|a| format!("{} to {} ({})", fmt(a.low), fmt(a.high), a.method))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{} to {}</td><td>{}</td></tr>",
            label(name),
            fmt(v.estimate),
            fmt(v.ci_low),
            fmt(v.ci_high),
            analytical
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>Plots</h2><div class=\"plots\">");
    let diag = vec![(0.0, 0.0), (1.0, 1.0)];
    s.push_str(&plot(
        &format!("Time-dependent ROC at {h} months (IPCW)"),
        "false positive rate",
        "true positive rate",
        (0.0, 1.0),
        (0.0, 1.0),
        &[
            (m.roc.clone(), "#1f5fa8", false, &format!("AUC {}", fmt(doc.estimate("auc_td")))),
            (diag.clone(), "#999", true, "chance"),
        ],
        Style::default(),
    ));
    let maxp = m.deciles.iter().map(|d| d.0.max(d.1)).fold(0.0f64, f64::max).clamp(0.1, 1.0);
    let top = (maxp * 1.1).min(1.0);
    s.push_str(&plot(
        &format!("Calibration at {h} months"),
        "predicted risk",
        "observed risk (Kaplan-Meier)",
        (0.0, top),
        (0.0, top),
        &[
            (m.deciles.iter().map(|d| (d.0, d.1)).collect(), "#1f5fa8", false, "deciles"),
            (m.smooth.clone(), "#d0731c", false, "smoothed"),
            (vec![(0.0, 0.0), (top, top)], "#999", true, "ideal"),
        ],
        Style { dots: true, legend_low: false },
    ));
    let nb_max = m.net_benefit.iter().map(|x| x.1.max(x.2)).fold(0.0f64, f64::max).max(0.01);
    let x_max = 0.6;
    s.push_str(&plot(
        "Decision curve",
        "threshold probability",
        "net benefit",
        (0.0, x_max),
        (-nb_max * 0.2, nb_max * 1.1),
        &[
            (m.net_benefit.iter().filter(|x| x.0 <= x_max).map(|x| (x.0, x.1)).collect(), "#1f5fa8", false, "model"),
            (
                m.net_benefit.iter().filter(|x| x.0 <= x_max).map(|x| (x.0, x.2)).collect(),
                "#d0731c",
                false,
                "treat all",
            ),
            (vec![(0.0, 0.0), (x_max, 0.0)], "#999", true, "treat none"),
        ],
        Style::default(),
    ));
    if let (Some(lo), Some(hi)) = (&m.km_low, &m.km_high) {
        let end = h.max(1.0);
        s.push_str(&plot(
            "Liver-metastasis-free survival by risk group",
            "months after surgery",
            "survival",
            (0.0, end),
            (0.0, 1.0),
            &[(steps(lo, end), "#1f5fa8", false, "low risk"), (steps(hi, end), "#c0392b", false, "high risk")],
            Style { dots: false, legend_low: true },
        ));
        s.push_str("</div><h3>Numbers at risk</h3><table><tr><th>Group</th>");
        let marks: Vec<f64> = (0..=4).map(|k| end * f64::from(k) / 4.0).collect();
        for t in &marks {
            let _ = write!(s, "<th>{t:.0} mo</th>");
        }
        s.push_str("</tr>");
        for (name, km) in [("low risk", lo), ("high risk", hi)] {
            let _ = write!(s, "<tr><td>{name}</td>");
            for t in &marks {
                let _ = write!(s, "<td>{}</td>", km.at_risk_at(*t));
            }
            s.push_str("</tr>");
        }
        let _ = write!(
            s,
            "</table><p>Log-rank chi-square {} (p = {}); Cox hazard ratio high vs low {}.</p>",
            fmt(doc.logrank_chi2),
            fmt(doc.estimate("logrank_p")),
            fmt(doc.estimate("hazard_ratio"))
        );
    } else {
        s.push_str("</div><p>No risk groups: the predictions have no <code>risk_group</code> or <code>threshold</code> and none was given.</p>");
    }

    let (subgroups, excluded) = match &doc.whole {
        Some(w) => (Some(&w.subgroups), w.excluded.as_slice()),
        None => (None, &[][..]),
    };
    if let Some(sub) = subgroups.filter(|o| !o.is_empty()) {
        s.push_str("<h2>Subgroups</h2>");
        for (key, rows) in sub {
            let _ = write!(s, "<h3>By {}</h3><table><tr><th>{}</th><th>n</th><th>events</th>", esc(key), esc(key));
            for name in SUBGROUP_MEASURES {
                let _ = write!(s, "<th>{}</th>", label(name));
            }
            s.push_str("</tr>");
            for (value, d) in rows {
                let _ = write!(s, "<tr><td>{}</td><td>{}</td><td>{}</td>", esc(value), d.n, d.events);
                for name in SUBGROUP_MEASURES {
                    let (est, lo, hi) = d
                        .measures
                        .get(name)
                        .map_or((Num(f64::NAN), Num(f64::NAN), Num(f64::NAN)), |m| (m.estimate, m.ci_low, m.ci_high));
                    let _ = write!(s, "<td>{} ({} to {})</td>", fmt(est), fmt(lo), fmt(hi));
                }
                s.push_str("</tr>");
            }
            s.push_str("</table>");
        }
    }

    let _ = write!(s, "<h2>Excluded rows ({})</h2>", excluded.len());
    if !excluded.is_empty() {
        s.push_str("<table><tr><th>File</th><th>Row</th><th>Pseudonym</th><th>Reason</th></tr>");
        for e in excluded {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(e.file),
                e.row,
                esc(&e.pseudonym),
                esc(&e.reason)
            );
        }
        s.push_str("</table>");
    }
    s.push_str(
        "<h2>TRIPOD+AI items covered</h2><ul>\
<li>7a/7b: outcome definition and horizon (liver metastasis within the horizon; time from surgery; censoring).</li>\
<li>9: handling of missing data in the evaluation (every excluded row listed with its reason).</li>\
<li>12a/12e: performance measures: discrimination (time-dependent AUC, Harrell's and Uno's C, binary AUC), calibration (plot, O/E, slope, ICI), overall (Brier, IPA), clinical utility (decision curve).</li>\
<li>12f/23: uncertainty: 95% confidence intervals (percentile bootstrap; DeLong and Wald where standard).</li>\
<li>20a/20b: participants: numbers, events, numbers at risk.</li>\
<li>23a/23b: model performance, including subgroups (centre, stage) where recorded.</li>\
<li>14 (AI): the predictions come from the locked, signed ledger (model hash in the export).</li>\
</ul><p class=\"note\">Methods: IPCW with the Kaplan-Meier estimate of censoring (events before censorings at tied times), as scikit-survival; decision curve for a time-to-event outcome as dcurves (Kaplan-Meier risk among those above the threshold). See docs/VALIDATION.md.</p></body></html>",
    );
    s
}

fn label(name: &str) -> &'static str {
    match name {
        "auc_td" => "Time-dependent AUC (cumulative/dynamic, IPCW)",
        "c_harrell" => "Harrell's C (truncated at the horizon)",
        "c_uno" => "Uno's C (truncated at the horizon)",
        "auc_binary" => "Binary AUC, patients with known status",
        "brier" => "Brier score (IPCW)",
        "ipa" => "Scaled Brier (IPA)",
        "calibration_slope" => "Calibration slope",
        "oe_ratio" => "Observed / expected",
        "ici" => "ICI",
        "e50" => "E50",
        "e90" => "E90",
        "sensitivity" => "Sensitivity (high-risk group)",
        "specificity" => "Specificity",
        "ppv" => "PPV",
        "npv" => "NPV",
        "logrank_p" => "Log-rank p",
        "hazard_ratio" => "Hazard ratio, high vs low (Cox)",
        _ => "?",
    }
}

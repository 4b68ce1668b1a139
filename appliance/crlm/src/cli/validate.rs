use super::*;

#[derive(Args)]
pub struct ValidateArgs {
    #[command(subcommand)]
    pub action: Option<ValidateAction>,
    /// The ledger export (`crlm ledger export --format csv`) or any CSV with pseudonym and risk_2y.
    #[arg(long, required = true)]
    pub predictions: Option<PathBuf>,
    /// pseudonym, time_months (or time_days), event (1 liver metastasis, 0 censored) [, centre, stage].
    #[arg(long, required = true)]
    pub outcomes: Option<PathBuf>,
    #[arg(long, default_value_t = 24.0)]
    pub horizon_months: f64,
    /// Bootstrap replicates for the 95% intervals.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 20261127)]
    pub seed: u64,
    /// The locked threshold, when the predictions carry no risk_group or threshold.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Folder for metrics.json and report.html.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ValidateAction {
    /// The precision (95% interval widths) of the AUC, O/E and calibration slope a study of N can expect.
    SampleSize {
        #[arg(long, default_value_t = 160)]
        n: usize,
        /// Expected proportion with liver metastasis by the horizon.
        #[arg(long, default_value_t = 0.15)]
        event_rate: f64,
        /// Expected AUC (C statistic).
        #[arg(long, default_value_t = 0.75)]
        auc: f64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    match args {
        ValidateArgs { action: Some(ValidateAction::SampleSize { n, event_rate, auc, json }), .. } => {
            if !(n >= 10 && event_rate > 0.0 && event_rate < 1.0 && auc > 0.5 && auc < 1.0) {
                eprintln!("crlm validate sample-size: need --n >= 10, 0 < --event-rate < 1, 0.5 < --auc < 1");
                return Ok(ExitCode::from(2));
            }
            use crlm_validate::sample_size::precision;
            let sizes: Vec<usize> = [n, 100, 160, 250, 400, 800]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let rows: Vec<_> = sizes.iter().map(|&k| precision(k, event_rate, auc)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "event rate {event_rate}, AUC {auc} (Riley et al. 2021; linear predictor normal on the logit scale)"
                );
                println!(
                    "{:>6} {:>8} {:>16} {:>18} {:>24}",
                    "n", "events", "AUC 95% CI width", "O/E 95% CI", "cal. slope 95% CI width"
                );
                for r in &rows {
                    println!(
                        "{:>6} {:>8.0} {:>16.3} {:>18} {:>24.3}{}",
                        r.n,
                        r.expected_events,
                        r.auc_ci_width,
                        format!("{:.2} to {:.2}", r.oe_ci.0, r.oe_ci.1),
                        r.calibration_slope_ci_width,
                        if r.n == n { "   <- asked" } else { "" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }

        ValidateArgs { action: None, predictions, outcomes, horizon_months, bootstrap, seed, threshold, out } => {
            let (Some(predictions), Some(outcomes), Some(out)) = (predictions, outcomes, out) else {
                eprintln!("crlm validate: --predictions, --outcomes and --out are required");
                return Ok(ExitCode::from(2));
            };
            if !(horizon_months.is_finite() && horizon_months > 0.0) {
                eprintln!("crlm validate: --horizon-months must be positive");
                return Ok(ExitCode::from(2));
            }
            let opts = crlm_validate::ValidateOptions {
                predictions,
                outcomes,
                horizon_months,
                bootstrap,
                seed,
                threshold,
                out: out.clone(),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let m = crlm_validate::run(&opts)?;
            let est = |k: &str| m.estimate(k).value().map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
            println!(
                "{} patients, {} events by {horizon_months} months ({} rows excluded, see the report)",
                m.n,
                m.events,
                m.whole.as_ref().map_or(0, |w| w.excluded.len())
            );
            println!(
                "time-dependent AUC {}  Harrell's C {}  Uno's C {}  Brier {}  IPA {}  O/E {}  slope {}",
                est("auc_td"),
                est("c_harrell"),
                est("c_uno"),
                est("brier"),
                est("ipa"),
                est("oe_ratio"),
                est("calibration_slope")
            );
            println!("report: {}  metrics: {}", out.join("report.html").display(), out.join("metrics.json").display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

use super::*;

#[derive(Args)]
pub struct CasesArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CasesArgs) -> anyhow::Result<ExitCode> {
    let CasesArgs { config, json } = args;
    let path = config_path(config);
    let cfg = match load_config(path.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let db_path = cfg.database_path();
    if !db_path.exists() {
        anyhow::bail!("no state database at {} (has `crlm run` started with this configuration?)", db_path.display());
    }
    let db = crlm_state::StateDb::open_read_only(&db_path).with_context(|| format!("opening {}", db_path.display()))?;
    let rows = db.cases()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_cases(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// A readable table of cases.
pub fn print_cases(rows: &[crlm_state::CaseRow]) {
    println!("{:<16} {:<12} {:<34} reasons", "case", "state", "modalities");
    for r in rows {
        let m = |k: &str, found: bool| format!("{k}:{}", if found { "yes" } else { "no" });
        println!(
            "{:<16} {:<12} {:<34} {}",
            r.pseudonym,
            r.state,
            format!(
                "{} {} {}",
                m("ct", r.modalities.has_ct()),
                m("slide", r.modalities.has_slide()),
                m("clinical", r.modalities.has_clinical())
            ),
            if r.reasons.is_empty() { "-".to_string() } else { r.reasons.join("; ") }
        );
        let choice: Option<crlm_ingest::series::SeriesChoice> =
            r.series_choice.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok());
        let Some(choice) = choice else { continue };
        if let Some(c) = &choice.chosen {
            println!(
                "{:<16} CT series chosen: \"{}\", {} slices",
                "",
                c.description.as_deref().unwrap_or("?"),
                c.slices
            );
        }
        for rej in &choice.rejected {
            println!(
                "{:<16} CT series rejected: \"{}\": {}",
                "",
                rej.series.description.as_deref().unwrap_or("?"),
                rej.reason
            );
        }
    }
}

use super::*;

#[derive(Args)]
pub struct PredictArgs {
    pub case_dir: PathBuf,
    /// Model package folder or .tar (default: model.path from the configuration, else the built-in demo).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the whole result document as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the slide thumbnail with tile attention (pathologist QC; never on the study display).
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Where the network runs: candle or onnx (default: model.backend from the configuration).
    #[arg(long)]
    pub backend: Option<BackendKind>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let PredictArgs { case_dir, model, config, json, heatmap, backend } = args;
    let cfg = match load_config(config_path(config).as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let kind = backend.unwrap_or(cfg.model.backend);
    let model = crlm_predict::load_model_on(&cfg, model.as_deref(), kind)?;
    let result = crlm_predict::predict_case(&case_dir, &model, &cfg)?;
    if let Some(out) = &heatmap {
        for p in crlm_predict::write_heatmaps(&result, out, &cfg)? {
            eprintln!("attention map: {}", p.display());
        }
    }
    if json {
        // Through a Value, whose keys are sorted (docs/MODEL.md).
        println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&result.doc)?)?);
    } else {
        let identity = crlm_models::case::ModelIdentity::of(&model);
        print!("{}", result.summary(&identity));
    }
    Ok(if result.output.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

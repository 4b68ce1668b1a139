use super::*;

#[derive(Args)]
pub struct RunArgs {
    /// Configuration file (default: $CRLM_CONFIG, else /etc/crlm/crlm.toml if present, else built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs { config } = args;
    let path = config_path(config);
    let cfg = match load_config(path.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    init_logging(&cfg);
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(stage = "service", "stop signal received; finishing the scan in flight");
            let _ = stop_tx.send(true);
        });
        let watchdog: std::sync::Arc<dyn crlm_drivers::watchdog::Watchdog> =
            std::sync::Arc::from(crlm_drivers::watchdog::from_environment());
        crlm_service::run(cfg, watchdog, stop_rx, |_| {}).await
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

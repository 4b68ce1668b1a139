use super::*;

#[derive(Args)]
pub struct DemoArgs {
    /// Process this folder of exports instead of a generated case.
    #[arg(long)]
    pub share: Option<PathBuf>,
    /// Work folder for the demo's share and state.
    #[arg(long, default_value = "crlm-demo")]
    pub work: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_seconds: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs { share, work, timeout_seconds } = args;
    let cfg =
        Config { log: crlm_config::LogConfig { level: "warn".into(), target: "stderr".into() }, ..Config::default() };
    init_logging(&cfg);
    println!(
        "crlm demo: the appliance's path on {}",
        if share.is_some() { "your exports" } else { "a generated case" }
    );
    let rt = runtime()?;
    let rows = rt.block_on(crate::demo::run(crate::demo::DemoOptions {
        work,
        share,
        timeout: std::time::Duration::from_secs(timeout_seconds),
    }))?;
    let locked_ok = rows.iter().any(|r| r.state == crlm_state::CaseState::Predicted && r.outputs_written);
    if locked_ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("crlm demo: no case was predicted and locked; see the reasons above");
        Ok(ExitCode::FAILURE)
    }
}

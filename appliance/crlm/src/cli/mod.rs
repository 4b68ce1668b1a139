//! One module per command: its arguments (clap) and what it prints. The helpers here are the
//! binary's edge: configuration loading with exit status 78, logging, signals.

pub mod broker;
pub mod cases;
pub mod config;
pub mod ct;
#[cfg(feature = "office")]
pub mod demo;
pub mod display;
#[cfg(feature = "office")]
pub mod fleet;
pub mod inspect;
pub mod ledger;
pub mod model;
pub mod predict;
pub mod run;
#[cfg(feature = "synth")]
pub mod synth;
#[cfg(feature = "office")]
pub mod validate;
pub mod wsi;

pub use anyhow::Context;
pub use clap::{Args, Subcommand, ValueEnum};
pub use crlm_config::Config;
pub use crlm_drivers::journal::{self, LogTarget};
pub use crlm_models::backend::BackendKind;
pub use crlm_models::limits::Limits;
pub use std::path::{Path, PathBuf};
pub use std::process::ExitCode;

/// Exit status for an invalid configuration (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// The device's configuration file, used when no --config is given and it exists.
pub const DEVICE_CONFIG: &str = "/etc/crlm/crlm.toml";

/// `--config FILE` for commands that only need the configured limits.
#[derive(Args)]
pub struct ConfigArg {
    /// Configuration file whose `[limits]` apply (default: $CRLM_CONFIG, else /etc/crlm/crlm.toml if present, else built-in defaults).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The configuration, or the exit status after its problems were printed.
    pub fn load(&self) -> Result<Config, ExitCode> {
        load_config(config_path(self.config.clone()).as_deref())
    }
}

/// csv or json (the export commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

/// Let a closed standard output end the process as it ends other command-line tools (SIGPIPE's
/// default action) instead of failing the next write. Only for commands that hold no sockets: the
/// service and the network clients keep Rust's default (SIGPIPE ignored, a failed write is an
/// error), since a peer closing a connection must not end them.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL replaces the disposition of SIGPIPE for this process; it is
    // called once at start-up on the main thread, before any other thread exists, and installs no
    // Rust handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A multi-threaded runtime for the async commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

pub fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit
        .or_else(|| std::env::var_os("CRLM_CONFIG").map(PathBuf::from))
        .or_else(|| Path::new(DEVICE_CONFIG).is_file().then(|| PathBuf::from(DEVICE_CONFIG)))
}

pub fn load_config(file: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|e| {
        eprintln!("crlm: invalid configuration:");
        for p in &e.problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn init_logging(cfg: &Config) {
    let target = match cfg.log.target.as_str() {
        "journal" => LogTarget::Journal,
        "stderr" => LogTarget::Stderr,
        _ => LogTarget::Auto,
    };
    if let Err(e) = journal::init(&cfg.log.level, target) {
        eprintln!("crlm: logging: {e}; continuing with stderr");
        let _ = journal::init(&cfg.log.level, LogTarget::Stderr);
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

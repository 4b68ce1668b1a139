//! `crlm`: the crlm-edge command-line tool and service.
//!
//! A thin binary: it parses arguments (clap), loads the configuration, calls the library crates
//! and prints. Each command lives in `cli/<command>.rs`; the logic lives in the crates they call
//! (docs/ARCHITECTURE.md). Errors are reported here, at the edge, with exit status 1 (78 for a
//! configuration error, so systemd does not restart in a loop).
//!
//! Feature `office` (default) adds the study office's tools: the collector and operators' view
//! (`crlm fleet`), the statistics (`crlm validate`) and `crlm demo`, which runs a collector in
//! process. The device image is built without it.

mod cli;
#[cfg(feature = "synth")]
mod cohort_export;
#[cfg(feature = "office")]
mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "crlm", version, about = "crlm-edge: CRLM risk appliance for the prospective validation study")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: watch the share, assemble cases, quarantine bad input, predict and lock.
    Run(cli::run::RunArgs),
    /// Show the whole path on a generated sample case (or on your own exports with --share).
    #[cfg(feature = "office")]
    Demo(cli::demo::DemoArgs),
    /// The study's statistics from the locked predictions and the outcomes (docs/VALIDATION.md).
    #[cfg(feature = "office")]
    #[command(args_conflicts_with_subcommands = true)]
    Validate(cli::validate::ValidateArgs),
    /// Check or print the configuration.
    Config {
        #[command(subcommand)]
        action: cli::config::ConfigAction,
    },
    /// Say what the appliance sees in a file or folder, changing nothing.
    Inspect(cli::inspect::InspectArgs),
    /// Write synthetic test data with the project's own writers.
    #[cfg(feature = "synth")]
    Synth {
        #[command(subcommand)]
        action: cli::synth::SynthAction,
    },
    /// Whole-slide image tools.
    Wsi {
        #[command(subcommand)]
        action: cli::wsi::WsiAction,
        #[command(flatten)]
        config: cli::ConfigArg,
    },
    /// CT tools.
    Ct {
        #[command(subcommand)]
        action: cli::ct::CtAction,
        #[command(flatten)]
        config: cli::ConfigArg,
    },
    /// Front-panel tools.
    Display {
        #[command(subcommand)]
        action: cli::display::DisplayAction,
    },
    /// Predict one case folder (CT DICOM, slides, clinical file) without the service.
    /// Exit status 0: predicted; 2: refused (not eligible, or modalities the package forbids).
    Predict(cli::predict::PredictArgs),
    /// Model packages: inspect, verify, sign, make keys, pack, benchmark.
    Model {
        #[command(subcommand)]
        action: cli::model::ModelAction,
    },
    /// The prediction ledger: verify the chain and signatures, show a record, export.
    Ledger {
        #[command(subcommand)]
        action: cli::ledger::LedgerAction,
    },
    /// The study office's side of fleet reporting: collect results, watch the fleet, export.
    #[cfg(feature = "office")]
    Fleet {
        #[command(subcommand)]
        action: cli::fleet::FleetAction,
    },
    /// Run the embedded MQTT broker alone (development, tests, a site without a broker).
    Broker(cli::broker::BrokerArgs),
    /// List cases from the state database.
    Cases(cli::cases::CasesArgs),
}

/// Single allocations over the calling thread's cap are refused: the backstop that turns a
/// hostile DICOM length dicom-rs would allocate into a read error (crlm_models::memory).
#[global_allocator]
static ALLOCATOR: crlm_models::memory::CappedAllocator = crlm_models::memory::CappedAllocator::new();

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if command.prints_only() {
        cli::default_sigpipe();
    }
    match dispatch(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crlm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Commands that only print (no sockets): a closed pipe (`crlm ... | head`) ends them quietly,
    /// as it ends other command-line tools, instead of a panic on the failed write.
    fn prints_only(&self) -> bool {
        match self {
            Command::Run(_) | Command::Broker(_) => false,
            #[cfg(feature = "office")]
            Command::Demo(_) => false,
            #[cfg(feature = "office")]
            Command::Fleet { action } => !action.uses_network(),
            _ => true,
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => cli::run::run(args),
        #[cfg(feature = "office")]
        Command::Demo(args) => cli::demo::run(args),
        #[cfg(feature = "office")]
        Command::Validate(args) => cli::validate::run(args),
        Command::Config { action } => cli::config::run(action),
        Command::Inspect(args) => cli::inspect::run(args),
        #[cfg(feature = "synth")]
        Command::Synth { action } => cli::synth::run(action),
        Command::Wsi { action, config } => match config.load() {
            Ok(cfg) => cli::wsi::run(action, &cfg.limits),
            Err(code) => Ok(code),
        },
        Command::Ct { action, config } => match config.load() {
            Ok(cfg) => cli::ct::run(action, &cfg),
            Err(code) => Ok(code),
        },
        Command::Display { action } => cli::display::run(action),
        Command::Predict(args) => cli::predict::run(args),
        Command::Model { action } => cli::model::run(action),
        Command::Ledger { action } => cli::ledger::run(action),
        #[cfg(feature = "office")]
        Command::Fleet { action } => cli::fleet::run(action),
        Command::Broker(args) => cli::broker::run(args),
        Command::Cases(args) => cli::cases::run(args),
    }
}

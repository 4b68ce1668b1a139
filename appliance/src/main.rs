//! `crlm`: the crlm-edge command-line tool and service. Errors are reported here, at the edge,
//! with exit status 1 (78 for a configuration error, so systemd does not restart in a loop).

use anyhow::Context;
use clap::{Parser, Subcommand};
use crlm_appliance::config::{Config, DEFAULT_TOML};
use crlm_appliance::{demo, ingest, service, state};
use crlm_drivers::journal::{self, LogTarget};
use crlm_models::backend::BackendKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit status for an invalid configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// The device's configuration file, used when no --config is given and it exists.
const DEVICE_CONFIG: &str = "/etc/crlm/crlm.toml";

#[derive(Parser)]
#[command(name = "crlm", version, about = "crlm-edge: CRLM risk appliance for the prospective validation study")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: watch the share, assemble cases, quarantine bad input.
    Run {
        /// Configuration file (default: $CRLM_CONFIG, else /etc/crlm/crlm.toml if present, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the whole path on a generated sample case (or on your own exports with --share).
    Demo {
        /// Process this folder of exports instead of a generated case.
        #[arg(long)]
        share: Option<PathBuf>,
        /// Work folder for the demo's share and state.
        #[arg(long, default_value = "crlm-demo")]
        work: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
    },
    /// The study's statistics from the locked predictions and the outcomes (docs/VALIDATION.md).
    #[command(args_conflicts_with_subcommands = true)]
    Validate {
        #[command(subcommand)]
        action: Option<ValidateAction>,
        /// The ledger export (`crlm ledger export --format csv`) or any CSV with pseudonym and risk_2y.
        #[arg(long, required = true)]
        predictions: Option<PathBuf>,
        /// pseudonym, time_months (or time_days), event (1 liver metastasis, 0 censored) [, centre, stage].
        #[arg(long, required = true)]
        outcomes: Option<PathBuf>,
        #[arg(long, default_value_t = 24.0)]
        horizon_months: f64,
        /// Bootstrap replicates for the 95% intervals.
        #[arg(long, default_value_t = 2000)]
        bootstrap: usize,
        #[arg(long, default_value_t = 20261127)]
        seed: u64,
        /// The locked threshold, when the predictions carry no risk_group or threshold.
        #[arg(long)]
        threshold: Option<f64>,
        /// Folder for metrics.json and report.html.
        #[arg(long, required = true)]
        out: Option<PathBuf>,
    },
    /// Check or print the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Say what the appliance sees in a file or folder, changing nothing.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write synthetic test data with the project's own writers.
    Synth {
        #[command(subcommand)]
        action: SynthAction,
    },
    /// Whole-slide image tools.
    Wsi {
        #[command(subcommand)]
        action: WsiAction,
    },
    /// CT tools.
    Ct {
        #[command(subcommand)]
        action: CtAction,
    },
    /// Front-panel tools.
    Display {
        #[command(subcommand)]
        action: DisplayAction,
    },
    /// Predict one case folder (CT DICOM, slides, clinical file) without the service.
    /// Exit status 0: predicted; 2: refused (not eligible, or modalities the package forbids).
    Predict {
        case_dir: PathBuf,
        /// Model package folder or .tar (default: model.path from the configuration, else the built-in demo).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the whole result document as JSON.
        #[arg(long)]
        json: bool,
        /// Write the slide thumbnail with tile attention (pathologist QC; never on the study display).
        #[arg(long)]
        heatmap: Option<PathBuf>,
        /// Where the network runs: candle or onnx (default: model.backend from the configuration).
        #[arg(long)]
        backend: Option<BackendKind>,
    },
    /// Model packages: inspect, verify, sign, make keys, pack, benchmark.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// The prediction ledger: verify the chain and signatures, show a record.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// The study office's side of fleet reporting: collect results, export them.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Run the embedded MQTT broker alone (development, tests, a site without a broker).
    Broker {
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// Listen on every interface instead of loopback only.
        #[arg(long)]
        public: bool,
    },
    /// List cases from the state database.
    Cases {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WsiAction {
    /// Levels, downsamples, resolution, scanner and associated images of a slide.
    Info {
        slide: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the tissue mask (computed on a low-resolution level) as PNG.
    Tissue {
        slide: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// List tissue tiles in level-0 pixels (row-major, deterministic).
    Tiles {
        slide: PathBuf,
        /// Microns per pixel of the tiles.
        #[arg(long, default_value_t = 0.5)]
        mpp: f64,
        /// Tile edge in pixels at that resolution.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Least tissue fraction of a kept tile.
        #[arg(long, default_value_t = 0.5)]
        min_tissue: f64,
        #[arg(long)]
        json: bool,
    },
    /// Read and decode regions (default: every native tile of level 0) and report throughput.
    Bench {
        slide: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Region edge in pixels (default: the level's tile size).
        #[arg(long)]
        size: Option<u32>,
        /// A JSON file of [[x, y], ...] level-0 origins (default: the native tile grid).
        #[arg(long)]
        origins: Option<PathBuf>,
    },
    /// Write a region as PNG; x and y are level-0 pixels, as in OpenSlide's read_region.
    Region {
        slide: PathBuf,
        #[arg(long, default_value_t = 0)]
        level: usize,
        #[arg(long)]
        x: i64,
        #[arg(long)]
        y: i64,
        #[arg(long)]
        width: u32,
        #[arg(long)]
        height: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SynthAction {
    /// A sample case folder: contrast CT series, pyramidal slide, clinical file.
    Case {
        dir: PathBuf,
        #[arg(long, default_value = "SYNTH-0001")]
        patient_id: String,
        #[arg(long, default_value_t = 24)]
        slices: u32,
        /// Also write a DICOM SEG of the phantom's liver (the CT crop is centred on it).
        #[arg(long)]
        segmentation: bool,
    },
    /// A patient of the synthetic cohort (docs/MODEL.md) as a case folder.
    Patient {
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Latent risk scores (CT, pathology, clinical); `high` = 1.5 each, `low` = -1.5 each.
        #[arg(long)]
        risk: Option<String>,
        /// Leave out modalities: any of ct, slide, clinical (comma-separated).
        #[arg(long, default_value = "")]
        without: String,
    },
    /// The synthetic training cohort as model inputs (safetensors) for models/reference/train_demo.py.
    Cohort {
        #[arg(long)]
        out: PathBuf,
        /// model.toml whose input spec (CT grid, tiles, clinical encoding) to prepare for.
        #[arg(long, default_value = "models/packages/demo/model.toml")]
        spec: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1300)]
        patients: u32,
    },
    /// A CT series of the given size (benchmarks): `--size 512 --slices 300`.
    Ct {
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        slices: u32,
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// explicit or implicit (VR little endian).
        #[arg(long, default_value = "explicit")]
        syntax: String,
    },
}

/// TLS for `--broker mqtts://...` (PEM files).
#[derive(clap::Args)]
struct TlsArgs {
    /// The CA that signed the broker's certificate (default: the system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// This client's certificate, for brokers that require one (mutual TLS).
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// This client's private key.
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The broker as an MQTT configuration; `--broker` must be mqtt:// or mqtts://.
    fn broker(self, url: String) -> anyhow::Result<crlm_appliance::config::MqttConfig> {
        let m = crlm_appliance::config::MqttConfig {
            url,
            ca_file: self.ca_file.unwrap_or_default(),
            client_cert_file: self.cert_file.unwrap_or_default(),
            client_key_file: self.key_file.unwrap_or_default(),
            ..Default::default()
        };
        m.endpoint().map_err(|e| anyhow::anyhow!("--broker: {e}"))?;
        if !m.tls() && !m.ca_file.as_os_str().is_empty() {
            anyhow::bail!("--ca-file needs --broker mqtts://host:port");
        }
        Ok(m)
    }
}

#[derive(Subcommand)]
enum ValidateAction {
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

#[derive(Subcommand)]
enum FleetAction {
    /// Receive every box's results and alerts into DB, verify them, acknowledge with countersignatures.
    Collect {
        /// mqtt://host:port of the central broker.
        #[arg(long)]
        broker: String,
        #[arg(long)]
        db: PathBuf,
        /// The collector's signing key (made on first use, with KEY.pub beside it for the boxes).
        #[arg(long, default_value = "collector.key")]
        key: PathBuf,
        /// Folder of registered boxes' device.pub files (any name ending .pub).
        #[arg(long)]
        devices: Option<PathBuf>,
        /// MQTT client id (one per collector: the broker keeps its session).
        #[arg(long, default_value = "crlm-collector")]
        client_id: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// The operator's view: every box's health, heartbeat, outbox, disk, load and last alert, live.
    Watch {
        /// mqtt://host:port of the central broker.
        #[arg(long)]
        broker: String,
        /// One JSON object per message instead of the table (for scripts and log shippers).
        #[arg(long)]
        json: bool,
        /// Refresh the table this often (seconds).
        #[arg(long, default_value_t = 2.0)]
        every: f64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Every centre's locked predictions in the ledger-export columns, plus site and device.
    Export {
        #[arg(long)]
        db: PathBuf,
        /// csv or json.
        #[arg(long, default_value = "csv")]
        format: String,
    },
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Check every record (form, sequence, chain, signature) and the head; exit 1 naming the first bad one.
    Verify {
        /// Ledger folder (default: <state.path>/ledger).
        path: Option<PathBuf>,
        /// Device public key file (default: <state.path>/keys/device.pub).
        #[arg(long)]
        key: Option<PathBuf>,
        /// A collector's public key file whose countersignatures count (besides ledger.collector_keys).
        #[arg(long = "collector-key")]
        collector_keys: Vec<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One row per locked prediction or refusal for the statisticians (the ledger is verified first).
    Export {
        /// Ledger folder (default: <state.path>/ledger).
        path: Option<PathBuf>,
        /// csv or json.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device public key file (default: <state.path>/keys/device.pub).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print record N (0-based sequence number) as JSON.
    Show {
        seq: u64,
        path: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// Name, version, hash, signer, inputs and allowed modalities of a package (verified first).
    Info {
        /// Package folder or .tar (default: the configured model, else the built-in demo).
        package: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Also build the network on this backend and show what runs it (provider, precision).
        #[arg(long)]
        backend: Option<BackendKind>,
    },
    /// Write CRLM-Net's parts as ONNX graphs (opset 17) from a package's weights: a new package
    /// folder OUT with the graphs and an [onnx] table, signed with KEY.
    ExportOnnx {
        package: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Signing key for the new package (the demo's: models/packages/demo.key).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// INT8 (QDQ) graphs calibrated on the case folders in CALIBRATION: a new package folder OUT,
    /// signed with KEY. The CT and tile encoders become INT8; the rest stays fp32.
    Quantize {
        package: Option<PathBuf>,
        /// A folder of case folders (as `crlm predict` reads them), e.g. from `crlm synth patient`.
        #[arg(long)]
        calibration: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Convolutions to keep in fp32, comma-separated (ct.conv.conv1, ..., slide.conv.conv3).
        #[arg(long, default_value = "")]
        keep_fp32: String,
        /// Each activation's int8 range covers this percentile of |x| over the calibration cases (100: the
        /// maximum, the best on the demo model: docs/BACKENDS.md).
        #[arg(long, default_value_t = 100.0)]
        percentile: f64,
    },
    /// Check every hash, the signature and the signer's trust; exit 1 naming the file that fails.
    Verify {
        package: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write MANIFEST.sha256 and SIGNATURE.json for a package folder.
    Sign {
        package: PathBuf,
        /// Signing key (hex seed file); see `crlm model keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Create the key first when the file does not exist.
        #[arg(long)]
        generate_key: bool,
    },
    /// Create an Ed25519 key pair: KEY (private, mode 0600) and the public key beside it (extension .pub).
    Keygen { key: PathBuf },
    /// Write a verified package folder as a reproducible .tar.
    Pack {
        package: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run two packages (or one package on two backends) on the same case folders and report how
    /// far their risks differ and how many risk groups change (e.g. INT8 against fp32).
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// A folder of case folders.
        #[arg(long)]
        cases: PathBuf,
        #[arg(long, default_value = "candle")]
        backend_a: BackendKind,
        #[arg(long, default_value = "onnx")]
        backend_b: BackendKind,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Time the network on this machine: ms per CT volume, tiles per second for the tile encoder.
    Bench {
        package: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        tiles: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        #[arg(long, default_value = "candle")]
        backend: BackendKind,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CtAction {
    /// Decode a CT series into a Hounsfield-unit volume and write NIfTI-1 (.nii or .nii.gz).
    Volume {
        /// Folder holding the series (other files are ignored).
        series_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// SeriesInstanceUID, when the folder holds several CT series.
        #[arg(long)]
        series: Option<String>,
        /// Print the geometry report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DisplayAction {
    /// Render one screen to a PNG file.
    Render {
        /// status, ingest, processing, result or problem.
        #[arg(long)]
        screen: String,
        /// Panel state as JSON (see docs/DISPLAY.md); or --example.
        #[arg(long, conflicts_with = "example")]
        state: Option<PathBuf>,
        /// Use the built-in example state.
        #[arg(long)]
        example: bool,
        #[arg(long)]
        out: PathBuf,
        /// WIDTHxHEIGHT.
        #[arg(long, default_value = "480x320")]
        size: String,
        /// open or blinded (the study default).
        #[arg(long, default_value = "blinded")]
        mode: String,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a configuration file (with CRLM_* environment overrides applied).
    Check { file: PathBuf },
    /// Print the annotated default configuration.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crlm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit
        .or_else(|| std::env::var_os("CRLM_CONFIG").map(PathBuf::from))
        .or_else(|| Path::new(DEVICE_CONFIG).is_file().then(|| PathBuf::from(DEVICE_CONFIG)))
}

fn load_config(file: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|e| {
        eprintln!("crlm: invalid configuration:");
        for p in &e.problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `crlm fleet watch`: the table (redrawn in place on a terminal) or JSON lines, until Ctrl-C.
async fn fleet_watch(broker: crlm_appliance::config::MqttConfig, json: bool, every: f64) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let client_id = format!("crlm-fleet-watch-{}", std::process::id());
    let shown = broker.url.clone();
    let tap = tokio::spawn(crlm_appliance::fleet::tap(broker, client_id, tx, stop_rx));
    let started = std::time::Instant::now();
    let mut view = crlm_appliance::fleet::FleetView::default();
    let mut redraw = tokio::time::interval(std::time::Duration::from_secs_f64(every.max(0.2)));
    let tty = std::io::stdout().is_terminal();
    let signal = wait_for_signal();
    tokio::pin!(signal);
    eprintln!("watching crlm/# on {shown} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some((topic, mut payload)) = m else { break };
                if json {
                    // The signed record is for the collector; the watcher shows the message.
                    if let Some(o) = payload.as_object_mut() {
                        o.remove("record");
                    }
                    let line = serde_json::json!({
                        "received_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        "topic": topic,
                        "payload": payload,
                    });
                    println!("{line}");
                    let _ = std::io::stdout().flush();
                } else {
                    view.update(&topic, &payload, started.elapsed().as_secs_f64());
                }
            }
            _ = redraw.tick(), if !json => {
                let table = view.render(started.elapsed().as_secs_f64());
                let mut out = std::io::stdout().lock();
                // On a terminal the table is redrawn in place; into a file, appended with a time.
                let _ = if tty {
                    write!(out, "\x1b[2J\x1b[H{table}")
                } else {
                    writeln!(out, "# {}\n{table}", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                };
                let _ = out.flush();
            }
            _ = &mut signal => break,
        }
    }
    let _ = stop_tx.send(true);
    if let Ok(Ok(Err(e))) = tokio::time::timeout(std::time::Duration::from_secs(2), tap).await {
        anyhow::bail!("{e}");
    }
    Ok(())
}

fn init_logging(cfg: &Config) {
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

fn ledger_command(action: LedgerAction) -> anyhow::Result<ExitCode> {
    use crlm_appliance::ledger;
    let state_dir = |config: Option<PathBuf>| load_config(config_path(config).as_deref()).map(|c| c.state.path);
    match action {
        LedgerAction::Verify { path, key, collector_keys, config } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let state = cfg.state.path.clone();
            let dir = path.unwrap_or_else(|| state.join("ledger"));
            let public = ledger::read_public_key(&key.unwrap_or_else(|| state.join("keys").join("device.pub")))?;
            let r = ledger::verify(&dir, &public)?;
            match &r.first_bad {
                None => {
                    println!(
                        "{}: OK, {} records, chain and signatures intact (head at {:?})",
                        dir.display(),
                        r.records,
                        r.head_seq
                    );
                    let mut keys = Vec::new();
                    for k in cfg.ledger.collector_keys.iter().chain(&collector_keys) {
                        keys.push(ledger::read_public_key(k)?);
                    }
                    let records = ledger::read_records(&dir)?;
                    let proof = ledger::countersign::check(&dir, &records, &ledger::key_id(&public), &keys)?;
                    match &proof.proven_up_to {
                        Some((seq, at, by)) => println!(
                            "lock time proven by a second party up to record {seq}: collector {by} countersigned it at {at} ({} of {} countersignatures valid)",
                            proof.valid, proof.countersignatures
                        ),
                        None if proof.countersignatures == 0 => println!(
                            "no collector countersignatures yet: the lock times rest on this device's clock alone"
                        ),
                        None => println!("no countersignature could be checked ({} present)", proof.countersignatures),
                    }
                    for u in &proof.unchecked {
                        println!("  not checked: {u}");
                    }
                    if !proof.contradictions.is_empty() {
                        for c in &proof.contradictions {
                            println!("  CONTRADICTION: {c}");
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some((line, why)) => {
                    println!(
                        "{}: BAD at record {} (line {line}): {why}; {} records before it verify",
                        dir.display(),
                        line.saturating_sub(1),
                        r.records
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        LedgerAction::Export { path, format, out, key, config } => {
            let state = match state_dir(config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let dir = path.unwrap_or_else(|| state.join("ledger"));
            let public = ledger::read_public_key(&key.unwrap_or_else(|| state.join("keys").join("device.pub")))?;
            let r = ledger::verify(&dir, &public)?;
            if let Some((line, why)) = &r.first_bad {
                eprintln!("crlm ledger export: refused, the ledger does not verify at line {line}: {why}");
                return Ok(ExitCode::FAILURE);
            }
            let rows = ledger::export::rows(&ledger::read_records(&dir)?);
            let bytes = match format.as_str() {
                "csv" => ledger::export::to_csv(&rows)?,
                "json" => serde_json::to_vec_pretty(&ledger::export::to_json(&rows, &ledger::key_id(&public)))?,
                other => {
                    eprintln!("crlm ledger export: --format {other}: use csv or json");
                    return Ok(ExitCode::from(2));
                }
            };
            match out {
                Some(p) => {
                    std::fs::write(&p, &bytes).with_context(|| p.display().to_string())?;
                    eprintln!("{} rows written to {}", rows.len(), p.display());
                }
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerAction::Show { seq, path, config } => {
            let state = match state_dir(config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let file = path.unwrap_or_else(|| state.join("ledger")).join(ledger::LEDGER_FILE);
            let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let line = text
                .lines()
                .nth(seq as usize)
                .ok_or_else(|| anyhow::anyhow!("no record {seq} in {}", file.display()))?;
            let v: serde_json::Value = serde_json::from_str(line)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The case folders directly inside `dir`, sorted (calibration and comparison sets).
fn case_folders(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|d| d.is_dir()).collect();
    dirs.sort();
    Ok(dirs)
}

/// The package's ONNX graphs and their declared interfaces (unreadable ones are left out).
fn onnx_graphs(p: &crlm_models::package::ModelPackage) -> Vec<(&'static str, String, crlm_models::onnx::GraphIo)> {
    let Some(onnx) = &p.spec.onnx else { return Vec::new() };
    onnx.parts()
        .into_iter()
        .filter_map(|(part, g, _, _)| {
            let io = crlm_models::onnx::GraphIo::read(&g.file, p.file(&g.file)?).ok()?;
            Some((part, g.file.clone(), io))
        })
        .collect()
}

fn model_command(action: ModelAction) -> anyhow::Result<ExitCode> {
    use crlm_models::package::{self, ModelPackage, TrustStore, signing};
    let load = |pkg: Option<PathBuf>, config: Option<PathBuf>| -> anyhow::Result<Result<ModelPackage, ExitCode>> {
        let cfg = match load_config(config_path(config).as_deref()) {
            Ok(c) => c,
            Err(code) => return Ok(Err(code)),
        };
        let trust = TrustStore::from_files(&cfg.model.trusted_keys)?;
        let source = crlm_appliance::predict::package_source(&cfg, pkg.as_deref());
        Ok(ModelPackage::load(&source, &trust).map_err(|e| {
            eprintln!("crlm: {}: REFUSED: {e}", source.describe());
            ExitCode::FAILURE
        }))
    };
    match action {
        ModelAction::Verify { package, config } => match load(package, config)? {
            Ok(p) => {
                println!(
                    "{}: OK ({} files, sha256 {}, signed by {} [{:?}])",
                    p.source.describe(),
                    p.files.len(),
                    p.sha256,
                    p.signer_key_id,
                    p.trust
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Info { package, config, json, backend } => match load(package.clone(), config.clone())? {
            Ok(p) => {
                let s = &p.spec;
                let running = match backend {
                    Some(kind) => {
                        let cfg = match load_config(config_path(config).as_deref()) {
                            Ok(c) => c,
                            Err(code) => return Ok(code),
                        };
                        let m = crlm_appliance::predict::load_model_on(&cfg, package.as_deref(), kind)?;
                        Some(m.backend_info())
                    }
                    None => None,
                };
                let graphs = onnx_graphs(&p);
                let doc = serde_json::json!({
                    "source": p.source.describe(), "sha256": p.sha256, "signer_key_id": p.signer_key_id,
                    "trust": p.trust, "spec": s,
                    "backends": {
                        "candle": p.weights().is_some(),
                        "onnx": s.onnx.as_ref().map(|o| o.precision.name()),
                    },
                    "onnx_graphs": graphs.iter().map(|(part, file, io)| serde_json::json!({
                        "part": part, "file": file, "opset": io.opset,
                        "inputs": io.inputs.iter().map(|(n, _, d)| (n.clone(), d.iter().map(|x| x.to_string()).collect::<Vec<_>>())).collect::<Vec<_>>(),
                        "outputs": io.outputs.iter().map(|(n, _, d)| (n.clone(), d.iter().map(|x| x.to_string()).collect::<Vec<_>>())).collect::<Vec<_>>(),
                        "quantize_linear": io.count("QuantizeLinear"),
                    })).collect::<Vec<_>>(),
                    "running": running,
                    "notice": s.demo.then_some(crlm_appliance::predict::DEMO_NOTICE),
                });
                if json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    if s.demo {
                        println!("*** {} ***", crlm_appliance::predict::DEMO_NOTICE);
                    }
                    println!("{} {} ({})", s.name, s.version, s.architecture);
                    println!("  sha256: {}", p.sha256);
                    println!("  signed by: {} ({:?})", p.signer_key_id, p.trust);
                    println!("  intended use: {}", s.intended_use);
                    let mut forms = Vec::new();
                    if p.weights().is_some() {
                        forms.push("candle (safetensors weights)".to_string());
                    }
                    if let Some(o) = &s.onnx {
                        forms.push(format!("onnx ({} graphs, {})", graphs.len(), o.precision.name()));
                    }
                    println!("  backends: {}", forms.join(", "));
                    for (part, file, io) in &graphs {
                        let show = |v: &[(String, i32, Vec<crlm_models::onnx::Dim>)]| {
                            v.iter()
                                .map(|(n, _, d)| {
                                    format!("{n} [{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        println!(
                            "    {part}: {file}, opset {}, {} -> {}{}",
                            io.opset,
                            show(&io.inputs),
                            show(&io.outputs),
                            match io.count("QuantizeLinear") {
                                0 => String::new(),
                                q => format!(" ({q} QuantizeLinear)"),
                            }
                        );
                    }
                    if let Some(r) = &running {
                        println!(
                            "  running on: {} / {} ({}){}",
                            r.name,
                            r.provider,
                            r.precision,
                            r.runtime.as_ref().map(|v| format!(", ONNX Runtime {v}")).unwrap_or_default()
                        );
                    }
                    let subsets: Vec<String> = s
                        .modalities
                        .allowed
                        .iter()
                        .map(|m| m.iter().map(|x| x.name()).collect::<Vec<_>>().join("+"))
                        .collect();
                    println!("  allowed modality subsets: {}", subsets.join(", "));
                    println!(
                        "  CT: {:?} voxels of {:?} mm, HU window {:?}",
                        s.ct.shape, s.ct.spacing_mm, s.ct.hu_window
                    );
                    println!(
                        "  slide: {} px tiles at {} um/px, up to {} tiles ({:?})",
                        s.slide.tile_px, s.slide.microns_per_pixel, s.slide.max_tiles, s.slide.sampling
                    );
                    println!("  clinical: {} features, {} columns", s.clinical.features.len(), s.clinical.width());
                    println!("  decision threshold: {}; calibration: {:?}", s.decision.threshold, s.calibration);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Keygen { key } => {
            let public = signing::write_new_key(&key)?;
            println!(
                "{}: private key (keep it secret); {}: public key {}",
                key.display(),
                key.with_extension("pub").display(),
                signing::key_id(&public)
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Sign { package, key, generate_key } => {
            if generate_key && !key.exists() {
                signing::write_new_key(&key)?;
                println!("created key {} and {}", key.display(), key.with_extension("pub").display());
            }
            let k = signing::read_signing_key(&key)?;
            let sha = package::sign_dir(&package, &k)?;
            println!("{}: signed by {}; package sha256 {sha}", package.display(), signing::key_id(&k.verifying_key()));
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Pack { package, out } => match load(Some(package), None)? {
            Ok(p) => {
                // The files as they are on disk (signature included), after they verified.
                package::pack_tar(&package::read_files(&p.source)?, &out)?;
                println!("{}: package sha256 {}", out.display(), p.sha256);
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Bench { package, tiles, repeat, backend, config } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let model = crlm_appliance::predict::load_model_on(&cfg, package.as_deref(), backend)?;
            print!("{}", crlm_appliance::predict::bench(&model, tiles, repeat)?);
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::Compare { a, b, cases, backend_a, backend_b, config, json } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let ma = crlm_appliance::predict::load_model_on(&cfg, Some(&a), backend_a)?;
            let mb = crlm_appliance::predict::load_model_on(&cfg, Some(&b), backend_b)?;
            let dirs = case_folders(&cases)?;
            let c = crlm_appliance::predict::compare(&ma, &mb, &dirs, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                let show = |v: &serde_json::Value| {
                    format!(
                        "{} on {}/{} ({})",
                        v["sha256"].as_str().unwrap_or("?").get(..12).unwrap_or("?"),
                        v["backend"].as_str().unwrap_or("?"),
                        v["device"].as_str().unwrap_or("?"),
                        v["precision"].as_str().unwrap_or("?")
                    )
                };
                println!("A: {}\nB: {}", show(&c.a), show(&c.b));
                println!(
                    "{} cases: risk_2y |A-B| max {:.6}, mean {:.6}; hazards and attention |A-B| max {:.6}; risk group changed in {} ({:.1} %)",
                    c.cases,
                    c.risk_abs_diff_max,
                    c.risk_abs_diff_mean,
                    c.other_abs_diff_max,
                    c.group_changes,
                    100.0 * c.group_change_fraction
                );
                for (case, why) in &c.skipped {
                    println!("  skipped {case}: {why}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelAction::ExportOnnx { package, out, key, config } => match load(package, config)? {
            Ok(p) => {
                let weights = p.weights().ok_or_else(|| anyhow::anyhow!("the package carries no weights to export"))?;
                let (onnx, graphs) = crlm_models::onnx::export::export(&p.spec, weights, None)?;
                let k = signing::read_signing_key(&key)?;
                let sha = package::write_with_onnx(&p, &out, &onnx, &graphs, &k)?;
                for g in &graphs {
                    println!("  {}: {} ({} bytes)", g.part, g.spec.file, g.bytes.len());
                }
                println!("{}: package with ONNX graphs (opset 17), sha256 {sha}", out.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        ModelAction::Quantize { package, calibration, out, key, config, keep_fp32, percentile } => {
            let cfg = match load_config(config_path(config.clone()).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let p = match load(package, config)? {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let weights =
                p.weights().ok_or_else(|| anyhow::anyhow!("the package carries no fp32 weights to calibrate"))?;
            let dirs = case_folders(&calibration)?;
            let mut cases = Vec::new();
            for d in &dirs {
                match crlm_appliance::predict::prepare_case(d, &p.spec, &cfg) {
                    Ok(prepared) => cases.push(prepared.inputs),
                    Err(e) => eprintln!("calibration: {}: skipped: {e}", d.display()),
                }
            }
            let mut ranges = crlm_models::onnx::quantize::calibrate(&p, &cases, percentile)?;
            const CONVS: [&str; 6] = [
                "ct.conv.conv1",
                "ct.conv.conv2",
                "ct.conv.conv3",
                "slide.conv.conv1",
                "slide.conv.conv2",
                "slide.conv.conv3",
            ];
            for name in keep_fp32.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                anyhow::ensure!(CONVS.contains(&name), "--keep-fp32 {name}: not one of {}", CONVS.join(", "));
                ranges.keep_fp32.push(name.to_string());
            }
            let (onnx, graphs) = crlm_models::onnx::export::export(&p.spec, weights, Some(&ranges))?;
            let k = signing::read_signing_key(&key)?;
            let sha = package::write_with_onnx(&p, &out, &onnx, &graphs, &k)?;
            println!("calibrated on {} case(s): {}", cases.len(), ranges.describe());
            println!("  CT encoder |x| ranges per conv input {:?}, output {:?}", ranges.ct.input, ranges.ct.output);
            println!(
                "  tile encoder |x| ranges per conv input {:?}, output {:?}",
                ranges.tiles.input, ranges.tiles.output
            );
            println!("{}: INT8 (QDQ) package, sha256 {sha}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config { action: ConfigAction::Default } => {
            print!("{DEFAULT_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { action: ConfigAction::Check { file } } => match load_config(Some(&file)) {
            Ok(cfg) => {
                println!("{}: valid", file.display());
                println!("  share.path = {}", cfg.share.path.display());
                println!("  state.path = {}", cfg.state.path.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::Run { config } => {
            let path = config_path(config);
            let cfg = match load_config(path.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(&cfg);
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let result = rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!(stage = "service", "stop signal received; finishing the scan in flight");
                    let _ = stop_tx.send(true);
                });
                let watchdog: Arc<dyn crlm_drivers::watchdog::Watchdog> =
                    Arc::from(crlm_drivers::watchdog::from_environment());
                service::run(cfg, watchdog, stop_rx, |_| {}).await
            });
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e @ service::ServiceError::Model(_)) => {
                    // Not a crash: an operator must install a valid package. EX_CONFIG keeps systemd
                    // from restarting in a loop.
                    tracing::error!(stage = "model", error = %e, "not starting");
                    eprintln!("crlm: {e}");
                    Ok(ExitCode::from(EXIT_CONFIG))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Demo { share, work, timeout_seconds } => {
            let cfg = Config {
                log: crlm_appliance::config::LogConfig { level: "warn".into(), target: "stderr".into() },
                ..Config::default()
            };
            init_logging(&cfg);
            println!(
                "crlm demo: the appliance's path on {}",
                if share.is_some() { "your exports" } else { "a generated case" }
            );
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let rows = rt.block_on(demo::run(demo::DemoOptions {
                work,
                share,
                timeout: std::time::Duration::from_secs(timeout_seconds),
            }))?;
            let locked_ok = rows.iter().any(|r| r.state == state::case_state::PREDICTED && r.outputs_written);
            if locked_ok {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("crlm demo: no case was predicted and locked; see the reasons above");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Validate { action: Some(ValidateAction::SampleSize { n, event_rate, auc, json }), .. } => {
            if !(n >= 10 && event_rate > 0.0 && event_rate < 1.0 && auc > 0.5 && auc < 1.0) {
                eprintln!("crlm validate sample-size: need --n >= 10, 0 < --event-rate < 1, 0.5 < --auc < 1");
                return Ok(ExitCode::from(2));
            }
            use crlm_appliance::validate::sample_size::precision;
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
        Command::Validate { action: None, predictions, outcomes, horizon_months, bootstrap, seed, threshold, out } => {
            let (Some(predictions), Some(outcomes), Some(out)) = (predictions, outcomes, out) else {
                eprintln!("crlm validate: --predictions, --outcomes and --out are required");
                return Ok(ExitCode::from(2));
            };
            if !(horizon_months.is_finite() && horizon_months > 0.0) {
                eprintln!("crlm validate: --horizon-months must be positive");
                return Ok(ExitCode::from(2));
            }
            let opts = crlm_appliance::validate::ValidateOptions {
                predictions,
                outcomes,
                horizon_months,
                bootstrap,
                seed,
                threshold,
                out: out.clone(),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let m = crlm_appliance::validate::run(&opts)?;
            let est = |k: &str| m[k]["estimate"].as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
            println!(
                "{} patients, {} events by {horizon_months} months ({} rows excluded, see the report)",
                m["n"],
                m["events"],
                m["excluded"].as_array().map(Vec::len).unwrap_or(0)
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
        Command::Inspect { path, json } => {
            let items = ingest::inspect::inspect(&path, &crlm_models::limits::Limits::default())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                for i in &items {
                    println!("{}\t{}\t{}", i.kind.as_str(), i.verdict, i.path);
                    for p in &i.problems {
                        println!("\t  problem: {p}");
                    }
                }
            }
            let any_rejected = items.iter().any(|i| i.verdict != "usable");
            Ok(if any_rejected { ExitCode::from(3) } else { ExitCode::SUCCESS })
        }
        Command::Wsi { action: WsiAction::Info { slide, json } } => {
            let h = crlm_models::slide::read_slide_header(&slide, &crlm_models::limits::Limits::default())
                .with_context(|| format!("reading {}", slide.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                println!("{}: {:?}{}", slide.display(), h.format, if h.big_tiff { " (BigTIFF)" } else { "" });
                for (i, l) in h.levels.iter().enumerate() {
                    println!(
                        "  level {i}: {}x{} px, downsample {:.3}, tiles {}x{} ({}), compression {}",
                        l.width, l.height, l.downsample, l.tile_width, l.tile_height, l.tiles, l.compression
                    );
                }
                println!(
                    "  microns per pixel: {}",
                    h.microns_per_pixel.map(|m| format!("{m}")).unwrap_or_else(|| "unknown (configure it)".into())
                );
                println!(
                    "  objective power: {}",
                    h.objective_power.map(|m| format!("{m}x")).unwrap_or_else(|| "unknown".into())
                );
                println!("  scanner: {}", h.scanner.as_deref().unwrap_or("unknown"));
                println!(
                    "  associated images (never decoded): {}",
                    if h.associated.is_empty() { "none".into() } else { h.associated.join(", ") }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wsi { action: WsiAction::Tissue { slide, out } } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, &crlm_models::limits::Limits::default())
                .with_context(|| format!("reading {}", slide.display()))?;
            let m = crlm_models::slide::tissue::tissue_mask(&reader)?;
            let grey: Vec<u8> = m.mask.iter().map(|v| v * 255).collect();
            let bytes = crlm_drivers::display::png::encode_8bit(m.width, m.height, true, &grey)?;
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: mask on level {} ({}x{}), {:.1}% tissue, Otsu threshold {} -> {}",
                slide.display(),
                m.level,
                m.width,
                m.height,
                m.tissue_fraction() * 100.0,
                m.otsu_threshold,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Wsi { action: WsiAction::Tiles { slide, mpp, size, min_tissue, json } } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, &crlm_models::limits::Limits::default())
                .with_context(|| format!("reading {}", slide.display()))?;
            let m = crlm_models::slide::tissue::tissue_mask(&reader)?;
            let tiles = crlm_models::slide::tissue::tile_grid(&reader, &m, mpp, size, min_tissue)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tiles)?);
            } else {
                println!(
                    "{}: {} tiles of {size} px at {mpp} um/px ({} level-0 px each)",
                    slide.display(),
                    tiles.len(),
                    tiles.first().map_or(0, |t| t.size)
                );
                for t in tiles.iter().take(20) {
                    println!("  x {:>7} y {:>7} tissue {:.2}", t.x, t.y, t.tissue);
                }
                if tiles.len() > 20 {
                    println!("  ... ({} more; --json lists all)", tiles.len() - 20);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wsi { action: WsiAction::Bench { slide, threads, size, origins } } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, &crlm_models::limits::Limits::default())
                .with_context(|| format!("reading {}", slide.display()))?;
            let l0 = reader.header.levels.first().context("the slide has no level")?;
            let size = size.unwrap_or(l0.tile_width);
            let origins: Vec<(i64, i64)> = match origins {
                Some(p) => {
                    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)?
                }
                None => (0..l0.height / u64::from(size))
                    .flat_map(|ty| {
                        (0..l0.width / u64::from(size))
                            .map(move |tx| ((tx * u64::from(size)) as i64, (ty * u64::from(size)) as i64))
                    })
                    .collect(),
            };
            let start = std::time::Instant::now();
            let mut checksum = 0u64;
            reader.read_regions_parallel(0, &origins, size, threads, |_, rgb| {
                checksum = checksum.wrapping_add(rgb.pixels.iter().step_by(97).map(|v| u64::from(*v)).sum::<u64>());
                Ok(())
            })?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{} regions of {size} px on {threads} thread(s): {secs:.3} s, {:.0} regions/s (checksum {checksum})",
                origins.len(),
                origins.len() as f64 / secs
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Wsi { action: WsiAction::Region { slide, level, x, y, width, height, out } } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, &crlm_models::limits::Limits::default())
                .with_context(|| format!("reading {}", slide.display()))?;
            let region = reader.read_region(level, x, y, width, height)?;
            let bytes = crlm_drivers::display::png::encode_8bit(region.width, region.height, false, &region.pixels)?;
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: level {level} region at ({x}, {y}) level-0, {width}x{height} -> {}",
                slide.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { action: SynthAction::Case { dir, patient_id, slices, segmentation } } => {
            let case = crlm_models::synth::SampleCase {
                slices,
                with_segmentation: segmentation,
                ..crlm_models::synth::SampleCase::new(&patient_id)
            };
            let files = crlm_models::synth::write_sample_case(&dir, &case)?;
            println!("{}: {} files", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { action: SynthAction::Patient { dir, seed, index, risk, without } } => {
            let z = match risk.as_deref() {
                None => None,
                Some("high") => Some([1.5; 3]),
                Some("low") => Some([-1.5; 3]),
                Some(list) => {
                    let v: Vec<f64> = list.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>()?;
                    Some(
                        <[f64; 3]>::try_from(v)
                            .map_err(|_| anyhow::anyhow!("--risk wants high, low or three numbers"))?,
                    )
                }
            };
            let mut parts = crlm_models::cohort::CaseParts::default();
            for w in without.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                match w {
                    "ct" => parts.ct = false,
                    "slide" => parts.slide = false,
                    "clinical" => parts.clinical = false,
                    other => anyhow::bail!("--without: unknown modality `{other}` (ct, slide, clinical)"),
                }
            }
            let p = crlm_models::cohort::patient(seed, index, z);
            let files = crlm_models::cohort::write_case(&dir, &p, parts)?;
            println!("{}: {} files; true 2-year risk {:.3}", dir.display(), files.len(), p.true_risk_2y);
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { action: SynthAction::Cohort { out, spec, seed, patients } } => {
            let cfg = Config::default();
            init_logging(&cfg);
            let spec =
                crlm_models::package::parse_spec(&std::fs::read(&spec).with_context(|| spec.display().to_string())?)?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let t = std::time::Instant::now();
            crlm_appliance::cohort_export::export(
                &spec,
                &cfg,
                &crlm_appliance::cohort_export::CohortOptions { seed, patients, threads },
                &out,
            )?;
            println!("{}: {patients} patients in {:.0} s", out.display(), t.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict { case_dir, model, config, json, heatmap, backend } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let kind = backend.unwrap_or(cfg.model.backend);
            let model = crlm_appliance::predict::load_model_on(&cfg, model.as_deref(), kind)?;
            let result = crlm_appliance::predict::predict_case(&case_dir, &model, &cfg)?;
            if let Some(out) = &heatmap {
                for p in crlm_appliance::predict::write_heatmaps(&result, out, &cfg)? {
                    eprintln!("attention map: {}", p.display());
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&result.json)?);
            } else {
                print!("{}", crlm_appliance::predict::summary(&result.json));
            }
            Ok(if result.output.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Model { action } => model_command(action),
        Command::Ledger { action } => ledger_command(action),
        Command::Broker { port, public } => {
            let _ = journal::init("info", LogTarget::Stderr);
            let ip = if public { [0, 0, 0, 0] } else { [127, 0, 0, 1] };
            crlm_appliance::mqtt::broker::start(std::net::SocketAddr::from((ip, port)))?;
            eprintln!("crlm broker: listening on port {port}; Ctrl-C stops it");
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(wait_for_signal());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet { action: FleetAction::Collect { broker, db, key, devices, client_id, tls } } => {
            let _ = journal::init("info", LogTarget::Stderr);
            let broker = tls.broker(broker)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = stop_tx.send(true);
                });
                let opts = crlm_appliance::fleet::CollectOptions { broker, db, key, devices, client_id };
                crlm_appliance::fleet::collect(opts, stop_rx).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet { action: FleetAction::Watch { broker, json, every, tls } } => {
            let m = tls.broker(broker)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(fleet_watch(m, json, every))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet { action: FleetAction::Export { db, format } } => {
            let conn = crlm_appliance::fleet::open_db(&db)?;
            let rows = crlm_appliance::fleet::export_rows(&conn)?;
            match format.as_str() {
                "csv" => std::io::Write::write_all(&mut std::io::stdout(), &crlm_appliance::fleet::export_csv(&rows)?)?,
                "json" => {
                    println!("{}", serde_json::to_string_pretty(&serde_json::json!({"format": 1, "rows": rows}))?)
                }
                other => {
                    eprintln!("crlm fleet export: --format {other}: use csv or json");
                    return Ok(ExitCode::from(2));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { action: SynthAction::Ct { dir, slices, size, syntax } } => {
            use crlm_models::dicom::{CtSeriesSpec, ts};
            let mut spec =
                CtSeriesSpec::axial("SYNTH-CT", "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1", slices);
            spec.rows = size;
            spec.columns = size;
            spec.hu = std::sync::Arc::new(crlm_models::dicom::writer::texture_hu);
            spec.transfer_syntax = match syntax.as_str() {
                "explicit" => ts::EXPLICIT_VR_LE,
                "implicit" => ts::IMPLICIT_VR_LE,
                other => anyhow::bail!("unknown syntax `{other}`: use explicit or implicit"),
            };
            let files = crlm_models::dicom::write_ct_series(&dir, &spec)?;
            println!("{}: {} slices of {size}x{size}", dir.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ct { action: CtAction::Volume { series_dir, out, series, json } } => {
            let limits = crlm_models::limits::Limits::default();
            // Every DICOM file under the folder (headers only, guarded), grouped by series.
            let mut groups: std::collections::BTreeMap<String, Vec<(PathBuf, crlm_models::dicom::DicomHeader)>> =
                Default::default();
            let mut stack = vec![series_dir.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                    let entry = entry?;
                    let ft = entry.file_type()?;
                    if ft.is_dir() {
                        stack.push(entry.path());
                    } else if ft.is_file()
                        && let Ok(h) = crlm_models::dicom::read_header(&entry.path(), &limits)
                        && h.modality.as_deref() == Some("CT")
                        && h.rows.is_some()
                    {
                        let uid = h.series_instance_uid.clone().unwrap_or_else(|| "(no SeriesInstanceUID)".into());
                        groups.entry(uid).or_default().push((entry.path(), h));
                    }
                }
            }
            let members = match (series, groups.len()) {
                (_, 0) => anyhow::bail!(
                    "no usable CT images in {} (see `crlm inspect {}`)",
                    series_dir.display(),
                    series_dir.display()
                ),
                (Some(uid), _) => {
                    groups.remove(&uid).with_context(|| format!("no series {uid} in {}", series_dir.display()))?
                }
                (None, 1) => groups.into_values().next().unwrap_or_default(),
                (None, _) => {
                    let list: Vec<String> = groups.iter().map(|(k, v)| format!("  {k} ({} images)", v.len())).collect();
                    anyhow::bail!(
                        "{} holds several CT series; choose one with --series:\n{}",
                        series_dir.display(),
                        list.join("\n")
                    );
                }
            };
            let (files, headers): (Vec<PathBuf>, Vec<_>) = members.into_iter().unzip();
            let vol = crlm_models::ct::volume::load_series_with_headers(&files, &headers, &limits)?;
            crlm_models::ct::write_nifti(&vol, &out)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "out": out, "dims": [vol.columns, vol.rows, vol.slices], "spacing_mm": vol.spacing,
                        "origin_lps": vol.origin, "direction_lps": vol.direction, "report": vol.report,
                    }))?
                );
            } else {
                println!(
                    "{}: {}x{}x{} voxels, spacing {:.3} x {:.3} x {:.3} mm, origin (LPS) {:.2}, {:.2}, {:.2}",
                    out.display(),
                    vol.columns,
                    vol.rows,
                    vol.slices,
                    vol.spacing[0],
                    vol.spacing[1],
                    vol.spacing[2],
                    vol.origin[0],
                    vol.origin[1],
                    vol.origin[2]
                );
                for w in &vol.report.warnings {
                    println!("  warning: {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Display { action: DisplayAction::Render { screen, state, example, out, size, mode } } => {
            use crlm_appliance::panel::{state::PanelState, state::ResultMode, ui};
            let screen = ui::Screen::parse(&screen).with_context(|| {
                format!("unknown screen `{screen}`: use status, ingest, processing, result or problem")
            })?;
            let size = crlm_appliance::config::parse_size(&size)?;
            let mode = match mode.as_str() {
                "open" => ResultMode::Open,
                "blinded" => ResultMode::Blinded,
                other => anyhow::bail!("unknown mode `{other}`: use open or blinded"),
            };
            let st: PanelState = match (state, example) {
                (Some(p), _) => {
                    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
                        .with_context(|| format!("{} is not a panel state (see docs/DISPLAY.md)", p.display()))?
                }
                (None, true) => PanelState::example(),
                (None, false) => anyhow::bail!("give --state FILE or --example"),
            };
            let png = crlm_appliance::panel::task::render_png(screen, &st, mode, size)?;
            std::fs::write(&out, png).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{} ({}x{}, {}) -> {}",
                screen.name(),
                size.width,
                size.height,
                if mode == ResultMode::Open { "open" } else { "blinded" },
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cases { config, json } => {
            let path = config_path(config);
            let cfg = match load_config(path.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let db_path = cfg.database_path();
            if !db_path.exists() {
                anyhow::bail!(
                    "no state database at {} (has `crlm run` started with this configuration?)",
                    db_path.display()
                );
            }
            let db =
                state::StateDb::open_read_only(&db_path).with_context(|| format!("opening {}", db_path.display()))?;
            let rows = db.cases()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                demo::print_cases(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait_for_signal() {
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

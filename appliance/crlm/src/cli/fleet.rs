use super::*;

#[derive(Subcommand)]
pub enum FleetAction {
    /// Receive every box's results and alerts into DB, verify them, acknowledge with countersignatures.
    Collect {
        /// mqtt://host:port of the central broker.
        #[arg(long)]
        broker: String,
        #[arg(long)]
        db: PathBuf,
        /// The collector's signing key, made on first use with its public key beside it under the
        /// extension .pub (collector.key -> collector.pub): that file goes to the boxes.
        #[arg(long, default_value = "collector.key")]
        key: PathBuf,
        /// Registered boxes: <site>/<device>.pub, each box's device.pub. Messages from any other
        /// box, or not signed with its key, are rejected (`crlm fleet rejected`).
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
        /// The collector's registry (`<site>/<device>.pub`): show only what registered boxes
        /// signed, and count the rest as refused. Without it nothing is checked.
        #[arg(long)]
        devices: Option<std::path::PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Every centre's locked predictions in the ledger-export columns, plus site and device.
    Export {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
    /// Messages the collector refused (unregistered box, bad signature, conflicting content), with why.
    Rejected {
        #[arg(long)]
        db: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl FleetAction {
    /// Collect and watch connect to a broker; export only reads the collector's database.
    pub fn uses_network(&self) -> bool {
        !matches!(self, FleetAction::Export { .. } | FleetAction::Rejected { .. })
    }
}

pub fn run(action: FleetAction) -> anyhow::Result<ExitCode> {
    match action {
        FleetAction::Collect { broker, db, key, devices, client_id, tls } => {
            let _ = journal::init("info", LogTarget::Stderr);
            let broker = tls.broker(broker)?;
            let rt = runtime()?;
            rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = stop_tx.send(true);
                });
                let opts = crlm_fleet::CollectOptions { broker, db, key, devices, client_id };
                crlm_fleet::collect(opts, stop_rx).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Watch { broker, json, every, devices, tls } => {
            let m = tls.broker(broker)?;
            let rt = runtime()?;
            rt.block_on(fleet_watch(m, json, every, devices))?;
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Export { db, format } => {
            let conn = crlm_fleet::open_db(&db)?;
            let rows = crlm_fleet::export_rows(&conn)?;
            let rejected = crlm_fleet::rejected_rows(&conn)?.len();
            if rejected > 0 {
                eprintln!(
                    "note: {rejected} message(s) were rejected and are not in this export: crlm fleet rejected --db ..."
                );
            }
            match format {
                ExportFormat::Csv => {
                    std::io::Write::write_all(&mut std::io::stdout(), &crlm_fleet::export_csv(&rows)?)?
                }
                ExportFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&serde_json::json!({"format": 1, "rows": rows}))?)
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetAction::Rejected { db, json } => {
            let conn = crlm_fleet::open_db(&db)?;
            let rows = crlm_fleet::rejected_rows(&conn)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"format": 1, "rows": rows}))?);
            } else {
                println!("{} rejected message(s)", rows.len());
                for r in &rows {
                    println!("{}  {}/{}/{}  {}", r.received_at, r.site, r.device, r.leaf, r.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// TLS for `--broker mqtts://...` (PEM files).
#[derive(clap::Args)]
pub struct TlsArgs {
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
    fn broker(self, url: String) -> anyhow::Result<crlm_config::MqttConfig> {
        let m = crlm_config::MqttConfig {
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

/// `crlm fleet watch`: the table (redrawn in place on a terminal) or JSON lines, until Ctrl-C.
async fn fleet_watch(
    broker: crlm_config::MqttConfig,
    json: bool,
    every: f64,
    devices: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let client_id = format!("crlm-fleet-watch-{}", std::process::id());
    let shown = broker.url.clone();
    let tap = tokio::spawn(crlm_fleet::tap(broker, client_id, tx, stop_rx));
    let started = std::time::Instant::now();
    let mut view = match &devices {
        Some(dir) => crlm_fleet::FleetView::verifying(crlm_fleet::Registry::load(Some(dir))),
        None => crlm_fleet::FleetView::default(),
    };
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
                    // With --devices, whether the registered box signed it (null: not checked).
                    let verified = devices.as_ref().map(|_| view.check(&topic, &payload));
                    // The signed record is for the collector; the watcher shows the message.
                    if let Some(o) = payload.as_object_mut() {
                        o.remove("record");
                    }
                    let line = serde_json::json!({
                        "received_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        "topic": topic,
                        "verified": verified.as_ref().map(Result::is_ok),
                        "refused": verified.and_then(Result::err),
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

//! `crlm demo`: the appliance's path on a generated case (or the user's own exports), with
//! nothing installed beyond the build. It writes a sample case with the project's own writers
//! into a share, runs the real service on it with the embedded broker, the study office's
//! collector and a message tap in the same process, prints what happens, and says where to look.

use crlm_config::Config;
use crlm_models::synth::{SampleCase, write_sample_case};
use crlm_state::{CaseRow, StateDb};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo folder {0}: {1}")]
    Prepare(String, String),
    #[error("the service failed: {0}")]
    Service(String),
    #[error("no case was closed within {0} s; see the log above and `crlm cases --config {1}`")]
    Timeout(u64, String),
    #[error("the share {0} does not exist or is not a folder")]
    NoShare(String),
}

pub struct DemoOptions {
    pub work: PathBuf,
    pub share: Option<PathBuf>,
    pub timeout: Duration,
}

/// Run the demo; returns the closed cases.
pub async fn run(opts: DemoOptions) -> Result<Vec<CaseRow>, DemoError> {
    let work = &opts.work;
    let prep = |e: std::io::Error| DemoError::Prepare(work.display().to_string(), e.to_string());
    std::fs::create_dir_all(work).map_err(prep)?;
    let state = work.join("state");
    // A fresh state each run, so the demo always shows the whole path.
    if state.exists() {
        std::fs::remove_dir_all(&state).map_err(prep)?;
    }
    let share = match &opts.share {
        Some(s) => {
            if !s.is_dir() {
                return Err(DemoError::NoShare(s.display().to_string()));
            }
            s.clone()
        }
        None => {
            let share = work.join("share");
            if share.exists() {
                std::fs::remove_dir_all(&share).map_err(prep)?;
            }
            step(1, "writing a sample case with the project's own generators");
            let case_dir = share.join("demo-case-001");
            let case = SampleCase { slices: 24, with_noncontrast_series: true, ..SampleCase::new("DEMO-0001") };
            let files = write_sample_case(&case_dir, &case)
                .map_err(|e| DemoError::Prepare(case_dir.display().to_string(), e.to_string()))?;
            std::fs::write(case_dir.join(crlm_ingest::share::CASE_READY_MARKER), b"").map_err(prep)?;
            println!(
                "    {} files: {} CT slices in 2 series (portal-venous and native), 1 pyramidal slide, 1 clinical file",
                files.len(),
                files.len() - 2
            );
            share
        }
    };
    let mut cfg = Config::default();
    cfg.share.path = share.clone();
    cfg.state.path = state.clone();
    cfg.share.quiet_seconds = 1.0;
    cfg.share.poll_seconds = 0.5;
    cfg.mqtt.heartbeat_seconds = 2.0;
    // The embedded broker on a port free now, so a running `crlm run` does not collide with it.
    cfg.mqtt.embedded_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(cfg.mqtt.embedded_port);
    // The study office's side, in-process: a collector that verifies and acknowledges the
    // results (with the box's key registered), and a tap that records every message.
    let central = work.join("collector");
    if central.exists() {
        std::fs::remove_dir_all(&central).map_err(prep)?;
    }
    std::fs::create_dir_all(&central).map_err(prep)?;
    let collector_key = central.join("collector.key");
    crlm_fleet::collector_key(&collector_key)
        .map_err(|e| DemoError::Prepare(central.display().to_string(), e.to_string()))?;
    // The box trusts acks signed with the collector's key; the collector stores messages only
    // from boxes it registered (<site>/<device>.pub: the box's device key, made now).
    cfg.mqtt.collector_key = collector_key.with_extension("pub");
    cfg.ledger.collector_keys = vec![collector_key.with_extension("pub")];
    let registered = central.join("devices");
    crlm_ledger::device_key(&cfg.keys_dir())
        .map_err(|e| DemoError::Prepare(cfg.keys_dir().display().to_string(), e.to_string()))?;
    std::fs::create_dir_all(registered.join(&cfg.mqtt.site)).map_err(prep)?;
    let enrolled = registered.join(&cfg.mqtt.site).join(format!("{}.pub", cfg.mqtt.device));
    std::fs::copy(cfg.keys_dir().join("device.pub"), &enrolled).map_err(prep)?;
    let collector_db = central.join("collector.sqlite");
    let messages_file = work.join("mqtt-messages.jsonl");
    step(2, &format!("starting the service on {}", share.display()));
    println!(
        "    embedded MQTT broker on 127.0.0.1:{}, with the study office's collector and a message tap attached",
        cfg.mqtt.embedded_port
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (central_stop_tx, central_stop_rx) = tokio::sync::watch::channel(false);
    // The box's own view of its embedded broker (plain MQTT on loopback).
    let broker = crlm_config::MqttConfig { url: String::new(), ..cfg.mqtt.clone() };
    let collector_opts = crlm_fleet::CollectOptions {
        broker: broker.clone(),
        db: collector_db.clone(),
        key: collector_key.clone(),
        devices: Some(registered),
        client_id: "crlm-demo-collector".into(),
    };
    let (tap_tx, mut tap_rx) = tokio::sync::mpsc::channel::<(String, serde_json::Value)>(256);
    let tap_port = cfg.mqtt.embedded_port;
    // The study office connects once the service's broker is up (it starts after the model).
    let central = tokio::spawn(async move {
        let up = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", tap_port)).await.is_err() && up.elapsed().as_secs() < 60 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tap = tokio::spawn(crlm_fleet::tap(broker, "crlm-demo-tap".into(), tap_tx, central_stop_rx.clone()));
        let collected = crlm_fleet::collect(collector_opts, central_stop_rx).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), tap).await;
        collected
    });
    let mut captured: Vec<(String, serde_json::Value)> = Vec::new();
    let watchdog: Arc<dyn crlm_drivers::watchdog::Watchdog> = Arc::new(crlm_drivers::watchdog::NoWatchdog);
    let svc_cfg = cfg.clone();
    let service = tokio::spawn(async move {
        crlm_service::run(svc_cfg, watchdog, stop_rx, |ev| {
            let r = match ev {
                crlm_service::ServiceEvent::Scan(r) => r,
                crlm_service::ServiceEvent::Locked(p) => {
                    println!(
                        "    case {} -> {} and locked as ledger record {} ({:.1} s)",
                        p.case, p.state, p.seq, p.seconds
                    );
                    return;
                }
                crlm_service::ServiceEvent::Failed { case, error } => {
                    println!("    case {case} failed: {error}");
                    return;
                }
            };
            if r.accepted + r.quarantined + r.duplicates > 0 {
                println!(
                    "    scan: {} files seen, {} accepted, {} duplicates, {} quarantined, {} waiting",
                    r.files_seen, r.accepted, r.duplicates, r.quarantined, r.waiting
                );
            }
            for c in &r.case_changes {
                println!("    case {} -> {}", c.case, c.state);
            }
        })
        .await
    });
    step(3, "waiting until every case is closed, locked in the ledger and acknowledged by the collector");
    let start = Instant::now();
    let db_path = cfg.database_path();
    let mut reported_said = false;
    let rows = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        while let Ok(m) = tap_rx.try_recv() {
            if matches!(m.0.rsplit('/').next(), Some("result" | "ack")) {
                println!("    MQTT {}", crlm_fleet::describe(&m.0, &m.1));
            }
            captured.push(m);
        }
        if service.is_finished() {
            break None;
        }
        if let Ok(db) = StateDb::open_read_only(&db_path)
            && let Ok(rows) = db.cases()
            && !rows.is_empty()
            && rows.iter().all(|r| r.settled())
        {
            // Reported means acknowledged by the collector: the outbox is empty.
            let queued = db.outbox_depth().map(|d| d.0).unwrap_or(u64::MAX);
            if queued == 0 {
                break Some(rows);
            }
            if !reported_said {
                println!("    {queued} message(s) in the outbox, waiting for the collector's acknowledgement");
                reported_said = true;
            }
        }
        if start.elapsed() > opts.timeout {
            let _ = stop_tx.send(true);
            let _ = central_stop_tx.send(true);
            return Err(DemoError::Timeout(opts.timeout.as_secs(), "crlm-demo".into()));
        }
    };
    let _ = stop_tx.send(true);
    let joined = service.await.map_err(|e| DemoError::Service(e.to_string()))?;
    // The box's `offline` status on the way out is part of the capture.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = central_stop_tx.send(true);
    let central = tokio::time::timeout(Duration::from_secs(5), central).await;
    while let Ok(m) = tap_rx.try_recv() {
        captured.push(m);
    }
    match central {
        Ok(Ok(Err(e))) => println!("    the collector stopped with an error: {e}"),
        Ok(Err(e)) => println!("    the collector task failed: {e}"),
        _ => {}
    }
    joined.map_err(|e| DemoError::Service(e.to_string()))?;
    let rows = rows.ok_or_else(|| DemoError::Service("the service stopped before closing a case".into()))?;
    step(4, &format!("done in {:.1} s", start.elapsed().as_secs_f64()));
    crate::cli::cases::print_cases(&rows);
    step(5, "the locked results (outbox), as the site and the study office receive them");
    for row in &rows {
        let Some(seq) = row.ledger_seq else { continue };
        let file = crlm_outputs::case_dir(&cfg, &row.pseudonym).join(format!("result-{seq:06}.json"));
        match std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<crlm_outputs::result_json::ResultDoc>(&b).ok())
        {
            Some(doc) => {
                println!("    {} (ledger record {seq}):", row.pseudonym);
                crlm_outputs::result_json::summary(&doc).lines().for_each(|l| println!("      {l}"));
            }
            None => println!("    {}: no result.json (outputs.result_json is off?)", row.pseudonym),
        }
    }
    step(6, &format!("what went over MQTT ({} messages, de-identified)", captured.len()));
    let mut lines = String::new();
    for (topic, payload) in &captured {
        println!("    {topic:<34} {}", crlm_fleet::describe(topic, payload));
        lines.push_str(&serde_json::json!({"topic": topic, "payload": payload}).to_string());
        lines.push('\n');
    }
    crlm_core::fsutil::write_atomic(&messages_file, lines.as_bytes(), 0o644).map_err(prep)?;
    if let Ok(conn) = crlm_fleet::open_db(&collector_db)
        && let Ok(held) = crlm_fleet::export_rows(&conn)
    {
        let verified = held.iter().filter(|r| r.signature_ok == Some(true)).count();
        println!(
            "    the collector holds {} result(s), {verified} with the box's ledger signature verified",
            held.len()
        );
    }
    step(7, "the ledger, checked as an auditor would (`crlm ledger verify`)");
    println!("    {}", ledger_check(&cfg));
    println!();
    println!("Where to look:");
    println!("  front panel      {}  (blinded study mode)", cfg.display_path().display());
    println!("  state database   {}", db_path.display());
    println!("  quarantine       {}", cfg.quarantine_dir().display());
    println!(
        "  ledger           {}  (crlm ledger verify / export, with CRLM_STATE__PATH={})",
        cfg.ledger_dir().display(),
        state.display()
    );
    println!(
        "  outbox           {}  (result.json, FHIR RiskAssessment, DICOM SR per case)",
        cfg.outbox_dir().display()
    );
    println!("  cases            crlm cases --json   (with CRLM_STATE__PATH={})", state.display());
    println!("  MQTT messages    {}  (one JSON object per line: topic, payload)", messages_file.display());
    println!("  collector        {}  (crlm fleet export --db {})", collector_db.display(), collector_db.display());
    Ok(rows)
}

/// The ledger's chain and signatures, and how far the collector's countersignatures reach.
fn ledger_check(cfg: &Config) -> String {
    use crlm_ledger as ledger;
    let dir = cfg.ledger_dir();
    let public = match ledger::read_public_key(&cfg.state.path.join("keys").join("device.pub")) {
        Ok(k) => k,
        Err(e) => return format!("cannot read the device key: {e}"),
    };
    let report = match ledger::verify(&dir, &public) {
        Ok(r) => r,
        Err(e) => return format!("cannot verify: {e}"),
    };
    if let Some((line, why)) = report.first_bad {
        return format!("BAD at line {line}: {why}");
    }
    let collectors: Vec<_> = cfg.mqtt.ack_keys(&cfg.ledger).filter_map(|p| ledger::read_public_key(p).ok()).collect();
    let proof = ledger::read_records(&dir)
        .and_then(|records| ledger::countersign::check(&dir, &records, &ledger::key_id(&public), &collectors));
    let proven = match proof {
        Ok(p) => match p.proven_up_to {
            Some((seq, at, _)) => {
                format!("; lock time proven by the collector's countersignature up to record {seq} ({at})")
            }
            None => "; no countersignature from the collector yet".to_string(),
        },
        Err(e) => format!("; countersignatures unreadable: {e}"),
    };
    format!("{} record(s), chain and signatures intact{proven}", report.records)
}

fn step(n: u32, what: &str) {
    println!("[{n}] {what}");
}

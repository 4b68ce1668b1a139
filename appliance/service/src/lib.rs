//! `crlm run`: the long-running service. Start-up, the scan loop, supervisor notifications and
//! clean shutdown. Ingest work runs on a blocking thread; the async loop keeps the watchdog and
//! status current and wakes early on inotify events. Shutdown waits for the scan in flight:
//! each of its steps is a committed transaction, so nothing in flight is lost.
//!
//! # In the data path
//!
//! - Owns: the running service: start-up, the scan loop, the prediction worker (`processing`), supervisor notifications, shutdown.
//! - Inputs: the configuration; the share; the model package.
//! - Outputs: locks in the ledger, outputs, outbox rows, panel frames.
//! - Place: the whole path: it builds and joins ingest, predict, ledger, outputs, mqtt and panel.
//! - Depends on: every stage crate; nothing depends on it but the binary.

use crlm_config::Config;
use crlm_ingest::{IngestError, Ingestor, ScanReport};
use crlm_panel::state::{PanelState, ProcessingView, ResultView};
pub mod health;
pub mod processing;

use crate::health::Health;
use crate::processing::{ProcessError, Processed, Processor};
use crlm_drivers::watchdog::Watchdog;
use crlm_mqtt::{AlertCode, ConditionCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("ingest thread failed: {0}")]
    Join(String),
    /// The ledger or the state cannot be opened: nothing may be predicted without a lock.
    #[error("cannot start predicting: {0}")]
    Processing(#[from] ProcessError),
    /// The prediction worker stayed on one case past `model.case_timeout_seconds`: it is taken
    /// to be stuck (a decoder or the model runtime hung on an input), and the service ends so
    /// its supervisor restarts it; the cut-off start is counted against the case.
    #[error("{0}")]
    CaseTimeout(String),
}

/// What the service tells its caller (the demo prints it; `crlm run` logs it already).
pub enum ServiceEvent<'a> {
    Scan(&'a ScanReport),
    /// A case was locked in the ledger and its outputs written.
    Locked(&'a Processed),
    /// A case could not be processed (the service goes on with the next).
    Failed {
        case: &'a str,
        error: &'a str,
    },
}

/// What the processing worker shows on the panel besides the database's view.
#[derive(Default)]
struct PanelExtras {
    processing: Option<ProcessingView>,
    result: Option<ResultView>,
    link: Option<crlm_mqtt::client::LinkView>,
}

enum WorkerEvent {
    Locked(Processed),
    Failed { case: String, error: String },
    Progress,
}

/// Run until `stop` turns true. `on_scan` sees every scan report (the demo prints progress).
pub async fn run(
    cfg: Config,
    watchdog: Arc<dyn Watchdog>,
    mut stop: watch::Receiver<bool>,
    mut on_event: impl FnMut(ServiceEvent<'_>) + Send,
) -> Result<(), ServiceError> {
    let health = Arc::new(Health::default());
    // The package is verified before anything is predicted. One that fails (an altered or
    // unknown package, a runtime that will not start) holds every prediction: the service goes
    // on receiving files and says so on the panel and in the heartbeat, so nothing is predicted
    // by it and the fleet sees why.
    let model_cfg = cfg.clone();
    let loaded = tokio::task::spawn_blocking(move || crlm_predict::load_model(&model_cfg, None))
        .await
        .map_err(|e| ServiceError::Join(e.to_string()))?;
    let model = match loaded {
        Ok(model) => {
            let spec = &model.package.spec;
            tracing::info!(
                stage = "model",
                name = %spec.name,
                version = %spec.version,
                sha256 = %model.package.sha256,
                demo = spec.demo,
                signer = %model.package.signer_key_id,
                "model package verified"
            );
            Some(Arc::new(model))
        }
        Err(e) => {
            tracing::error!(stage = "model", error_kind = "model_refused", error = %e, "predictions held; files are still received");
            health.set(ConditionCode::Model, format!("predictions held: model package refused: {e}"));
            None
        }
    };
    let model_view = model.as_ref().map(|model| crlm_panel::state::ModelView {
        name: model.package.spec.name.clone(),
        version: model.package.spec.version.clone(),
        sha256: model.package.sha256.clone(),
        demo: model.package.spec.demo,
    });
    let extras = Arc::new(std::sync::Mutex::new(PanelExtras::default()));
    let panel_extras = extras.clone();
    let panel_health = health.clone();
    let with_model = move |mut st: PanelState| {
        st.model = model_view.clone();
        // A condition of the box outranks a file's quarantine on the problem screen.
        if let Some(p) = panel_health.problem() {
            st.problem = Some(p);
        }
        if let Ok(x) = panel_extras.lock() {
            st.processing = x.processing.clone();
            st.result = x.result.clone();
            if let Some(l) = &x.link {
                st.broker = l.broker.clone();
                st.outbox_depth = u32::try_from(l.outbox_messages).unwrap_or(u32::MAX);
            }
        }
        st
    };
    let open_cfg = cfg.clone();
    let mut ingestor = tokio::task::spawn_blocking(move || Ingestor::open(&open_cfg))
        .await
        .map_err(|e| ServiceError::Join(e.to_string()))??;
    // The ledger opens (and is checked) before anything is predicted; a torn last record is cut
    // and recorded. A ledger that fails its check holds every prediction: the service goes on
    // receiving files, and says so on the panel, in the heartbeat and in an alert.
    let proc_cfg = cfg.clone();
    // Without a model there is nothing to lock (predictions are held already).
    let opened = match model.clone() {
        Some(proc_model) => Some(
            tokio::task::spawn_blocking(move || Processor::open(&proc_cfg, proc_model))
                .await
                .map_err(|e| ServiceError::Join(e.to_string()))?,
        ),
        None => None,
    };
    let device_key = crlm_ledger::device_key(&cfg.keys_dir()).map_err(ProcessError::from)?;
    let processor = match opened {
        None => None,
        Some(Ok((processor, recovery))) => {
            if let Some(r) = recovery {
                tracing::warn!(
                    stage = "ledger",
                    alert = "ledger_recovery",
                    cut_bytes = r.cut_bytes,
                    "the ledger ended in a torn record (power cut during a write); it was cut off and the cut recorded"
                );
            }
            tracing::info!(stage = "ledger", records = processor.ledger().len(), key_id = %processor.ledger().key_id(), "ledger open");
            Some(processor)
        }
        Some(Err(e)) => {
            let why = e.to_string();
            let code = if matches!(e, ProcessError::Ledger(_)) { ConditionCode::Ledger } else { ConditionCode::Failed };
            tracing::error!(stage = "ledger", alert = "ledger_invalid", error = %why, "predictions held; files are still received");
            health.set(code, format!("predictions held: {why}"));
            queue_alert(&cfg, AlertCode::LedgerInvalid, &format!("predictions held: {why}"));
            None
        }
    };
    let device_key_id = crlm_ledger::key_id(&device_key.verifying_key());
    // Fleet reporting: the embedded broker when none is configured, then the publisher.
    let (mqtt_stop_tx, mqtt_stop_rx) = watch::channel(false);
    let outbox_wake = Arc::new(tokio::sync::Notify::new());
    let publisher = if cfg.mqtt.enabled {
        if cfg.mqtt.url.is_empty() {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.mqtt.embedded_port));
            match tokio::task::spawn_blocking(move || crlm_mqtt::broker::start(addr)).await {
                Ok(Ok(())) => tracing::info!(stage = "mqtt", %addr, "embedded broker listening"),
                Ok(Err(e)) => tracing::error!(stage = "mqtt", error = %e, "embedded broker not started"),
                Err(e) => tracing::error!(stage = "mqtt", error = %e, "embedded broker not started"),
            }
        }
        let link_extras = extras.clone();
        let ctx = crlm_mqtt::client::PublisherContext {
            model_sha256: model.as_ref().map(|m| m.package.sha256.clone()),
            demo: model.as_ref().is_some_and(|m| m.package.spec.demo),
            device_key_id: device_key_id.clone(),
            device_key: device_key.clone(),
            on_link: Arc::new(move |l| {
                if let Ok(mut x) = link_extras.lock() {
                    x.link = Some(l);
                }
            }),
            outbox_wake: outbox_wake.clone(),
            conditions: {
                let health = health.clone();
                Arc::new(move || health.list())
            },
        };
        Some(tokio::spawn(crlm_mqtt::client::run(cfg.clone(), ctx, mqtt_stop_rx)))
    } else {
        None
    };
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let (event_tx, mut event_rx) = mpsc::channel::<WorkerEvent>(64);
    let worker_progress = ingestor.progress.clone();
    // When the worker took its case in hand: ms since `epoch` + 1, 0 while it has none.
    let epoch = Instant::now();
    let busy = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let case_limit = Duration::from_secs_f64(cfg.model.case_timeout_seconds);
    let worker = match processor {
        Some(processor) => Some(
            std::thread::Builder::new()
                .name("crlm-predict".into())
                .spawn({
                    let extras = extras.clone();
                    let outbox_wake = outbox_wake.clone();
                    let busy = busy.clone();
                    move || {
                        let hooks = WorkerHooks {
                            events: event_tx,
                            extras,
                            progress: worker_progress,
                            outbox_wake,
                            busy,
                            epoch,
                        };
                        processing_worker(processor, work_rx, hooks)
                    }
                })
                .map_err(|e| ServiceError::Join(e.to_string()))?,
        ),
        None => None,
    };
    let progress = ingestor.progress.clone();
    // The panel runs on its own task; the scan loop only publishes the newest state.
    let (panel_tx, panel_rx) = watch::channel(with_model(crlm_panel::feed::build(ingestor.database(), &cfg)));
    let panel = crlm_panel::task::open_display(&cfg);
    let panel_task = tokio::spawn(crlm_panel::task::run_panel(
        panel,
        cfg.display.mode,
        panel_rx,
        4.0,
        crlm_panel::task::texts_path(&cfg),
    ));
    panel_tx.send_modify(|_| {}); // draw the first frame now
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let _watcher = if cfg.share.inotify { start_inotify(&cfg, wake_tx) } else { None };
    tracing::info!(
        stage = "service",
        version = env!("CARGO_PKG_VERSION"),
        poll_seconds = cfg.share.poll_seconds,
        quiet_seconds = cfg.share.quiet_seconds,
        "crlm started"
    );
    watchdog.ready();
    watchdog.status("watching the share");
    let poll = Duration::from_secs_f64(cfg.share.poll_seconds);
    let ping_every = watchdog.interval().map(|d| d / 2).unwrap_or(Duration::from_secs(5));
    let mut last_progress = (progress.load(Ordering::Relaxed), Instant::now());
    // A worker stuck on one case ends the service (systemd restarts it; the start is counted).
    let check_worker = |watchdog: &Arc<dyn Watchdog>| -> Result<(), ServiceError> {
        let since = busy.load(Ordering::Relaxed);
        if since == 0 {
            return Ok(());
        }
        let on_case = epoch.elapsed().saturating_sub(Duration::from_millis(since - 1));
        if on_case <= case_limit {
            return Ok(());
        }
        let why = format!(
            "the prediction worker has been on one case for {:.1} s, past model.case_timeout_seconds ({:.1} s): \
             it is taken to be stuck on an input, and the service stops so that it is restarted \
             (the cut-off start counts; a case cut off 5 times is failed)",
            on_case.as_secs_f64(),
            case_limit.as_secs_f64()
        );
        tracing::error!(stage = "predict", error_kind = "case_timeout", "{why}");
        watchdog.status(&format!("problem: {why}"));
        Err(ServiceError::CaseTimeout(why))
    };
    loop {
        check_worker(&watchdog)?;
        // One scan on a blocking thread; keep the watchdog fed only while it makes progress.
        let panel_cfg = cfg.clone();
        let decorate = with_model.clone();
        let mut job = tokio::task::spawn_blocking(move || {
            let r = ingestor.scan_once();
            let panel_state = decorate(crlm_panel::feed::build(ingestor.database(), &panel_cfg));
            (ingestor, r.map(|rep| (rep, panel_state)))
        });
        let (back, result) = loop {
            tokio::select! {
                done = &mut job => break done.map_err(|e| ServiceError::Join(e.to_string()))?,
                // Locks are reported while a long scan runs, not after it.
                Some(ev) = event_rx.recv() => {
                    note_worker_event(&health, &ev);
                    report_worker_event(&ev, &mut on_event);
                    panel_tx.send_modify(|st| *st = with_model(std::mem::take(st)));
                }
                _ = tokio::time::sleep(ping_every) => {
                    check_worker(&watchdog)?;
                    let p = progress.load(Ordering::Relaxed);
                    if p != last_progress.0 {
                        last_progress = (p, Instant::now());
                    }
                    // A scan stuck without progress for 4 ping periods stops the pings: systemd restarts us.
                    if last_progress.1.elapsed() < ping_every * 4 {
                        watchdog.ping();
                    }
                }
            }
        };
        ingestor = back;
        // The state disk: below its reserve, or a scan that found it full.
        let scan_full = matches!(&result, Err(e) if health::is_disk_full(&e.to_string()));
        match health::state_disk_low(&cfg.state.path, cfg.state.min_free_mb) {
            Some(why) if health.set(ConditionCode::DiskFull, why.clone()) => {
                tracing::error!(stage = "service", alert = "disk_full", "{why}");
                queue_alert(&cfg, AlertCode::DiskFull, &why);
            }
            Some(_) => {}
            None if scan_full => {
                let why = "the state disk is full (the state database cannot be written)".to_string();
                if health.set(ConditionCode::DiskFull, why.clone()) {
                    tracing::error!(stage = "service", alert = "disk_full", "{why}");
                }
            }
            None => {
                if health.clear(ConditionCode::DiskFull) {
                    tracing::info!(stage = "service", "the state disk has room again");
                }
            }
        }
        match result {
            Ok((report, panel_state)) => {
                let panel_state = with_model(panel_state);
                panel_tx.send_if_modified(|old| {
                    let changed = *old != panel_state;
                    *old = panel_state;
                    changed
                });
                for c in &report.case_changes {
                    tracing::info!(stage = "case", case = %c.case, state = %c.state, reasons = c.reasons.len(), "case {}", c.state);
                }
                watchdog.status(&format!(
                    "watching the share: {} files, {} waiting, {} quarantined this pass",
                    report.files_seen, report.waiting, report.quarantined
                ));
                on_event(ServiceEvent::Scan(&report));
                if report.quarantined > 0 && cfg.mqtt.enabled {
                    let why = format!(
                        "{} file(s) quarantined; the reasons are in the quarantine records on the box",
                        report.quarantined
                    );
                    queue_alert(&cfg, AlertCode::Quarantine, &why);
                }
                for why in &report.cross_case {
                    queue_alert(&cfg, AlertCode::CrossCaseDuplicate, why);
                }
                // Closed cases (and any left from before a restart) go to the worker.
                let _ = work_tx.try_send(());
            }
            Err(e) => {
                tracing::error!(stage = "ingest", error_kind = "scan", error = %e, "scan failed; retrying");
                watchdog.status(&format!("problem: {e}"));
            }
        }
        last_progress = (progress.load(Ordering::Relaxed), Instant::now());
        watchdog.ping();
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                // A case in hand is looked at between scans too, at least once a second.
                _ = tokio::time::sleep((case_limit / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))),
                    if busy.load(Ordering::Relaxed) != 0 => {
                    check_worker(&watchdog)?;
                }
                _ = wake_rx.recv() => {
                    // Let a burst of events settle into one scan.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while wake_rx.try_recv().is_ok() {}
                    break;
                }
                ev = event_rx.recv() => {
                    let Some(ev) = ev else { break };
                    note_worker_event(&health, &ev);
                    report_worker_event(&ev, &mut on_event);
                    panel_tx.send_modify(|st| *st = with_model(std::mem::take(st)));
                    watchdog.ping();
                }
                _ = stop.changed() => break,
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    watchdog.stopping();
    // The worker finishes the case in hand (its lock is one fsynced append), then stops.
    drop(work_tx);
    if let Some(worker) = worker {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
    while let Ok(ev) = event_rx.try_recv() {
        report_worker_event(&ev, &mut on_event);
    }
    let _ = mqtt_stop_tx.send(true);
    if let Some(p) = publisher {
        let _ = tokio::time::timeout(Duration::from_secs(3), p).await;
    }
    // The last frame shows the last lock, not the case in hand before it.
    panel_tx.send_modify(|st| *st = with_model(std::mem::take(st)));
    drop(panel_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), panel_task).await;
    tracing::info!(stage = "service", "crlm stopped cleanly");
    Ok(())
}

/// Queue an alert on its own (nothing is queued with MQTT off; a failure is logged).
fn queue_alert(cfg: &Config, code: AlertCode, message: &str) {
    if !cfg.mqtt.enabled {
        return;
    }
    let queued = crlm_state::StateDb::open(&cfg.database_path()).map_err(|e| e.to_string()).and_then(|db| {
        crlm_mqtt::outbox::enqueue_alert(&db, &cfg.mqtt, code, message, None).map_err(|e| e.to_string())
    });
    if let Err(e) = queued {
        tracing::error!(stage = "mqtt", alert = code.name(), error = %e, "cannot queue the alert");
    }
}

/// What a worker event says about the box's health: a failure sets FAILED (the pseudonym only:
/// the error's text may name files), the next lock clears it.
fn note_worker_event(health: &Health, ev: &WorkerEvent) {
    match ev {
        WorkerEvent::Failed { case, error } => {
            let why = if health::is_disk_full(error) {
                health.set(ConditionCode::DiskFull, "the state disk is full (a case could not be recorded)");
                "the state disk is full"
            } else {
                "see `crlm cases` on the box"
            };
            health.set(ConditionCode::Failed, format!("case {case} could not be processed ({why})"));
        }
        WorkerEvent::Locked(_) => {
            health.clear(ConditionCode::Failed);
        }
        WorkerEvent::Progress => {}
    }
}

/// Log a worker event and pass it to the caller.
fn report_worker_event(ev: &WorkerEvent, on_event: &mut impl FnMut(ServiceEvent<'_>)) {
    match ev {
        WorkerEvent::Locked(p) => {
            tracing::info!(stage = "ledger", case = %p.case, state = %p.state, seq = p.seq,
                record = %&p.record_hash[..16], resumed = p.resumed, seconds = p.seconds,
                timings_ms = %p.timings_ms, "case {} and locked", p.state);
            on_event(ServiceEvent::Locked(p));
        }
        WorkerEvent::Failed { case, error } => {
            tracing::error!(stage = "predict", alert = "case_failed", case = %case, error = %error,
                "case could not be processed; the next goes on");
            on_event(ServiceEvent::Failed { case, error });
        }
        WorkerEvent::Progress => {}
    }
}

/// inotify makes pick-up fast on local disks; polling stays on for network shares.
fn start_inotify(cfg: &Config, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = wake.try_send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(&cfg.share.path, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(stage = "service", error = %e, "inotify unavailable on the share; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(stage = "service", error = %e, "inotify unavailable; polling only");
            None
        }
    }
}

/// Starts of processing one case that may end with the process gone (kill -9 and power cuts
/// included) before the case is failed instead: a crash loop costs one case and a few restarts.
const MAX_INTERRUPTED: u32 = 5;

/// What the prediction worker reports through, besides its events.
struct WorkerHooks {
    events: mpsc::Sender<WorkerEvent>,
    extras: Arc<std::sync::Mutex<PanelExtras>>,
    progress: Arc<std::sync::atomic::AtomicU64>,
    outbox_wake: Arc<tokio::sync::Notify>,
    /// When the case in hand was taken (ms since `epoch` + 1; 0: none), for the case time limit.
    busy: Arc<std::sync::atomic::AtomicU64>,
    epoch: Instant,
}

/// The prediction worker: on each wake, every pending case in turn (predict, lock, outputs).
/// Runs on its own thread so a slow slide never delays scans, the panel or the watchdog.
fn processing_worker(mut processor: Processor, wake: std::sync::mpsc::Receiver<()>, hooks: WorkerHooks) {
    let WorkerHooks { events, extras, progress, outbox_wake, busy, epoch } = hooks;
    while wake.recv().is_ok() {
        let pending = match processor.pending() {
            Ok(p) => p,
            Err(e) => {
                let _ = events.blocking_send(WorkerEvent::Failed { case: "-".into(), error: e.to_string() });
                continue;
            }
        };
        for case_id in pending {
            let case = processor.pseudonym(case_id).unwrap_or_else(|| "?".into());
            if let Ok(mut x) = extras.lock() {
                x.processing = Some(ProcessingView { case: case.clone(), stage: "model".into(), ..Default::default() });
            }
            let _ = events.blocking_send(WorkerEvent::Progress);
            // A panic while processing one case (a decoder's bug on one file) costs that case, not
            // the worker: it is marked failed with the reason and the next case goes on. The
            // processor's durable state (ledger, state database) is written in whole steps.
            // What a panic cannot catch (an abort or a fault in a C library, the OOM killer)
            // takes the process down mid-case; the start counted here survives it, and a case
            // that has been cut off MAX_INTERRUPTED times is failed instead of taking the
            // service down for ever (systemd restarts it each time).
            let attempt = processor.begin_attempt(case_id).unwrap_or_else(|e| {
                tracing::error!(stage = "predict", error = %e, "cannot count the attempt");
                1
            });
            // A hang that never returns is cut off by the service (model.case_timeout_seconds),
            // and counts here like a crash.
            busy.store(u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1, Ordering::Relaxed);
            let r = if attempt > MAX_INTERRUPTED && !processor.is_locked(case_id) {
                Err(ProcessError::Interrupted(attempt - 1))
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| processor.process(case_id)))
                    .unwrap_or_else(|panic| Err(ProcessError::Panic(panic_message(panic.as_ref()))))
            };
            busy.store(0, Ordering::Relaxed);
            progress.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut x) = extras.lock() {
                x.processing = None;
                if let Ok(p) = &r {
                    let locked_at = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
                    x.result = Some(ResultView {
                        case: p.case.clone(),
                        risk_2y: p.risk_2y,
                        risk_group: p.risk_group.clone(),
                        threshold: None,
                        modalities: Vec::new(),
                        ledger_sequence: p.seq,
                        locked_at,
                    });
                }
            }
            let ev = match r {
                Ok(p) => WorkerEvent::Locked(p),
                Err(e) => {
                    let error = e.to_string();
                    if let Err(e2) = processor.mark_failed(case_id, &error) {
                        tracing::error!(stage = "predict", error = %e2, "cannot record the failure");
                    }
                    WorkerEvent::Failed { case, error }
                }
            };
            if let Err(e) = processor.end_attempt(case_id) {
                tracing::error!(stage = "predict", error = %e, "cannot close the attempt");
            }
            // The result (or the failure's alert) is in the outbox: send it now.
            outbox_wake.notify_one();
            let _ = events.blocking_send(ev);
        }
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

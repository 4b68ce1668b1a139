//! `crlm run`: the long-running service. Start-up, the scan loop, supervisor notifications and
//! clean shutdown. Ingest work runs on a blocking thread; the async loop keeps the watchdog and
//! status current and wakes early on inotify events. Shutdown waits for the scan in flight:
//! each of its steps is a committed transaction, so nothing in flight is lost.

use crate::config::Config;
use crate::ingest::{IngestError, Ingestor, ScanReport};
use crlm_drivers::watchdog::Watchdog;
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
    /// The configured model package failed verification (or does not build): the service does
    /// not start, so nothing is ever predicted by an altered or unknown model.
    #[error("model package refused: {0}")]
    Model(#[from] crlm_models::inference::ModelError),
}

/// Run until `stop` turns true. `on_scan` sees every scan report (the demo prints progress).
pub async fn run(
    cfg: Config,
    watchdog: Arc<dyn Watchdog>,
    mut stop: watch::Receiver<bool>,
    mut on_scan: impl FnMut(&ScanReport) + Send,
) -> Result<(), ServiceError> {
    let model_cfg = cfg.clone();
    let model = tokio::task::spawn_blocking(move || crate::predict::load_model(&model_cfg, None))
        .await
        .map_err(|e| ServiceError::Join(e.to_string()))??;
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
    let model_view = crate::panel::state::ModelView {
        name: spec.name.clone(),
        version: spec.version.clone(),
        sha256: model.package.sha256.clone(),
        demo: spec.demo,
    };
    let with_model = move |mut st: crate::panel::state::PanelState| {
        st.model = Some(model_view.clone());
        st
    };
    let open_cfg = cfg.clone();
    let mut ingestor = tokio::task::spawn_blocking(move || Ingestor::open(&open_cfg))
        .await
        .map_err(|e| ServiceError::Join(e.to_string()))??;
    let progress = ingestor.progress.clone();
    // The panel runs on its own task; the scan loop only publishes the newest state.
    let (panel_tx, panel_rx) = watch::channel(with_model(crate::panel::feed::build(ingestor.database(), &cfg)));
    let panel = crate::panel::task::open_display(&cfg);
    let panel_task = tokio::spawn(crate::panel::task::run_panel(panel, cfg.display.mode, panel_rx, 4.0));
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
    loop {
        // One scan on a blocking thread; keep the watchdog fed only while it makes progress.
        let panel_cfg = cfg.clone();
        let with_model = with_model.clone();
        let mut job = tokio::task::spawn_blocking(move || {
            let r = ingestor.scan_once();
            let panel_state = with_model(crate::panel::feed::build(ingestor.database(), &panel_cfg));
            (ingestor, r.map(|rep| (rep, panel_state)))
        });
        let (back, result) = loop {
            tokio::select! {
                done = &mut job => break done.map_err(|e| ServiceError::Join(e.to_string()))?,
                _ = tokio::time::sleep(ping_every) => {
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
        match result {
            Ok((report, panel_state)) => {
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
                on_scan(&report);
            }
            Err(e) => {
                tracing::error!(stage = "ingest", error_kind = "scan", error = %e, "scan failed; retrying");
                watchdog.status(&format!("problem: {e}"));
            }
        }
        last_progress = (progress.load(Ordering::Relaxed), Instant::now());
        watchdog.ping();
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = wake_rx.recv() => {
                // Let a burst of events settle into one scan.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while wake_rx.try_recv().is_ok() {}
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    watchdog.stopping();
    drop(panel_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), panel_task).await;
    tracing::info!(stage = "service", "crlm stopped cleanly");
    Ok(())
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

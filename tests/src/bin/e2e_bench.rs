//! The end-to-end benchmark (docs/PERFORMANCE.md): one standard case, from the moment its last
//! file is complete in the share to the de-identified result arriving at an independent MQTT
//! subscriber, through the real `crlm run` process with its embedded broker.
//!
//! The case (CT 300 slices of 512 x 512, a pyramidal slide with about 4,000 tissue tiles at the
//! package's resolution, a clinical file) is written outside the share and moved in with one
//! rename per folder, so "complete" is a single instant. Reported: wall time per stage, from the
//! service's own log and timings; the service's peak RSS (VmHWM); and how late each heartbeat
//! was while the case ran.
//!
//! `cargo build --release && cargo run --release -p crlm-e2e --bin e2e_bench -- [--crlm target/release/crlm]
//!  [--slices 300] [--size 512] [--slide 14080x11264] [--runs 1]`

use anyhow::{Context, bail};
use crlm_e2e::{Subscriber, free_port};
use crlm_models::dicom::{CtSeriesSpec, write_ct_series};
use crlm_models::slide::writer::{SlideSpec, write_pyramidal_tiff};
use crlm_models::synth::{SampleCase, clinical_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

struct Args {
    crlm: PathBuf,
    slices: u32,
    size: u16,
    slide: (u32, u32),
    runs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a =
        Args { crlm: PathBuf::from("target/release/crlm"), slices: 300, size: 512, slide: (14080, 11264), runs: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--crlm" => a.crlm = v.into(),
            "--slices" => a.slices = v.parse()?,
            "--size" => a.size = v.parse()?,
            "--runs" => a.runs = v.parse()?,
            "--slide" => {
                let (w, h) = v.split_once('x').context("--slide WxH")?;
                a.slide = (w.parse()?, h.parse()?);
            }
            other => bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

/// Write the standard case into `dir` (outside the share).
fn write_case(dir: &Path, args: &Args) -> anyhow::Result<()> {
    let case = SampleCase::new("BENCH-0001");
    let mut ct = CtSeriesSpec::axial(&case.patient_id, &case.study_uid(), &case.series_uid("pv"), args.slices);
    ct.rows = args.size;
    ct.columns = args.size;
    ct.pixel_spacing = [0.78, 0.78];
    ct.slice_spacing = 1.0;
    ct.slice_thickness = 1.0;
    let half = f64::from(args.size) * 0.78 / 2.0;
    ct.origin = [-half, -half, 100.0];
    ct.hu = std::sync::Arc::new(crlm_models::dicom::writer::texture_hu);
    write_ct_series(&dir.join("ct_portal_venous"), &ct)?;
    let mut slide = SlideSpec::small(args.slide.0, args.slide.1);
    slide.levels = 6;
    slide.label_text = None;
    write_pyramidal_tiff(&dir.join("slide_HE_1.svs"), &slide)?;
    std::fs::write(dir.join("clinical.json"), clinical_json(&case))?;
    Ok(())
}

/// The RFC 3339 time at the start of a log line, as SystemTime.
fn line_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(t.timestamp_micros()).ok()?))
}

fn secs(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

struct RunResult {
    stages: Vec<(String, f64)>,
    total: f64,
    peak_rss_mib: f64,
    heartbeat_widest_gap: f64,
    heartbeats: usize,
    tissue_tiles: u64,
    tiles_used: u64,
}

fn one_run(args: &Args, staged: &Path) -> anyhow::Result<RunResult> {
    let work_dir = tempfile::tempdir()?;
    // E2E_BENCH_KEEP=1 keeps the run's share, state and service log for a closer look.
    let work = if std::env::var_os("E2E_BENCH_KEEP").is_some() {
        let kept = work_dir.keep();
        eprintln!("  keeping {}", kept.display());
        kept
    } else {
        work_dir.path().to_path_buf()
    };
    let work = work.as_path();
    let share = work.join("share");
    let state = work.join("state");
    std::fs::create_dir_all(&share)?;
    let port = free_port();
    let log_path = work.join("service.log");
    let mut service = Command::new(&args.crlm)
        .arg("run")
        .env_remove("CRLM_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env("CRLM_SHARE__PATH", &share)
        .env("CRLM_STATE__PATH", &state)
        .env("CRLM_SHARE__QUIET_SECONDS", "1")
        .env("CRLM_SHARE__POLL_SECONDS", "0.5")
        .env("CRLM_MQTT__EMBEDDED_PORT", port.to_string())
        .env("CRLM_MQTT__HEARTBEAT_SECONDS", "1")
        .env("CRLM_LOG__TARGET", "stderr")
        .env("CRLM_LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting crlm run")?;
    let subscriber = Subscriber::start(port);
    let up = Instant::now();
    while subscriber.leaf("heartbeat").is_empty() {
        if up.elapsed() > Duration::from_secs(60) {
            let _ = service.kill();
            bail!("no heartbeat within 60 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The case arrives complete: one rename of the staged folder (same file system).
    let case_dir = share.join("bench-case");
    let copied = work.join("incoming");
    copy_tree(staged, &copied)?;
    let t_complete = SystemTime::now();
    let i_complete = Instant::now();
    std::fs::rename(&copied, &case_dir)?;
    let result = loop {
        if let Some((v, at)) = subscriber.leaf_timed("result").into_iter().next() {
            break (v, at);
        }
        if i_complete.elapsed() > Duration::from_secs(600) {
            let _ = service.kill();
            bail!("no result within 600 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let total = result.1.duration_since(i_complete).as_secs_f64();
    let t_result = t_complete + Duration::from_secs_f64(total);
    let peak_rss_mib = vm_hwm_kib(service.id()).unwrap_or(0) as f64 / 1024.0;
    // Heartbeats while the case ran: how far past its interval each arrived.
    let beats: Vec<Instant> = subscriber.leaf_timed("heartbeat").into_iter().map(|(_, at)| at).collect();
    let mut widest_gap: f64 = 0.0;
    let mut counted = 0;
    for w in beats.windows(2) {
        if w[1] >= i_complete && w[0] <= result.1 {
            widest_gap = widest_gap.max(w[1].duration_since(w[0]).as_secs_f64());
            counted += 1;
        }
    }
    let _ = Command::new("kill").args(["-TERM", &service.id().to_string()]).status();
    let _ = service.wait();
    let log = std::fs::read_to_string(&log_path)?;
    let find = |needle: &str| log.lines().find(|l| l.contains(needle));
    let closed = find("case complete").and_then(line_time).context("no `case complete` in the log")?;
    let locked_line = find("and locked").context("no lock in the log")?;
    let records = crlm_ledger::read_records(&state.join("ledger"))?;
    let first = &records.first().context("no ledger record")?.0;
    // The lock's own time (the log line may come a moment later).
    let locked = chrono::DateTime::parse_from_rfc3339(&first.core.wall_time)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_micros()).ok())
        .map(|us| SystemTime::UNIX_EPOCH + Duration::from_micros(us))
        .context("the ledger record's wall_time")?;
    let timings: Value = locked_line
        .split("timings_ms=")
        .nth(1)
        .and_then(|rest| serde_json::Deserializer::from_str(rest).into_iter::<Value>().next())
        .and_then(Result::ok)
        .unwrap_or(Value::Null);
    let t = |k: &str| timings[k].as_f64().unwrap_or(0.0) / 1000.0;
    let picked_up = secs(t_complete, closed);
    // The worker's clock: files, then the model, then the fsynced ledger append.
    let worker_start = secs(t_complete, locked) - t("files") - t("total") - t("ledger");
    let stages = vec![
        ("ingest: files stable (share.quiet_seconds = 1), recognised, case closed".to_string(), picked_up),
        ("hand-over: case closed to the prediction worker".to_string(), (worker_start - picked_up).max(0.0)),
        ("files: the case's files listed and hashed".to_string(), t("files")),
        ("CT: series to HU volume to model grid".to_string(), t("ct")),
        ("clinical: validate and encode".to_string(), t("clinical")),
        ("slide: tissue mask, tile grid, tiles read".to_string(), t("slide")),
        ("model: CRLM-Net forward (candle, CPU)".to_string(), t("model")),
        ("lock: ledger append, signed and fsynced".to_string(), t("ledger")),
        ("report: state and outbox transaction, MQTT to the subscriber".to_string(), secs(locked, t_result)),
        ("(after the lock, beside reporting) output files: result.json, FHIR, SR".to_string(), t("outputs")),
    ];
    let slides = first.case().and_then(|c| c.inputs).and_then(|i| i.slides).unwrap_or_default();
    let tissue_tiles = slides.iter().map(|s| s.tissue_tiles as u64).sum();
    let tiles_used = slides.iter().map(|s| s.tiles_used as u64).sum();
    drop(subscriber);
    Ok(RunResult {
        stages,
        total,
        peak_rss_mib,
        heartbeat_widest_gap: widest_gap,
        heartbeats: counted,
        tissue_tiles,
        tiles_used,
    })
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if !args.crlm.exists() {
        bail!("{} not found: run `cargo build --release` first or pass --crlm", args.crlm.display());
    }
    let staging = tempfile::tempdir()?;
    let staged = staging.path().join("case");
    eprintln!(
        "writing the standard case: CT {} x {}x{}, slide {}x{}, clinical ...",
        args.slices, args.size, args.size, args.slide.0, args.slide.1
    );
    let t = Instant::now();
    write_case(&staged, &args)?;
    eprintln!("  written in {:.1} s", t.elapsed().as_secs_f64());
    let mut runs = Vec::new();
    for i in 0..args.runs {
        // Page-cache the case as a share on a warm file server would have it.
        let r = one_run(&args, &staged)?;
        eprintln!("run {}: {:.2} s end to end, peak RSS {:.0} MiB", i + 1, r.total, r.peak_rss_mib);
        runs.push(r);
    }
    runs.sort_by(|a, b| a.total.total_cmp(&b.total));
    let r = &runs[runs.len() / 2];
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("| Stage | Wall time (s) |");
    println!("|---|---|");
    for (name, s) in &r.stages {
        println!("| {name} | {s:.3} |");
    }
    println!("| **end to end: last file complete to MQTT result** | **{:.3}** |", r.total);
    println!();
    println!(
        "median of {} run(s) on {cpus} CPUs; service peak RSS {:.0} MiB; slide: {} tissue tiles, {} used by the model; \
         heartbeats (1 s interval) while the case ran: {}, widest gap between two {:.2} s",
        runs.len(),
        r.peak_rss_mib,
        r.tissue_tiles,
        r.tiles_used,
        r.heartbeats,
        r.heartbeat_widest_gap
    );
    Ok(())
}

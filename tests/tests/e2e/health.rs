//! Health as a contract (issue 21, defects 4 and 5), through the real binary: a ledger that fails
//! its check at start-up and a full state disk are each reported in the heartbeat (`conditions`,
//! `last_error`), as an alert and on the panel's problem screen, the service keeps receiving, and
//! the disk's condition clears when the disk has room again.

use crlm_e2e::{Site, Subscriber, files_under, signal, wait};
use crlm_ledger::LEDGER_FILE;
use crlm_models::synth::{SampleCase, write_sample_case};
use std::process::Command;
use std::time::Duration;

fn panel(site: &Site) -> String {
    std::fs::read_to_string(site.state.join("display.txt")).unwrap_or_default()
}

fn embedded_port(site: &Site) -> u16 {
    site.env.iter().find(|(k, _)| k == "CRLM_MQTT__EMBEDDED_PORT").and_then(|(_, v)| v.parse().ok()).unwrap()
}

/// A heartbeat naming `code` among its conditions.
fn has_condition(sub: &Subscriber, code: &str) -> bool {
    sub.leaf("heartbeat").last().is_some_and(|h| {
        h["conditions"].as_array().is_some_and(|c| c.iter().any(|x| x["code"] == code)) && h["last_error"].is_string()
    })
}

/// Defect 4: one byte flipped in the last ledger record. The service opened it, locked seq 40 on
/// top, and said nothing. Now: predictions held, files still received, the ledger untouched.
#[test]
fn a_ledger_that_fails_its_check_holds_predictions_and_says_so() {
    let mut site = Site::new(0.3);
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    let service = site.start(0);
    write_sample_case(&site.share.join("case-0"), &SampleCase::new("LEDGER-000")).unwrap();
    site.wait_cases(Duration::from_secs(120), |c| c.len() == 1 && c[0]["state"] == "predicted");
    signal(&service, "TERM");
    let mut service = service;
    assert!(service.wait().unwrap().success());

    let path = site.state.join("ledger").join(LEDGER_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(11).rposition(|w| w == b"\"risk_2y\":0").expect("the prediction's risk") + 12;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&path, &bytes).unwrap();

    let sub = Subscriber::start(embedded_port(&site));
    let mut service = site.start(1);
    wait("the ledger condition in a heartbeat", Duration::from_secs(60), || has_condition(&sub, "ledger"));
    assert!(service.try_wait().unwrap().is_none(), "the service must keep running: {}", site.log(1));
    // Alerts wait in the outbox and go again every 30 s until acked (no collector here), so a
    // subscriber that connected after the first send sees the second.
    wait("the ledger_invalid alert", Duration::from_secs(60), || {
        sub.leaf("alert").iter().any(|a| a["alert"] == "ledger_invalid")
    });
    wait("the problem screen", Duration::from_secs(20), || panel(&site).contains("Ledger check failed"));
    // Files are still received; nothing is locked on the failing ledger.
    write_sample_case(&site.share.join("case-1"), &SampleCase::new("LEDGER-001")).unwrap();
    let cases =
        site.wait_cases(Duration::from_secs(60), |c| c.len() == 2 && c.iter().any(|x| x["state"] == "complete"));
    assert!(cases.iter().filter(|c| c["state"] == "predicted").count() == 1, "{cases:#?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was appended to the failing ledger");
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
    assert!(site.log(1).contains("predictions held"), "{}", site.log(1));
}

/// Defect 5: a full state disk was a problem only in the log (heartbeat `last_error: null`,
/// `fleet watch` ok at 0.0 GB free, panel unchanged). The state on a small tmpfs of its own,
/// filled and emptied again.
#[test]
fn a_full_state_disk_is_reported_everywhere_and_clears_when_it_clears() {
    let mut site = Site::new(0.3);
    let mount = site.dir.path().join("state");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&mount).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk-full check needs a disk of its own");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    site.env.push(("CRLM_STATE__MIN_FREE_MB".into(), "16".into()));
    let sub = Subscriber::start(embedded_port(&site));
    let mut service = site.start(0);
    wait("a heartbeat without conditions", Duration::from_secs(60), || {
        sub.leaf("heartbeat")
            .last()
            .is_some_and(|h| h["conditions"] == serde_json::json!([]) && h["last_error"].is_null())
    });
    // Fill the disk to within 8 MB.
    let fill = mount.join("fill");
    let free = fs_free(&mount);
    let status = Command::new("fallocate").args(["-l", &(free - (8 << 20)).to_string()]).arg(&fill).status().unwrap();
    assert!(status.success());
    wait("the disk_full condition in a heartbeat", Duration::from_secs(30), || has_condition(&sub, "disk_full"));
    wait("the disk_full alert", Duration::from_secs(20), || {
        sub.leaf("alert").iter().any(|a| a["alert"] == "disk_full")
    });
    wait("the problem screen", Duration::from_secs(20), || panel(&site).contains("State disk full"));
    // Room again: the condition clears everywhere.
    std::fs::remove_file(&fill).unwrap();
    wait("a heartbeat without conditions again", Duration::from_secs(30), || {
        sub.leaf("heartbeat")
            .last()
            .is_some_and(|h| h["conditions"] == serde_json::json!([]) && h["last_error"].is_null())
    });
    wait("the problem screen gone", Duration::from_secs(20), || !panel(&site).contains("State disk full"));
    assert!(service.try_wait().unwrap().is_none(), "{}", site.log(0));
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
}

fn fs_free(path: &std::path::Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap()
}

/// Every tile of every level of the slide in `case_dir` overwritten with zeros: the file's
/// structure (and so its recognition) intact, its pixels undecodable.
fn damage_slide_tiles(case_dir: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let slide = files_under(case_dir).into_iter().find(|p| p.extension().is_some_and(|e| e == "svs")).expect("a slide");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&slide).unwrap();
    let limits = crlm_models::limits::Limits::default();
    let (_, levels) = crlm_models::slide::tiff::read_slide_layout(file.try_clone().unwrap(), &limits).unwrap();
    for l in &levels {
        assert_ne!(l.compression, 1, "zeros would decode as black tiles in an uncompressed slide");
        for (off, len) in l.tile_offsets.iter().zip(&l.tile_counts) {
            file.write_all_at(&vec![0u8; *len as usize], *off).unwrap();
        }
    }
    file.sync_all().unwrap();
}

/// Containment at the modality: a slide whose every tile is undecodable (the kind of file that
/// once panicked a decoder) costs the slide, not the case and not the service. The case is
/// predicted and locked on its CT and clinical data with the slide refused (the reason is in the
/// record), and the next case goes on with all three.
#[test]
fn an_undecodable_slide_costs_the_slide_and_the_case_is_predicted_without_it() {
    let site = Site::new(0.3);
    let staging = tempfile::tempdir().unwrap();
    let bad = staging.path().join("case-0");
    write_sample_case(&bad, &SampleCase::new("TILES-000")).unwrap();
    damage_slide_tiles(&bad);
    let mut service = site.start(0);
    assert!(Command::new("cp").arg("-r").arg(&bad).arg(site.share.join("case-0")).status().unwrap().success());
    write_sample_case(&site.share.join("case-1"), &SampleCase::new("TILES-001")).unwrap();
    let cases = site.wait_cases(Duration::from_secs(180), |c| {
        c.len() == 2 && c.iter().all(|x| x["state"] == "predicted" && x["outputs_written"] == true)
    });
    assert!(service.try_wait().unwrap().is_none(), "the service must keep running: {}", site.log(0));
    let export = site.command(&["ledger", "export", "--format", "json"]).output().unwrap();
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(export.status.success(), "{text}");
    // The damaged case ran on CT and clinical data; the good one on all three.
    assert_eq!(text.matches("\"modalities_used\": \"ct+clinical\"").count(), 1, "{text}");
    assert_eq!(text.matches("\"modalities_used\": \"ct+slide+clinical\"").count(), 1, "{text}");
    assert_eq!(cases.iter().filter(|c| c["ledger_seq"].is_number()).count(), 2);
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
}

/// The largest count of unfinished starts of processing any case (the `attempts` table).
fn unfinished_starts(site: &Site) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(site.state.join("crlm.sqlite")) else { return 0 };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row("SELECT COALESCE(MAX(n), 0) FROM attempts", [], |r| r.get(0)).unwrap_or(0)
}

/// Containment of what a panic cannot catch: an abort or a fault in a C library, or the OOM
/// killer, takes the process down in the middle of a case, and systemd starts it again, into
/// the same case. Here the service is killed (SIGKILL) as soon as it starts processing the case,
/// five times; the sixth start fails that case with the reason instead of trying again, alerts,
/// and predicts the next patient's case.
#[test]
fn a_case_that_keeps_taking_the_service_down_is_failed_after_five_starts() {
    let mut site = Site::new(0.3);
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    write_sample_case(&site.share.join("case-0"), &SampleCase::new("CRASH-000")).unwrap();
    for run in 0..5 {
        let mut service = site.start(run);
        let start = std::time::Instant::now();
        while unfinished_starts(&site) < run as i64 + 1 {
            assert!(start.elapsed() < Duration::from_secs(120), "run {run} never started the case: {}", site.log(run));
            assert!(service.try_wait().unwrap().is_none(), "run {run} ended: {}", site.log(run));
            std::thread::sleep(Duration::from_millis(5));
        }
        service.kill().unwrap();
        service.wait().unwrap();
    }
    assert!(site.cases().iter().all(|c| c["ledger_seq"].is_null()), "the kills came too late: {:#?}", site.cases());
    let sub = Subscriber::start(embedded_port(&site));
    let mut service = site.start(5);
    let cases = site.wait_cases(Duration::from_secs(60), |c| c.len() == 1 && c[0]["state"] == "failed");
    let failure = cases[0]["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("cut off 5 times"), "{cases:#?}");
    // The sixth start fails the case as it opens, often before this subscriber has connected to
    // the service's embedded broker; the alert waits in the outbox and goes again every 30 s until
    // acked (no collector here), so the resend is what a late subscriber sees.
    wait("the case_failed alert", Duration::from_secs(60), || {
        sub.leaf("alert").iter().any(|a| a["alert"] == "case_failed")
    });
    wait("the failed condition in a heartbeat", Duration::from_secs(30), || has_condition(&sub, "failed"));
    wait("the problem screen", Duration::from_secs(20), || panel(&site).contains("could not be processed"));
    write_sample_case(&site.share.join("case-1"), &SampleCase::new("CRASH-001")).unwrap();
    site.wait_cases(Duration::from_secs(120), |c| c.len() == 2 && c.iter().any(|x| x["state"] == "predicted"));
    // The case shows `predicted` from its lock; its start closes after its outputs are written,
    // a moment later.
    wait("every start that ended closed", Duration::from_secs(30), || unfinished_starts(&site) == 0);
    wait("the failed condition cleared by the next lock", Duration::from_secs(30), || {
        sub.leaf("heartbeat").last().is_some_and(|h| h["conditions"] == serde_json::json!([]))
    });
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
}

/// Containment of a hang: a decoder or the model runtime that never returns on one input would
/// keep the worker on that case for ever while scans and heartbeats go on. Past
/// `model.case_timeout_seconds` the service stops with the reason (systemd restarts it), the
/// cut-off start counts like a crash, and the sixth start fails the case. The limit here is
/// 20 ms, which any real case exceeds, so each start is cut off as a hang would be.
#[test]
fn a_case_past_the_time_limit_stops_the_service_and_is_failed_after_five_starts() {
    let mut site = Site::new(0.3);
    site.env.push(("CRLM_MODEL__CASE_TIMEOUT_SECONDS".into(), "0.02".into()));
    write_sample_case(&site.share.join("case-0"), &SampleCase::new("HANG-000")).unwrap();
    for run in 0..5 {
        let mut service = site.start(run);
        let status = wait_exit(&mut service, Duration::from_secs(120));
        assert!(!status.success(), "run {run} should have stopped on the time limit: {}", site.log(run));
        let log = site.log(run);
        assert!(log.contains("past model.case_timeout_seconds"), "run {run}: {log}");
        assert_eq!(unfinished_starts(&site), run as i64 + 1, "run {run}: {log}");
    }
    assert!(site.cases().iter().all(|c| c["ledger_seq"].is_null()), "{:#?}", site.cases());
    let mut service = site.start(5);
    let cases = site.wait_cases(Duration::from_secs(60), |c| c.len() == 1 && c[0]["state"] == "failed");
    let failure = cases[0]["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("cut off 5 times") && failure.contains("case_timeout_seconds"), "{cases:#?}");
    assert!(service.try_wait().unwrap().is_none(), "the service goes on: {}", site.log(5));
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
}

/// The exit status of `child` once it ends, within `limit`.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the service did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

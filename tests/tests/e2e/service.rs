//! The real `crlm run` process against a real share: kill -9 and restart, clean shutdown,
//! systemd notifications, and the CLI's configuration commands.

use crlm_e2e::{Site, crlm_bin, signal};
use crlm_models::synth::{SampleCase, write_sample_case};
use rand::{Rng, SeedableRng};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const CASES: usize = 6;
/// Files of a default sample case: 12 CT slices, 1 slide, 1 clinical file.
const FILES_PER_CASE: i64 = 14;

/// Cases arrive while the service is killed with SIGKILL at random moments and restarted:
/// afterwards every case exists exactly once, predicted and locked once, each file counted once.
#[test]
fn kill_9_during_ingest_loses_no_case_and_repeats_none() {
    let site = Site::new(0.3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut child = site.start(0);
    let mut runs = 1;
    for i in 0..CASES {
        // Write into a staging folder and move it in, as a scanner export lands file by file.
        let staging = site.dir.path().join(format!("staging-{i}"));
        write_sample_case(&staging, &SampleCase::new(&format!("KILL-{i:03}"))).unwrap();
        std::fs::rename(&staging, site.share.join(format!("case-{i:03}"))).unwrap();
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(rng.random_range(50..450)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            child = site.start(runs);
            runs += 1;
        }
    }
    let cases = site.wait_cases(Duration::from_secs(90), |c| {
        c.len() == CASES && c.iter().all(|x| x["state"] == "predicted" && x["outputs_written"] == true)
    });
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    for c in &cases {
        assert_eq!(c["files"], FILES_PER_CASE, "{c:#?}");
    }
    // Kills during prediction too: each case is locked exactly once and the chain verifies.
    let verify = site.command(&["ledger", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let export = site.command(&["ledger", "export", "--format", "json"]).output().unwrap();
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    let mut locked: Vec<&str> =
        export["rows"].as_array().unwrap().iter().map(|r| r["pseudonym"].as_str().unwrap()).collect();
    locked.sort();
    let before = locked.len();
    locked.dedup();
    assert_eq!((before, locked.len()), (CASES, CASES), "{export:#}");
    let mut pseudonyms: Vec<_> = cases.iter().map(|c| c["case"].as_str().unwrap().to_string()).collect();
    pseudonyms.sort();
    pseudonyms.dedup();
    assert_eq!(pseudonyms.len(), CASES);
    assert!(runs > CASES, "the service was restarted {runs} times");
}

#[test]
fn sigterm_stops_the_service_cleanly() {
    let site = Site::new(0.3);
    write_sample_case(&site.share.join("case-t"), &SampleCase::new("TERM-1")).unwrap();
    let mut child = site.start(0);
    site.wait_cases(Duration::from_secs(30), |c| c.len() == 1 && c[0]["state"] == "predicted");
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let log = site.log(0);
    assert!(log.contains("crlm stopped cleanly"), "{log}");
    // Logs name cases by pseudonym only, never the patient ID or the folder name.
    assert!(!log.contains("TERM-1"), "{log}");
    assert!(!log.contains("case-t"), "{log}");
}

#[test]
fn systemd_gets_ready_status_and_watchdog_pings() {
    let site = Site::new(0.3);
    let sock_path = site.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut child = site
        .command(&["run"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(10) {
        let n = sock.recv(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        let has = |p: &str| got.iter().any(|m| m.starts_with(p));
        if has("READY=1") && has("STATUS=") && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2 {
            break;
        }
    }
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    assert!(got.iter().any(|m| m.starts_with("READY=1")), "{got:?}");
    assert!(got.iter().any(|m| m.starts_with("STATUS=watching the share")), "{got:?}");
    assert!(got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2, "{got:?}");
    // STOPPING=1 is sent on the way out.
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if &buf[..n] == b"STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
}

#[test]
fn config_commands_explain_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let default = std::process::Command::new(crlm_bin()).args(["config", "default"]).output().unwrap();
    assert!(default.status.success());
    let file = dir.path().join("crlm.toml");
    std::fs::write(&file, &default.stdout).unwrap();
    let ok = std::process::Command::new(crlm_bin()).args(["config", "check"]).arg(&file).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(&file, "[share]\nquiet_seconds = -1\nwatch = true\n").unwrap();
    let bad = std::process::Command::new(crlm_bin())
        .args(["config", "check"])
        .arg(&file)
        .env("CRLM_EIGIBILITY__MIN_AGE", "3")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(78));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("unknown key share.watch"), "{err}");
    assert!(err.contains("unknown section [eigibility]"), "{err}");
    // Environment override beats the file, and is validated too.
    std::fs::write(&file, "[share]\nquiet_seconds = 5\n").unwrap();
    let env_bad = std::process::Command::new(crlm_bin())
        .args(["config", "check"])
        .arg(&file)
        .env("CRLM_SHARE__QUIET_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(env_bad.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&env_bad.stderr).contains("share.quiet_seconds = 0"));
}

#[test]
fn cases_command_says_what_to_do_without_a_database() {
    let site = Site::new(1.0);
    let out = site.command(&["cases"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has `crlm run` started"));
}

/// The running service drives the panel: the default PNG display shows the status at the
/// configured size, and a file-backed framebuffer receives RGB565 frames.
#[test]
fn the_service_draws_the_panel_on_png_and_framebuffer_displays() {
    let site = Site::new(0.3);
    write_sample_case(&site.share.join("case-p"), &SampleCase::new("PANEL-1")).unwrap();
    let mut child = site.start(0);
    site.wait_cases(Duration::from_secs(30), |c| c.len() == 1 && c[0]["state"] == "predicted");
    let png = site.state.join("display.png");
    let start = Instant::now();
    while !png.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no display.png");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let bytes = std::fs::read(&png).unwrap();
    let (w, h, _) = crlm_drivers::display::png::decode_png(&bytes).unwrap();
    assert_eq!((w, h), (480, 320));

    let fb = site.dir.path().join("fb0");
    std::fs::write(&fb, b"").unwrap();
    let mut child = site
        .command(&["run"])
        .env("CRLM_DISPLAY__DRIVER", "framebuffer")
        .env("CRLM_DISPLAY__PATH", &fb)
        .env("CRLM_DISPLAY__SIZE", "800x480")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let frame = loop {
        let b = std::fs::read(&fb).unwrap();
        if b.len() == 800 * 480 * 2 && b.iter().any(|x| *x != 0) {
            break b;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "framebuffer not drawn ({} bytes)", b.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    // The status screen's background colour (14, 20, 30) in RGB565 fills the middle.
    let px = |x: usize, y: usize| u16::from_le_bytes([frame[(y * 800 + x) * 2], frame[(y * 800 + x) * 2 + 1]]);
    use embedded_graphics::pixelcolor::raw::{RawData, RawU16};
    use embedded_graphics::pixelcolor::{Rgb565, Rgb888};
    let bg = RawU16::from(Rgb565::from(Rgb888::new(14, 20, 30))).into_inner();
    assert_eq!(px(700, 300), bg);
}

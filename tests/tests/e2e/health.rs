//! Health as a contract (issue 21, defects 4 and 5), through the real binary: a ledger that fails
//! its check at start-up and a full state disk are each reported in the heartbeat (`conditions`,
//! `last_error`), as an alert and on the panel's problem screen, the service keeps receiving, and
//! the disk's condition clears when the disk has room again.

use crlm_e2e::{Site, Subscriber, signal, wait};
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
    wait("the ledger_invalid alert", Duration::from_secs(20), || {
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

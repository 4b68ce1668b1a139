//! Fleet reporting end to end: the real service, a real broker process (Debian's mosquitto where
//! installed, and crlm's embedded rumqttd run as `crlm broker`), the real collector, and
//! mosquitto_sub as an independent client.

use crlm_e2e::{Site, crlm_bin, free_port, signal};
use crlm_models::synth::{SampleCase, write_sample_case};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn have(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

#[derive(Clone, Copy, PartialEq)]
enum BrokerKind {
    Mosquitto,
    Embedded,
}

fn start_broker(kind: BrokerKind, port: u16, dir: &Path) -> Child {
    let child = match kind {
        BrokerKind::Mosquitto => {
            let conf = dir.join("mosquitto.conf");
            std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))
                .unwrap();
            Command::new("mosquitto").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
        }
        BrokerKind::Embedded => Command::new(crlm_bin())
            .args(["broker", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn outbox_rows(state: &Path) -> i64 {
    let conn = rusqlite::Connection::open(state.join("crlm.sqlite")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT COUNT(*) FROM mqtt_outbox WHERE stream='result'", [], |r| r.get(0)).unwrap()
}

fn collected(db: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(crlm_bin()).args(["fleet", "export", "--format", "json", "--db"]).arg(db).output().unwrap();
    if !out.status.success() {
        return vec![];
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["rows"].as_array().cloned())
        .unwrap_or_default()
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The broker goes away while 5 cases finish, the service is killed -9 after locking them, and
/// the broker comes back without persistence: every result reaches the collector once, in
/// order, with its signature checked; the box's outbox empties only on the collector's acks, and
/// the ledger keeps the collector's countersignature.
fn outage(kind: BrokerKind) {
    let mut site = Site::new(0.3);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    site.env.push(("CRLM_MQTT__RECONNECT_MAX_SECONDS".into(), "1".into()));
    let devices = site.dir.path().join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    let key = site.dir.path().join("collector.key");
    let db = site.dir.path().join("collector.sqlite");
    let mut broker = start_broker(kind, port, site.dir.path());
    let collector_log = std::fs::File::create(site.dir.path().join("collector.log")).unwrap();
    let collector = Command::new(crlm_bin())
        .args(["fleet", "collect", "--broker", &url, "--client-id", "test-collector", "--db"])
        .arg(&db)
        .arg("--key")
        .arg(&key)
        .arg("--devices")
        .arg(&devices)
        .stdout(Stdio::null())
        .stderr(collector_log)
        .spawn()
        .unwrap();
    wait("the collector key", Duration::from_secs(10), || key.with_extension("pub").exists());
    site.env.push(("CRLM_LEDGER__COLLECTOR_KEYS".into(), format!("[\"{}\"]", key.with_extension("pub").display())));
    let mut service = site.start(0);
    let device_pub = site.state.join("keys/device.pub");
    wait("the device key", Duration::from_secs(20), || device_pub.exists());
    std::fs::copy(&device_pub, devices.join("box01.pub")).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    stop(broker);
    for i in 0..5 {
        write_sample_case(&site.share.join(format!("case-{i}")), &SampleCase::new(&format!("MQTT-{i:03}"))).unwrap();
    }
    site.wait_cases(Duration::from_secs(120), |c| c.len() == 5 && c.iter().all(|x| x["state"] == "predicted"));
    assert_eq!(outbox_rows(&site.state), 5, "locked results wait in the outbox while the broker is away");
    // Killed between lock and PUBACK: nothing was published yet.
    service.kill().unwrap();
    service.wait().unwrap();
    let service = site.start(1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(outbox_rows(&site.state), 5);
    broker = start_broker(kind, port, site.dir.path());
    wait("5 results at the collector", Duration::from_secs(60), || collected(&db).len() == 5);
    wait("the box's outbox to empty after the collector's acks", Duration::from_secs(30), || {
        outbox_rows(&site.state) == 0
    });
    let rows = collected(&db);
    let seqs: Vec<u64> = rows.iter().map(|r| r["sequence"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "in ledger order: {rows:#?}");
    let mut pseudonyms: Vec<&str> = rows.iter().map(|r| r["pseudonym"].as_str().unwrap()).collect();
    pseudonyms.dedup();
    assert_eq!(pseudonyms.len(), 5, "each once: {rows:#?}");
    assert!(rows.iter().all(|r| r["signature_ok"] == true), "{rows:#?}");
    signal(&service, "TERM");
    let mut service = service;
    assert!(service.wait().unwrap().success());
    let verify =
        site.command(&["ledger", "verify", "--collector-key"]).arg(key.with_extension("pub")).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && text.contains("proven by a second party up to record"), "{text}");
    let csv = Command::new(crlm_bin()).args(["fleet", "export", "--db"]).arg(&db).output().unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.starts_with("site,device,sequence,pseudonym,status,surgery_date,risk_2y"), "{csv}");
    stop(collector);
    stop(broker);
}

#[test]
fn results_survive_an_outage_of_the_embedded_broker() {
    outage(BrokerKind::Embedded);
}

#[test]
fn results_survive_an_outage_of_mosquitto() {
    if !have("mosquitto") {
        eprintln!("SKIPPED: mosquitto (Debian package) is not installed");
        return;
    }
    outage(BrokerKind::Mosquitto);
}

/// mosquitto_sub, an independent client, sees the retained `online` status, and the Last Will
/// turns it `offline` when the service is killed.
#[test]
fn last_will_marks_a_killed_box_offline() {
    if !have("mosquitto") || !have("mosquitto_sub") {
        eprintln!("SKIPPED: mosquitto and mosquitto-clients (Debian packages) are not installed");
        return;
    }
    let mut site = Site::new(0.3);
    let port = free_port();
    site.env.push(("CRLM_MQTT__URL".into(), format!("mqtt://127.0.0.1:{port}")));
    let broker = start_broker(BrokerKind::Mosquitto, port, site.dir.path());
    let status = || {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "crlm/v1/+/+/status", "-C", "1", "-W", "3"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let mut service = site.start(0);
    wait("status online", Duration::from_secs(20), || status()["state"] == "online");
    let s = status();
    assert_eq!(
        (s["version"].as_u64(), s["site"].as_str(), s["device"].as_str()),
        (Some(1), Some("site01"), Some("box01"))
    );
    service.kill().unwrap();
    service.wait().unwrap();
    wait("status offline (Last Will)", Duration::from_secs(30), || status()["state"] == "offline");
    stop(broker);
}

//! Helpers for end-to-end tests: the real `crlm` binary, run as a process against a real share.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `crlm` binary of this build. Cargo builds it for `cargo test --workspace`, but not for
/// `cargo test -p crlm-e2e`, so it is brought up to date once per test process. A binary newer
/// than every source it is built from is used as is: `cargo build -p crlm` resolves
/// features differently from the workspace's test build and would rebuild everything (minutes).
pub fn crlm_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // Tests run from <target>/<profile>/deps/, binaries (the soak) from <target>/<profile>/.
        let dir = exe.parent().expect("executable directory");
        let target = if dir.ends_with("deps") { dir.parent().expect("target directory") } else { dir };
        let bin = target.join("crlm");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if let Ok(built) = std::fs::metadata(&bin).and_then(|m| m.modified()) {
            let sources = ["appliance", "models", "drivers", "Cargo.toml", "Cargo.lock"].map(|p| root.join(p));
            if sources.iter().all(|p| newest_mtime(p).is_some_and(|t| t <= built)) {
                return bin;
            }
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // A release build of the tests (the soak) runs a release crlm.
        let profile: &[&str] = if cfg!(debug_assertions) { &[] } else { &["--release"] };
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "crlm", "--bin", "crlm"])
            .args(profile)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building crlm failed");
        target.join("crlm")
    })
    .clone()
}

/// Every file beneath `dir` (recursively); nothing where it cannot be read.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
        }
    }
    out
}

/// The newest modification time of a file or anything beneath a folder (hidden entries and
/// build outputs skipped).
fn newest_mtime(p: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    let own = meta.modified().ok()?;
    if !meta.is_dir() {
        return Some(own);
    }
    let mut newest = own;
    for e in std::fs::read_dir(p).ok()?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "__pycache__" {
            continue;
        }
        if let Some(t) = newest_mtime(&e.path()) {
            newest = newest.max(t);
        }
    }
    Some(newest)
}

/// `../shared/data` when present (tests using it skip with a message otherwise).
pub fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if p.join("MANIFEST.tsv").exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: ../shared/data is absent; the real public files are not tested here");
        None
    }
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18830)
}

/// A share and a state folder, and the environment that points `crlm` at them.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub share: PathBuf,
    pub state: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Site {
    pub fn new(quiet_seconds: f64) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = dir.path().join("share");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&share).expect("share");
        let env = vec![
            ("CRLM_SHARE__PATH".to_string(), share.display().to_string()),
            ("CRLM_STATE__PATH".to_string(), state.display().to_string()),
            ("CRLM_SHARE__QUIET_SECONDS".to_string(), quiet_seconds.to_string()),
            ("CRLM_SHARE__POLL_SECONDS".to_string(), "0.2".to_string()),
            ("CRLM_LOG__TARGET".to_string(), "stderr".to_string()),
            // Each site's embedded broker on its own port: tests run in parallel.
            ("CRLM_MQTT__EMBEDDED_PORT".to_string(), free_port().to_string()),
        ];
        Site { dir, share, state, env }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crlm_bin());
        c.args(args).env_remove("NOTIFY_SOCKET").env_remove("CRLM_CONFIG");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Start `crlm run` with stderr captured to `<dir>/service-N.log`.
    pub fn start(&self, n: usize) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("service-{n}.log"))).expect("log file");
        self.command(&["run"]).stdout(Stdio::null()).stderr(log).spawn().expect("starting crlm run")
    }

    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("service-{n}.log"))).unwrap_or_default()
    }

    /// `crlm cases --json`, or an empty list before the database exists.
    pub fn cases(&self) -> Vec<serde_json::Value> {
        let out = self.command(&["cases", "--json"]).output().expect("crlm cases");
        if !out.status.success() {
            return vec![];
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Poll `crlm cases` until `done`, or panic with the last view after `timeout`.
    pub fn wait_cases(&self, timeout: Duration, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let cases = self.cases();
            if done(&cases) {
                return cases;
            }
            assert!(start.elapsed() < timeout, "timed out waiting; cases: {cases:#?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Send a signal to a child process.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Is `bin` on the PATH?
pub fn have(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

/// Poll `ok` every 200 ms, or panic naming `what` after `timeout`.
pub fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BrokerKind {
    /// Debian's mosquitto (tests skip it where it is not installed).
    Mosquitto,
    /// crlm's embedded rumqttd, run alone as `crlm broker`.
    Embedded,
}

/// Start a broker on loopback `port` without persistence; returns once it accepts connections.
pub fn start_broker(kind: BrokerKind, port: u16, dir: &Path) -> Child {
    let child = match kind {
        BrokerKind::Mosquitto => {
            let conf = dir.join("mosquitto.conf");
            std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))
                .expect("mosquitto.conf");
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting mosquitto")
        }
        BrokerKind::Embedded => Command::new(crlm_bin())
            .args(["broker", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting crlm broker"),
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Kill and reap a child process.
pub fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Results waiting in the box's durable outbox.
pub fn outbox_rows(state: &Path) -> i64 {
    let conn = rusqlite::Connection::open(state.join("crlm.sqlite")).expect("state database");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.query_row("SELECT COUNT(*) FROM mqtt_outbox WHERE stream='result'", [], |r| r.get(0)).unwrap_or(-1)
}

/// Every message in the box's outbox (results and alerts).
pub fn outbox_all(state: &Path) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(state.join("crlm.sqlite")) else { return -1 };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row("SELECT COUNT(*) FROM mqtt_outbox", [], |r| r.get(0)).unwrap_or(-1)
}

/// The results a collector database holds (`crlm fleet export --format json`).
pub fn collected(db: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(crlm_bin())
        .args(["fleet", "export", "--format", "json", "--db"])
        .arg(db)
        .output()
        .expect("crlm fleet export");
    if !out.status.success() {
        return vec![];
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["rows"].as_array().cloned())
        .unwrap_or_default()
}

/// The newest heartbeat the collector holds from any box (its `devices` table), if any.
pub fn latest_heartbeat(db: &Path) -> Option<serde_json::Value> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let text: String = conn
        .query_row(
            "SELECT heartbeat FROM devices WHERE heartbeat IS NOT NULL ORDER BY last_seen_ms DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// The study office's collector (`crlm fleet collect`) as a process, its key made in `dir`.
pub struct Collector {
    pub child: Child,
    pub db: PathBuf,
    pub key: PathBuf,
    pub devices: PathBuf,
}

impl Collector {
    pub fn start(dir: &Path, broker_url: &str) -> Collector {
        let devices = dir.join("devices");
        std::fs::create_dir_all(&devices).expect("devices folder");
        let key = dir.join("collector.key");
        let db = dir.join("collector.sqlite");
        let log = std::fs::File::create(dir.join("collector.log")).expect("collector log");
        let child = Command::new(crlm_bin())
            .args(["fleet", "collect", "--broker", broker_url, "--client-id", "test-collector", "--db"])
            .arg(&db)
            .arg("--key")
            .arg(&key)
            .arg("--devices")
            .arg(&devices)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting crlm fleet collect");
        wait("the collector key", Duration::from_secs(10), || key.with_extension("pub").exists());
        Collector { child, db, key, devices }
    }

    /// Register a box's device key (as the study office does when a box is enrolled):
    /// `<devices>/site01/box01.pub`.
    pub fn register(&self, state: &Path) {
        let device_pub = state.join("keys/device.pub");
        wait("the device key", Duration::from_secs(20), || device_pub.exists());
        std::fs::create_dir_all(self.devices.join("site01")).expect("registration folder");
        std::fs::copy(&device_pub, self.devices.join("site01/box01.pub")).expect("registering the box");
    }

    /// Make the box trust this collector's acks (`mqtt.collector_key`); before the box starts.
    pub fn trusted_by(&self, site: &mut Site) {
        site.env.push(("CRLM_MQTT__COLLECTOR_KEY".into(), self.key.with_extension("pub").display().to_string()));
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish `payload` on `topic` at QoS 1 as an anonymous client of our own (rumqttc, not crlm's
/// code), returning once the broker has acknowledged it: what any client the broker lets in can do.
pub fn publish_anonymously(port: u16, topic: &str, payload: &[u8]) {
    let id = format!("anonymous-{}-{}", std::process::id(), free_port());
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 8);
    client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec()).expect("queue the publish");
    let start = Instant::now();
    for ev in connection.iter() {
        assert!(start.elapsed() < Duration::from_secs(10), "the broker did not take the message");
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev {
            break;
        }
        if ev.is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = client.disconnect();
}

/// The messages a collector rejected (`crlm fleet rejected --json`): their reasons.
pub fn rejected(db: &Path) -> Vec<String> {
    let Ok(out) = Command::new(crlm_bin()).args(["fleet", "rejected", "--json", "--db"]).arg(db).output() else {
        return vec![];
    };
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| {
            v["rows"].as_array().map(|r| r.iter().filter_map(|x| x["reason"].as_str().map(String::from)).collect())
        })
        .unwrap_or_default()
}

/// One received message: topic, payload (JSON, or null when not JSON) and when it arrived.
pub type Received = (String, Value, Instant);

/// An MQTT client of its own (rumqttc's blocking client, not crlm's code) that records every
/// message under `crlm/#` with its arrival time, re-subscribing after each connection.
pub struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    pub fn start(port: u16) -> Subscriber {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let id = format!("independent-subscriber-{}", std::process::id());
            let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(5));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut connection) = rumqttc::Client::new(opts, 64);
            for ev in connection.iter() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.subscribe("crlm/#", rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if let Ok(mut m) = m.lock() {
                            m.push((p.topic.clone(), v, Instant::now()));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        Subscriber { received, stop }
    }

    /// Every message so far: (topic, payload).
    pub fn messages(&self) -> Vec<(String, Value)> {
        self.received.lock().map(|m| m.iter().map(|(t, v, _)| (t.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// The payloads on one topic leaf (`result`, `heartbeat`, ...), in arrival order.
    pub fn leaf(&self, leaf: &str) -> Vec<Value> {
        self.leaf_timed(leaf).into_iter().map(|(v, _)| v).collect()
    }

    /// The payloads on one topic leaf with their arrival times.
    pub fn leaf_timed(&self, leaf: &str) -> Vec<(Value, Instant)> {
        self.received
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(t, _, _)| t.rsplit('/').next() == Some(leaf))
                    .map(|(_, v, at)| (v.clone(), *at))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// libonnxruntime for the onnx backend's tests, or None with a message (the test skips). With
/// REQUIRE_ONNXRUNTIME=1 (set by .ci/run after installing the onnxruntime wheel) a missing library
/// fails the test instead.
pub fn onnx_runtime() -> Option<PathBuf> {
    match crlm_models::backend::onnx_runtime::find_library(Path::new("")) {
        Ok(p) => Some(p),
        Err(why) => {
            assert!(std::env::var("REQUIRE_ONNXRUNTIME").as_deref() != Ok("1"), "REQUIRE_ONNXRUNTIME=1 but {why}");
            eprintln!("SKIPPED: ONNX Runtime is not installed here ({why})");
            None
        }
    }
}

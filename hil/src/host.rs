//! The site around the box, on the harness's machine: the central MQTT broker (Debian's
//! mosquitto, or crlm's embedded broker where mosquitto is absent), the study office's collector
//! (`crlm fleet collect`, which verifies and countersigns), a subscriber of our own (rumqttc, not
//! crlm's code) that records every result message the box sent, and the relay through which the
//! box reaches the broker, which can cut that path silently (a partition).

use crate::device::{DeviceError, parsed};
use crate::wire::{Alert, Export, Heartbeat, LockedRow, ResultMessage};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP port free on loopback now.
pub fn free_port() -> Result<u16, DeviceError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DeviceError::io("a free port", e))
}

/// Wait until something accepts connections on loopback `port`; false after `limit`.
pub fn listening(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub fn have(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The central broker; stopped and started again on the same port for outages.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    crlm: PathBuf,
    child: Option<Child>,
    pub kind: &'static str,
}

impl Broker {
    pub fn start(dir: &Path, crlm: &Path) -> Result<Broker, DeviceError> {
        let kind = if have("mosquitto") { "mosquitto" } else { "crlm broker (mosquitto is not installed)" };
        let mut b = Broker { port: free_port()?, dir: dir.to_path_buf(), crlm: crlm.to_path_buf(), child: None, kind };
        b.up()?;
        Ok(b)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Start it again (after [`Broker::down`]); returns once it accepts connections.
    pub fn up(&mut self) -> Result<(), DeviceError> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = if self.kind == "mosquitto" {
            let conf = self.dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n", self.port),
            )
            .map_err(|e| DeviceError::io("mosquitto.conf", e))?;
            Command::new("mosquitto").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
        } else {
            Command::new(&self.crlm)
                .args(["broker", "--port", &self.port.to_string()])
                .env_remove("CRLM_CONFIG")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        }
        .map_err(|e| DeviceError::io("starting the broker", e))?;
        self.child = Some(child);
        if !listening(self.port, Duration::from_secs(15)) {
            return Err(DeviceError::Failed(format!("the broker ({}) did not start", self.kind)));
        }
        Ok(())
    }

    /// The broker is gone (its host down): every connection drops and none is accepted.
    pub fn down(&mut self) {
        if let Some(c) = self.child.take() {
            kill(c);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// A TCP relay between the box and the broker that can cut the path silently: while partitioned
/// every byte either way is dropped and nothing is closed, as when a link between two sites goes
/// down (no RST, no FIN: each side notices only by its own timeouts). Healing drops the
/// connections that were stuck, as their peers have given up on them; new ones go through. The
/// box reaches the broker only through it; the collector is not behind it.
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    quit: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(upstream: u16) -> Result<Relay, DeviceError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| DeviceError::io("the relay", e))?;
        let port = listener.local_addr().map_err(|e| DeviceError::io("the relay", e))?.port();
        listener.set_nonblocking(true).map_err(|e| DeviceError::io("the relay", e))?;
        let relay = Relay { port, cut: Arc::default(), epoch: Arc::default(), quit: Arc::default() };
        let (cut, epoch, quit) = (relay.cut.clone(), relay.epoch.clone(), relay.quit.clone());
        std::thread::spawn(move || {
            while !quit.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let mine = epoch.load(Ordering::Relaxed);
                for (from, to) in [(down.try_clone(), up.try_clone()), (up.try_clone(), down.try_clone())] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let (cut, epoch, quit) = (cut.clone(), epoch.clone(), quit.clone());
                        std::thread::spawn(move || pump(from, to, mine, &cut, &epoch, &quit));
                    }
                }
            }
        });
        Ok(relay)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Cut the path (true) or heal it (false).
    pub fn partition(&self, cut: bool) {
        if !cut {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
    }
}

/// Copy `from` to `to` until either closes, dropping what arrives while the path is cut; give up
/// on the connection once the path has healed after a cut (its epoch passed).
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    mine: u64,
    cut: &AtomicBool,
    epoch: &std::sync::atomic::AtomicU64,
    quit: &AtomicBool,
) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if quit.load(Ordering::Relaxed) || epoch.load(Ordering::Relaxed) != mine {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if cut.load(Ordering::Relaxed) {
                    continue; // lost on the way
                }
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// The study office's collector, its key made in `dir`.
pub struct Collector {
    child: Option<Child>,
    crlm: PathBuf,
    pub db: PathBuf,
    pub key_pub: PathBuf,
    devices: PathBuf,
}

impl Collector {
    pub fn start(dir: &Path, crlm: &Path, broker_url: &str) -> Result<Collector, DeviceError> {
        let devices = dir.join("devices");
        std::fs::create_dir_all(&devices).map_err(|e| DeviceError::io("the collector's devices folder", e))?;
        let key = dir.join("collector.key");
        let db = dir.join("collector.sqlite");
        let log = std::fs::File::create(dir.join("collector.log")).map_err(|e| DeviceError::io("collector.log", e))?;
        let child = Command::new(crlm)
            .args(["fleet", "collect", "--broker", broker_url, "--client-id", "hil-collector", "--db"])
            .arg(&db)
            .arg("--key")
            .arg(&key)
            .arg("--devices")
            .arg(&devices)
            .env_remove("CRLM_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| DeviceError::io("starting crlm fleet collect", e))?;
        let key_pub = key.with_extension("pub");
        let c = Collector { child: Some(child), crlm: crlm.to_path_buf(), db, key_pub, devices };
        let start = Instant::now();
        while !c.key_pub.exists() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(DeviceError::Failed("the collector made no key".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// Enrol a box: its device key under `<devices>/<site>/<device>.pub`.
    pub fn register(&self, site: &str, device: &str, device_pub: &[u8]) -> Result<(), DeviceError> {
        let dir = self.devices.join(site);
        std::fs::create_dir_all(&dir).map_err(|e| DeviceError::io("registration folder", e))?;
        std::fs::write(dir.join(format!("{device}.pub")), device_pub).map_err(|e| DeviceError::io("registering", e))
    }

    /// The results the collector holds, verified.
    pub fn results(&self) -> Result<Vec<LockedRow>, DeviceError> {
        if !self.db.exists() {
            return Ok(Vec::new());
        }
        let out = Command::new(&self.crlm)
            .args(["fleet", "export", "--format", "json", "--db"])
            .arg(&self.db)
            .env_remove("CRLM_CONFIG")
            .output()
            .map_err(|e| DeviceError::io("crlm fleet export", e))?;
        Ok(parsed::<Export>(out, "crlm fleet export")?.rows)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            kill(c);
        }
    }
}

#[derive(Default)]
struct Seen {
    results: Vec<ResultMessage>,
    heartbeats: Vec<Heartbeat>,
    alerts: Vec<Alert>,
    unreadable: u64,
}

/// An independent subscriber to `crlm/#`, re-subscribing after every connection (it lives through
/// broker outages).
pub struct Subscriber {
    seen: Arc<Mutex<Seen>>,
    quit: Arc<AtomicBool>,
}

impl Subscriber {
    pub fn start(port: u16) -> Subscriber {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let quit = Arc::new(AtomicBool::new(false));
        let (s, q) = (seen.clone(), quit.clone());
        std::thread::spawn(move || {
            let id = format!("hil-subscriber-{}-{port}", std::process::id());
            let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(5));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut connection) = rumqttc::Client::new(opts, 64);
            for ev in connection.iter() {
                if q.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.subscribe("crlm/#", rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let mut seen = s.lock().unwrap_or_else(|e| e.into_inner());
                        let ok = match p.topic.rsplit('/').next() {
                            Some("result") => serde_json::from_slice(&p.payload).map(|m| seen.results.push(m)),
                            Some("heartbeat") => serde_json::from_slice(&p.payload).map(|m| seen.heartbeats.push(m)),
                            Some("alert") => serde_json::from_slice(&p.payload).map(|m| seen.alerts.push(m)),
                            _ => Ok(()),
                        };
                        if ok.is_err() {
                            seen.unreadable += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        Subscriber { seen, quit }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn results(&self) -> Vec<ResultMessage> {
        self.with(|s| s.results.clone())
    }

    pub fn last_heartbeat(&self) -> Option<Heartbeat> {
        self.with(|s| s.heartbeats.last().cloned())
    }

    pub fn alerts(&self) -> Vec<String> {
        self.with(|s| s.alerts.iter().map(|a| a.alert.clone()).collect())
    }

    /// Messages on a known topic that did not parse as that message.
    pub fn unreadable(&self) -> u64 {
        self.with(|s| s.unreadable)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
    }
}

//! The `local` target: `crlm run` as a process on this machine, on a real share folder and state
//! folder, configured by a `crlm.toml` as on the box.
//!
//! There is no systemd here (it is not this machine's init), so a supervisor thread keeps its
//! side of the unit's contract (yocto/meta-crlm/.../crlm.service): `Type=notify` (the service is
//! started when it says `READY=1` on `NOTIFY_SOCKET`), `WatchdogSec` (no `WATCHDOG=1` for that
//! long: SIGABRT, then SIGKILL), `Restart=on-failure` after `RestartSec`, and no restart on exit 0
//! or 78. The qemu and ssh targets run the real unit under real systemd. A power cut here kills
//! the process; the kernel keeps its page cache, so unflushed writes survive (the report says so).

use crate::device::{Abilities, Device, DeviceError, Supervision};
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the local box is set up.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `crlm` binary the box runs.
    pub crlm: PathBuf,
    /// `mqtt://127.0.0.1:PORT` of the host's broker.
    pub broker_url: String,
    /// The collector's public key, trusted for acks.
    pub collector_key: Option<PathBuf>,
    /// Model signing keys the box trusts (besides the demo key for demo packages).
    pub trusted_keys: Vec<PathBuf>,
    /// Put the state on a tmpfs of this many MiB (needs root), for the disk-full scenario.
    pub state_disk_mib: Option<u64>,
    /// `WatchdogSec` the supervisor enforces.
    pub watchdog: Duration,
    /// `RestartSec`.
    pub restart_after: Duration,
    /// `share.incomplete_timeout_seconds` (a truncated file's wait before it is quarantined).
    pub incomplete_timeout_s: f64,
}

impl LocalOptions {
    pub fn new(crlm: PathBuf, broker_url: String) -> LocalOptions {
        LocalOptions {
            crlm,
            broker_url,
            collector_key: None,
            trusted_keys: Vec::new(),
            state_disk_mib: None,
            watchdog: Duration::from_secs(8),
            restart_after: Duration::from_millis(500),
            incomplete_timeout_s: 20.0,
        }
    }
}

/// What the supervisor thread and the harness share.
struct Sup {
    child: Option<Child>,
    /// Restart after a failure (off after a clean stop and during a power cut).
    enabled: bool,
    restart_at: Option<Instant>,
    ready: bool,
    last_ping: Instant,
    aborting_since: Option<Instant>,
    stats: Supervision,
    /// A start asked by the harness (not counted as a restart).
    start_asked: bool,
}

pub struct LocalDevice {
    dir: tempfile::TempDir,
    share: PathBuf,
    state: PathBuf,
    config: PathBuf,
    journal: PathBuf,
    opts: LocalOptions,
    sup: Arc<Mutex<Sup>>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    mounted: bool,
}

fn lock(sup: &Mutex<Sup>) -> MutexGuard<'_, Sup> {
    sup.lock().unwrap_or_else(|e| e.into_inner())
}

/// Send `sig` to `pid`.
fn send(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own
        // child's, which we have not reaped yet, so it cannot name another process.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn toml_str(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap_or_default()
}

impl LocalDevice {
    pub fn new(opts: LocalOptions) -> Result<LocalDevice, DeviceError> {
        let dir = tempfile::Builder::new()
            .prefix("crlm-hil-")
            .tempdir()
            .map_err(|e| DeviceError::io("a folder for the box", e))?;
        let share = dir.path().join("share");
        let state = dir.path().join("state");
        for d in [&share, &state, &dir.path().join("model-slot")] {
            std::fs::create_dir_all(d).map_err(|e| DeviceError::io(format!("creating {}", d.display()), e))?;
        }
        let mut mounted = false;
        if let Some(mib) = opts.state_disk_mib {
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "crlm-hil-state"])
                .arg(&state)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(DeviceError::NotOnThisTarget(
                    "cannot mount a small disk for the state here (mount -t tmpfs needs root)".into(),
                ));
            }
            mounted = true;
        }
        let keys: Vec<String> = opts.trusted_keys.iter().map(|k| toml_str(k)).collect();
        let collector = opts.collector_key.as_ref().map(|k| format!("collector_key = {}\n", toml_str(k)));
        let config = dir.path().join("crlm.toml");
        let text = format!(
            "# The hil harness's local box.\n\
             [share]\npath = {share}\nquiet_seconds = 1.0\npoll_seconds = 0.25\nincomplete_timeout_seconds = {inc}\n\
             [state]\npath = {state}\nmin_free_mb = 16\n\
             [model]\npath = \"\"\ntrusted_keys = [{keys}]\n\
             [display]\ndriver = \"png\"\n\
             [mqtt]\nurl = \"{url}\"\nsite = \"hil\"\ndevice = \"local\"\nheartbeat_seconds = 1.0\n\
             reconnect_max_seconds = 2.0\n{collector}\
             [log]\ntarget = \"stderr\"\n",
            share = toml_str(&share),
            state = toml_str(&state),
            inc = opts.incomplete_timeout_s,
            keys = keys.join(", "),
            url = opts.broker_url,
            collector = collector.unwrap_or_default(),
        );
        std::fs::write(&config, text).map_err(|e| DeviceError::io("writing crlm.toml", e))?;
        let journal = dir.path().join("journal.log");
        let sup = Arc::new(Mutex::new(Sup {
            child: None,
            enabled: false,
            restart_at: None,
            ready: false,
            last_ping: Instant::now(),
            aborting_since: None,
            stats: Supervision::default(),
            start_asked: false,
        }));
        let quit = Arc::new(AtomicBool::new(false));
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).map_err(|e| DeviceError::io("the notify socket", e))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| DeviceError::io("the notify socket", e))?;
        let mut dev = LocalDevice {
            dir,
            share,
            state,
            config,
            journal,
            opts,
            sup: sup.clone(),
            quit: quit.clone(),
            thread: None,
            mounted,
        };
        let spawner = dev.spawner(socket_path);
        dev.thread = Some(std::thread::spawn(move || supervise(socket, sup, quit, spawner)));
        Ok(dev)
    }

    /// A closure that starts one run of the service, as systemd's ExecStart does.
    fn spawner(&self, socket: PathBuf) -> Spawner {
        let journal = self.journal.clone();
        let mut base = self.command(&["run"]);
        base.env("NOTIFY_SOCKET", &socket).env("WATCHDOG_USEC", self.opts.watchdog.as_micros().to_string());
        let program = base.get_program().to_owned();
        let args: Vec<_> = base.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> = base.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
        let (watchdog, restart_after) = (self.opts.watchdog, self.opts.restart_after);
        Spawner {
            watchdog,
            restart_after,
            spawn: Box::new(move || {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(&journal)?;
                let mut c = Command::new(&program);
                c.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
                for (k, v) in &envs {
                    match v {
                        Some(v) => c.env(k, v),
                        None => c.env_remove(k),
                    };
                }
                c.spawn()
            }),
        }
    }

    /// `crlm ARGS` with the box's configuration and nothing of the harness's environment that
    /// crlm would read as configuration.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.opts.crlm);
        c.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CRLM_") || k == "NOTIFY_SOCKET" || k == "WATCHDOG_USEC" {
                c.env_remove(k);
            }
        }
        c.env("CRLM_CONFIG", &self.config).current_dir(self.dir.path());
        c
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), DeviceError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            {
                let s = lock(&self.sup);
                if s.ready && s.child.is_some() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(DeviceError::Failed(format!(
            "the service did not say READY=1 within {} s; its log ends: {}",
            timeout.as_secs(),
            tail(&self.journal().unwrap_or_default(), 1500)
        )))
    }

    /// Take the child out of supervision and end it with `sig`, waiting up to `grace`.
    fn end(&mut self, sig: libc::c_int, grace: Duration) -> Result<(), DeviceError> {
        let child = {
            let mut s = lock(&self.sup);
            s.enabled = false;
            s.restart_at = None;
            s.start_asked = false;
            s.ready = false;
            s.child.take()
        };
        let Some(mut child) = child else { return Ok(()) };
        send(child.id(), sig);
        send(child.id(), libc::SIGCONT);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if start.elapsed() < grace => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(());
                }
            }
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s.get(start..).unwrap_or_default().to_string()
}

struct Spawner {
    watchdog: Duration,
    restart_after: Duration,
    spawn: Box<dyn Fn() -> std::io::Result<Child> + Send>,
}

/// The supervisor: systemd's part for one `Type=notify` service with a watchdog.
fn supervise(socket: UnixDatagram, sup: Arc<Mutex<Sup>>, quit: Arc<AtomicBool>, spawner: Spawner) {
    let mut buf = [0u8; 4096];
    while !quit.load(Ordering::Relaxed) {
        // Notifications (the read timeout paces this loop).
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).to_string();
                let mut s = lock(&sup);
                for line in text.lines() {
                    if line == "READY=1" {
                        s.ready = true;
                        s.last_ping = Instant::now();
                    } else if line == "WATCHDOG=1" {
                        s.last_ping = Instant::now();
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
        let mut s = lock(&sup);
        let exited = match s.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        };
        if let Some(status) = exited {
            s.child = None;
            s.ready = false;
            s.aborting_since = None;
            // Restart=on-failure, RestartPreventExitStatus=78.
            let clean = matches!(status.code(), Some(0) | Some(78));
            if s.enabled && !clean {
                s.restart_at = Some(Instant::now() + spawner.restart_after);
            }
        } else if let Some(pid) = s.child.as_ref().map(|c| c.id()) {
            match s.aborting_since {
                None if s.ready && s.last_ping.elapsed() > spawner.watchdog => {
                    // WatchdogSignal=SIGABRT, then SIGCONT as systemd sends with it.
                    send(pid, libc::SIGABRT);
                    send(pid, libc::SIGCONT);
                    s.aborting_since = Some(Instant::now());
                    s.stats.watchdog_timeouts += 1;
                }
                Some(t) if t.elapsed() > Duration::from_secs(5) => send(pid, libc::SIGKILL),
                _ => {}
            }
        }
        let due = s.start_asked || s.restart_at.is_some_and(|t| Instant::now() >= t);
        if s.child.is_none() && s.enabled && due {
            s.restart_at = None;
            match (spawner.spawn)() {
                Ok(child) => {
                    s.child = Some(child);
                    if !s.start_asked {
                        s.stats.restarts += 1;
                    }
                    s.start_asked = false;
                    s.last_ping = Instant::now();
                }
                Err(_) => s.restart_at = Some(Instant::now() + spawner.restart_after),
            }
        }
    }
}

impl Drop for LocalDevice {
    fn drop(&mut self) {
        let _ = self.end(libc::SIGTERM, Duration::from_secs(10));
        self.quit.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.state).status();
        }
    }
}

impl Device for LocalDevice {
    fn describe(&self) -> String {
        format!("local: {} as a process on this machine", self.opts.crlm.display())
    }

    fn ids(&self) -> (String, String) {
        ("hil".into(), "local".into())
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            power_cut_loses_cache: false,
            small_state_disk: self.mounted,
            clock_step: false,
            real_systemd: false,
            share_outage: "the share's folder moved away and back (an unmounted share leaves no path behind)",
            required_provider: None,
        }
    }

    fn share(&self) -> &Path {
        &self.share
    }

    fn share_available(&mut self, available: bool) -> Result<(), DeviceError> {
        // A share gone is a path that no longer answers: the folder moves away, as an unmounted
        // NFS or SMB mount point leaves nothing behind it.
        let away = self.dir.path().join("share-unavailable");
        let (from, to) = if available { (&away, &self.share) } else { (&self.share, &away) };
        std::fs::rename(from, to).map_err(|e| DeviceError::io("moving the share", e))
    }

    fn start(&mut self) -> Result<(), DeviceError> {
        {
            let mut s = lock(&self.sup);
            if s.child.is_none() {
                s.enabled = true;
                s.ready = false;
                s.start_asked = true;
            }
        }
        self.wait_ready(Duration::from_secs(120))
    }

    fn stop(&mut self) -> Result<(), DeviceError> {
        self.end(libc::SIGTERM, Duration::from_secs(60))
    }

    fn kill(&mut self) -> Result<(), DeviceError> {
        if let Some(pid) = lock(&self.sup).child.as_ref().map(|c| c.id()) {
            send(pid, libc::SIGKILL);
        }
        Ok(())
    }

    fn freeze(&mut self) -> Result<(), DeviceError> {
        if let Some(pid) = lock(&self.sup).child.as_ref().map(|c| c.id()) {
            send(pid, libc::SIGSTOP);
        }
        Ok(())
    }

    fn power_cut(&mut self) -> Result<(), DeviceError> {
        self.end(libc::SIGKILL, Duration::from_secs(10))
    }

    fn service_pid(&mut self) -> Result<Option<u32>, DeviceError> {
        Ok(lock(&self.sup).child.as_ref().map(|c| c.id()))
    }

    fn supervision(&mut self) -> Result<Supervision, DeviceError> {
        Ok(lock(&self.sup).stats)
    }

    fn crlm(&self, args: &[&str]) -> Result<Output, DeviceError> {
        self.command(args).output().map_err(|e| DeviceError::io(format!("running crlm {}", args.join(" ")), e))
    }

    fn read_state(&self, rel: &str) -> Result<Vec<u8>, DeviceError> {
        std::fs::read(self.state.join(rel)).map_err(|e| DeviceError::io(format!("reading state/{rel}"), e))
    }

    fn state_files(&self, rel: &str) -> Result<Vec<(String, Vec<u8>)>, DeviceError> {
        let dir = self.state.join(rel);
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(DeviceError::io(format!("listing state/{rel}"), e)),
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let bytes = std::fs::read(e.path()).map_err(|err| DeviceError::io("reading a state file", err))?;
                out.push((e.file_name().to_string_lossy().to_string(), bytes));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn panel_text(&self) -> Result<String, DeviceError> {
        match std::fs::read_to_string(self.state.join("display.txt")) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(DeviceError::io("reading the panel's words", e)),
        }
    }

    fn save_panel(&self, dir: &Path) -> Result<Option<PathBuf>, DeviceError> {
        let png = self.state.join("display.png");
        if !png.exists() {
            return Ok(None);
        }
        std::fs::create_dir_all(dir).map_err(|e| DeviceError::io("the report folder", e))?;
        let to = dir.join("panel.png");
        std::fs::copy(&png, &to).map_err(|e| DeviceError::io("copying the panel frame", e))?;
        Ok(Some(to))
    }

    fn journal(&self) -> Result<String, DeviceError> {
        match std::fs::read(&self.journal) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(DeviceError::io("reading the service's log", e)),
        }
    }

    fn state_free_bytes(&self) -> Result<u64, DeviceError> {
        free_bytes(&self.state)
    }

    fn fill_state_disk(&mut self, leave: Option<u64>) -> Result<(), DeviceError> {
        let filler = self.state.join("hil-filler");
        let _ = std::fs::remove_file(&filler);
        let Some(leave) = leave else { return Ok(()) };
        let free = free_bytes(&self.state)?;
        let len = free.saturating_sub(leave);
        let file = std::fs::File::create(&filler).map_err(|e| DeviceError::io("creating the filler", e))?;
        let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fallocate on a file descriptor we own and keep open for the call; no
        // memory is passed.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        if rc != 0 {
            return Err(DeviceError::io("filling the state disk", std::io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    fn step_clock(&mut self, _seconds: i64) -> Result<(), DeviceError> {
        Err(DeviceError::NotOnThisTarget(
            "stepping this machine's clock would step every process on it; the qemu and ssh targets step the box's own"
                .into(),
        ))
    }

    fn install_model(&mut self, tar: &Path) -> Result<Result<(), String>, DeviceError> {
        // RAUC's install-check with the image's own hook and this box's configuration.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let hook = root.join("yocto/meta-crlm/recipes-crlm/bundles/files/crlm-model-hook");
        let bundle = self.dir.path().join("bundle");
        let bin = self.dir.path().join("bin");
        let _ = std::fs::remove_dir_all(&bundle);
        for d in [&bundle, &bin] {
            std::fs::create_dir_all(d).map_err(|e| DeviceError::io("the bundle folder", e))?;
        }
        std::fs::copy(tar, bundle.join("crlm-model.tar")).map_err(|e| DeviceError::io("the bundle's package", e))?;
        let link = bin.join("crlm");
        if !link.exists() {
            std::os::unix::fs::symlink(&self.opts.crlm, &link).map_err(|e| DeviceError::io("linking crlm", e))?;
        }
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("sh")
            .arg(&hook)
            .arg("install-check")
            .env("PATH", path)
            .env("CRLM_CONFIG", &self.config)
            .env("RAUC_SYSTEM_COMPATIBLE", "crlm-edge-orin")
            .env("RAUC_MF_COMPATIBLE", "crlm-edge-orin")
            .env("RAUC_BUNDLE_MOUNT_POINT", &bundle)
            .output()
            .map_err(|e| DeviceError::io("running the RAUC hook", e))?;
        if !out.status.success() {
            return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        // slot-pre-install, the slot written, slot-post-install.
        self.stop()?;
        let slot = self.dir.path().join("model-slot");
        std::fs::remove_dir_all(&slot).map_err(|e| DeviceError::io("clearing the model slot", e))?;
        std::fs::create_dir_all(&slot).map_err(|e| DeviceError::io("the model slot", e))?;
        let untar = Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(&slot)
            .status()
            .map_err(|e| DeviceError::io("writing the model slot", e))?;
        if !untar.success() {
            return Err(DeviceError::Failed("tar could not write the model slot".into()));
        }
        // The box runs the built-in demo package until a package is installed in its slot.
        let text = std::fs::read_to_string(&self.config).map_err(|e| DeviceError::io("reading crlm.toml", e))?;
        let text = text.replacen("[model]\npath = \"\"\n", &format!("[model]\npath = {}\n", toml_str(&slot)), 1);
        std::fs::write(&self.config, text).map_err(|e| DeviceError::io("writing crlm.toml", e))?;
        self.start()?;
        Ok(Ok(()))
    }
}

/// Bytes available to unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, DeviceError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| DeviceError::Failed(format!("{} has a NUL byte", path.display())))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st` is a valid, writable
    // statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(DeviceError::io("statvfs of the state", std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

//! Helpers for end-to-end tests: the real `crlm` binary, run as a process against a real share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `crlm` binary of this build. Cargo builds it for `cargo test --workspace`, but not for
/// `cargo test -p crlm-e2e`, so it is brought up to date once per test process (a no-op when fresh).
pub fn crlm_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let target = exe.parent().and_then(Path::parent).expect("target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "crlm-appliance", "--bin", "crlm"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building crlm failed");
        target.join("crlm")
    })
    .clone()
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

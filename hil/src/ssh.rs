//! The `ssh` target: a real box (a Jetson flashed with the project's image) reached over SSH.
//! The service runs under the image's systemd unit; the harness drives it with `systemctl`,
//! reads the journal with `journalctl`, the panel from `/dev/fb0`, the state under
//! `/var/lib/crlm`, and writes exports into the box's share through the lab side's mount of it.
//!
//! Configured from the environment (docs/HIL.md): `HIL_SSH_HOST` (`user@host`, a user who may
//! `sudo` without a password), `HIL_SSH_SHARE` (this machine's mount of the box's share) and
//! optionally `HIL_SSH_OPTIONS` (extra ssh options, e.g. `-i key`). Scenarios wipe the box's state:
//! use a box set aside for testing, never one in the study.

use crate::device::{Abilities, Device, DeviceError, Supervision};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const STATE: &str = "/var/lib/crlm";

pub struct SshConfig {
    pub host: String,
    pub share: PathBuf,
    pub options: Vec<String>,
}

impl SshConfig {
    /// The target from the environment, or why it is not configured.
    pub fn from_env() -> Result<SshConfig, String> {
        let host = std::env::var("HIL_SSH_HOST").map_err(|_| {
            "no real box configured: set HIL_SSH_HOST (user@host) and HIL_SSH_SHARE (docs/HIL.md)".to_string()
        })?;
        let share = std::env::var("HIL_SSH_SHARE").map_err(|_| {
            "HIL_SSH_SHARE (this machine's mount of the box's share) is not set (docs/HIL.md)".to_string()
        })?;
        let options =
            std::env::var("HIL_SSH_OPTIONS").unwrap_or_default().split_whitespace().map(String::from).collect();
        Ok(SshConfig { host, share: PathBuf::from(share), options })
    }
}

pub struct SshDevice {
    cfg: SshConfig,
    since: String,
    cut: bool,
}

/// One word for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl SshDevice {
    /// The box, its service stopped and its state wiped, ready for a scenario.
    pub fn new(cfg: SshConfig) -> Result<SshDevice, DeviceError> {
        let dev = SshDevice { cfg, since: String::new(), cut: false };
        dev.sh(&format!("systemctl stop crlm.service && rm -rf {STATE}/*"))?;
        let since = String::from_utf8_lossy(&dev.sh("date +@%s")?.stdout).trim().to_string();
        Ok(SshDevice { since, ..dev })
    }

    /// The box as it is (after a power cut: its state is the evidence).
    pub fn attach(cfg: SshConfig) -> Result<SshDevice, DeviceError> {
        let dev = SshDevice { cfg, since: String::new(), cut: false };
        let since = dev.text("date +@%s")?;
        Ok(SshDevice { since, ..dev })
    }

    /// Run a shell command on the box as root.
    pub(crate) fn sh(&self, script: &str) -> Result<Output, DeviceError> {
        let out = Command::new("ssh")
            .args(&self.cfg.options)
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", &self.cfg.host])
            .arg(format!("sudo sh -c {}", quote(script)))
            .output()
            .map_err(|e| DeviceError::io("running ssh", e))?;
        if !out.status.success() {
            return Err(DeviceError::Command {
                command: format!("ssh {} {script}", self.cfg.host),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Copy a local file onto the box.
    pub(crate) fn put(&self, local: &Path, remote: &str) -> Result<(), DeviceError> {
        let bytes = std::fs::read(local).map_err(|e| DeviceError::io(format!("reading {}", local.display()), e))?;
        let mut child = Command::new("ssh")
            .args(&self.cfg.options)
            .args(["-o", "BatchMode=yes", &self.cfg.host])
            .arg(format!("sudo sh -c {}", quote(&format!("cat > {}", quote(remote)))))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| DeviceError::io("running ssh", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(&bytes).map_err(|e| DeviceError::io("copying over ssh", e))?;
        }
        let out = child.wait_with_output().map_err(|e| DeviceError::io("copying over ssh", e))?;
        if !out.status.success() {
            return Err(DeviceError::Command {
                command: format!("copy to {remote}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    pub(crate) fn text(&self, script: &str) -> Result<String, DeviceError> {
        Ok(String::from_utf8_lossy(&self.sh(script)?.stdout).trim().to_string())
    }
}

impl Device for SshDevice {
    fn describe(&self) -> String {
        format!("ssh: {} under systemd", self.cfg.host)
    }

    fn ids(&self) -> (String, String) {
        // mqtt.site and mqtt.device of /etc/crlm/crlm.toml, or crlm's defaults.
        let get = |k: &str, default: &str| {
            let v = self
                .text(&format!("sed -n 's/^{k} *= *\"\\(.*\\)\"$/\\1/p' /etc/crlm/crlm.toml | head -1"))
                .unwrap_or_default();
            if v.is_empty() { default.to_string() } else { v }
        };
        (get("site", "site01"), get("device", "box01"))
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            power_cut_loses_cache: true,
            small_state_disk: false,
            clock_step: true,
            real_systemd: true,
            share_outage: "not done on a real box",
            // A Jetson runs the study's model through ONNX Runtime's TensorRT provider.
            required_provider: Some("tensorrt"),
        }
    }

    fn share(&self) -> &Path {
        &self.cfg.share
    }

    fn share_available(&mut self, _: bool) -> Result<(), DeviceError> {
        Err(DeviceError::NotOnThisTarget(
            "the real box's share server is not the harness's to stop; the qemu target stops its NFS/SMB server".into(),
        ))
    }

    fn start(&mut self) -> Result<(), DeviceError> {
        let start = Instant::now();
        // After a power cut the box boots first.
        while self.cut && self.sh("true").is_err() {
            if start.elapsed() > Duration::from_secs(600) {
                return Err(DeviceError::Failed("the box did not come back within 10 minutes".into()));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
        self.cut = false;
        self.sh("systemctl start crlm.service")?;
        // Type=notify: `start` returns once it is ready (or failed).
        match self.text("systemctl is-active crlm.service")?.as_str() {
            "active" => Ok(()),
            other => Err(DeviceError::Failed(format!("crlm.service is {other}"))),
        }
    }

    fn stop(&mut self) -> Result<(), DeviceError> {
        self.sh("systemctl stop crlm.service").map(|_| ())
    }

    fn kill(&mut self) -> Result<(), DeviceError> {
        self.sh("systemctl kill --signal=KILL crlm.service").map(|_| ())
    }

    fn freeze(&mut self) -> Result<(), DeviceError> {
        self.sh("systemctl kill --signal=STOP crlm.service").map(|_| ())
    }

    fn power_cut(&mut self) -> Result<(), DeviceError> {
        // sysrq 'b': reboot at once, without syncing or unmounting (what the disk loses is lost).
        self.cut = true;
        let _ = self.sh("echo 1 > /proc/sys/kernel/sysrq; echo b > /proc/sysrq-trigger");
        std::thread::sleep(Duration::from_secs(5));
        Ok(())
    }

    fn service_pid(&mut self) -> Result<Option<u32>, DeviceError> {
        let pid: u32 = self.text("systemctl show --property=MainPID --value crlm.service")?.parse().unwrap_or(0);
        Ok((pid != 0).then_some(pid))
    }

    fn supervision(&mut self) -> Result<Supervision, DeviceError> {
        let restarts = self.text("systemctl show --property=NRestarts --value crlm.service")?.parse().unwrap_or(0);
        let watchdog_timeouts = self
            .text(&format!(
                "journalctl -u crlm.service --since {} --no-pager | grep -c 'Watchdog timeout' || true",
                self.since
            ))?
            .parse()
            .unwrap_or(0);
        Ok(Supervision { restarts, watchdog_timeouts })
    }

    fn crlm(&self, args: &[&str]) -> Result<Output, DeviceError> {
        let words: Vec<String> = args.iter().map(|a| quote(a)).collect();
        Command::new("ssh")
            .args(&self.cfg.options)
            .args(["-o", "BatchMode=yes", &self.cfg.host])
            .arg(format!("sudo -u crlm env CRLM_CONFIG=/etc/crlm/crlm.toml crlm {}", words.join(" ")))
            .output()
            .map_err(|e| DeviceError::io("running crlm over ssh", e))
    }

    fn read_state(&self, rel: &str) -> Result<Vec<u8>, DeviceError> {
        Ok(self.sh(&format!("cat {}", quote(&format!("{STATE}/{rel}"))))?.stdout)
    }

    fn state_files(&self, rel: &str) -> Result<Vec<(String, Vec<u8>)>, DeviceError> {
        let dir = format!("{STATE}/{rel}");
        let names =
            self.text(&format!("[ -d {d} ] && find {d} -maxdepth 1 -type f -printf '%f\\n' || true", d = quote(&dir)))?;
        let mut out = Vec::new();
        for n in names.lines().filter(|n| !n.is_empty()) {
            out.push((n.to_string(), self.read_state(&format!("{rel}/{n}"))?));
        }
        Ok(out)
    }

    fn panel_text(&self) -> Result<String, DeviceError> {
        // The words beside the frame are written with the PNG display only (the virtual box); a
        // hardware panel's frame is saved (save_panel) for a person to read.
        let words = self.text(&format!("cat {STATE}/display.txt 2>/dev/null || echo '<no display.txt>'"))?;
        if words == "<no display.txt>" {
            return Err(DeviceError::NotOnThisTarget(
                "a hardware panel's words are not read back; its frame is saved from /dev/fb0".into(),
            ));
        }
        Ok(words)
    }

    fn save_panel(&self, dir: &Path) -> Result<Option<PathBuf>, DeviceError> {
        let png = self.sh(&format!("cat {STATE}/display.png 2>/dev/null || true"))?.stdout;
        if !png.is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| DeviceError::io("the report folder", e))?;
            let to = dir.join("panel.png");
            std::fs::write(&to, png).map_err(|e| DeviceError::io("saving the frame", e))?;
            return Ok(Some(to));
        }
        let raw = self.sh("cat /dev/fb0")?.stdout;
        std::fs::create_dir_all(dir).map_err(|e| DeviceError::io("the report folder", e))?;
        let to = dir.join("panel.fb0.raw");
        std::fs::write(&to, raw).map_err(|e| DeviceError::io("saving the frame", e))?;
        Ok(Some(to))
    }

    fn journal(&self) -> Result<String, DeviceError> {
        self.text(&format!("journalctl -u crlm.service --since {} --no-pager -o cat", self.since))
    }

    fn state_free_bytes(&self) -> Result<u64, DeviceError> {
        let t = self.text(&format!("df --output=avail -B1 {STATE} | tail -1"))?;
        t.trim().parse().map_err(|_| DeviceError::Failed(format!("df printed {t:?}")))
    }

    fn fill_state_disk(&mut self, _: Option<u64>) -> Result<(), DeviceError> {
        Err(DeviceError::NotOnThisTarget("filling a real box's data partition is not done over SSH".into()))
    }

    fn step_clock(&mut self, seconds: i64) -> Result<(), DeviceError> {
        self.sh(&format!("date -s @$(( $(date +%s) + ({seconds}) ))")).map(|_| ())
    }

    fn install_model(&mut self, _: &Path) -> Result<Result<(), String>, DeviceError> {
        Err(DeviceError::NotOnThisTarget(
            "a real box installs model packages as RAUC bundles (bitbake crlm-model-bundle, then rauc install); the harness does not make bundles yet".into(),
        ))
    }
}

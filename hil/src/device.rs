//! The box as the scenarios see it, whatever runs it: a process here, a virtual aarch64 box or a
//! Jetson over SSH.

use crate::wire::{Case, Export, LedgerRecord, Quarantined};
use std::path::{Path, PathBuf};
use std::process::Output;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("`{command}` printed what the harness cannot read: {source}")]
    Parse {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    /// Something this target cannot do (the scenario skips, saying why).
    #[error("{0}")]
    NotOnThisTarget(String),
    #[error("{0}")]
    Failed(String),
}

impl DeviceError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> DeviceError {
        DeviceError::Io { what: what.into(), source }
    }
}

/// How the box's service is kept running, as the report says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Supervision {
    /// Restarts after a crash or a kill (systemd's `Restart=on-failure`).
    pub restarts: u32,
    /// Restarts because the watchdog pings stopped (`WatchdogSec`).
    pub watchdog_timeouts: u32,
}

/// What a target can do; a scenario that needs more skips with the reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct Abilities {
    /// A power cut loses what the box had not flushed to its disk (a VM killed with its disk's
    /// cache in writeback mode, a relay on a real box). A process kill keeps the page cache.
    pub power_cut_loses_cache: bool,
    /// The state can be put on a small disk of its own to fill.
    pub small_state_disk: bool,
    /// The box's clock can be stepped.
    pub clock_step: bool,
    /// systemd itself supervises the service (not the harness playing its part).
    pub real_systemd: bool,
    /// How this target takes the share away (for the report).
    pub share_outage: &'static str,
    /// The execution provider every prediction must have run on (a real box: TensorRT); the
    /// golden case fails otherwise. `None`: whatever the box's configuration chose.
    pub required_provider: Option<&'static str>,
}

/// One box. Share paths are as the lab's machine sees the share (the harness writes there as a
/// scanner export does); everything else goes through the box.
pub trait Device {
    /// The target and machine, for the report.
    fn describe(&self) -> String;
    /// The box's (site, device) names, as its messages carry them and the collector enrols it.
    fn ids(&self) -> (String, String);
    fn abilities(&self) -> Abilities;
    /// The share, as lab staff's machines write to it.
    fn share(&self) -> &Path;
    /// The share disappears (an NFS server gone, an SMB mount lost) or comes back.
    fn share_available(&mut self, available: bool) -> Result<(), DeviceError>;
    /// Start the service (or power the box on) and wait until it says it is ready.
    fn start(&mut self) -> Result<(), DeviceError>;
    /// Stop the service cleanly (SIGTERM; `systemctl stop`) and wait for it to exit.
    fn stop(&mut self) -> Result<(), DeviceError>;
    /// SIGKILL the service; the supervisor restarts it.
    fn kill(&mut self) -> Result<(), DeviceError>;
    /// Hang the service (SIGSTOP): it stays alive but does nothing, so its watchdog pings stop.
    fn freeze(&mut self) -> Result<(), DeviceError>;
    /// Cut the power: the service and everything the box had not written to disk are gone until
    /// [`Device::start`].
    fn power_cut(&mut self) -> Result<(), DeviceError>;
    /// The service's process id now (changes when it is restarted), or None while it is down.
    fn service_pid(&mut self) -> Result<Option<u32>, DeviceError>;
    fn supervision(&mut self) -> Result<Supervision, DeviceError>;
    /// Run `crlm ARGS` on the box with the service's configuration.
    fn crlm(&self, args: &[&str]) -> Result<Output, DeviceError>;
    /// A file of the box's state folder (`keys/device.pub`, ...).
    fn read_state(&self, rel: &str) -> Result<Vec<u8>, DeviceError>;
    /// The files of a folder of the box's state, with their contents.
    fn state_files(&self, rel: &str) -> Result<Vec<(String, Vec<u8>)>, DeviceError>;
    /// The words on the panel now (the service's `display.txt` beside its frame).
    fn panel_text(&self) -> Result<String, DeviceError>;
    /// Save the panel's frame as it is now into `dir` (PNG or raw framebuffer); its path.
    fn save_panel(&self, dir: &Path) -> Result<Option<PathBuf>, DeviceError>;
    /// The service's log since this box was made.
    fn journal(&self) -> Result<String, DeviceError>;
    /// Bytes free on the state's disk.
    fn state_free_bytes(&self) -> Result<u64, DeviceError>;
    /// Fill the state's disk until `leave` bytes are free (None: remove the filler).
    fn fill_state_disk(&mut self, leave: Option<u64>) -> Result<(), DeviceError>;
    /// Step the box's clock by `seconds` (negative: backwards).
    fn step_clock(&mut self, seconds: i64) -> Result<(), DeviceError>;
    /// Install a model package (a `.tar` of `crlm model pack`) as the box's update path does
    /// (the RAUC hook's install-check, then the slot written and the service restarted);
    /// Ok(false) with the hook's reason in the journal when it is refused.
    fn install_model(&mut self, tar: &Path) -> Result<Result<(), String>, DeviceError>;

    // Typed reads built on the above.

    fn cases(&self) -> Result<Vec<Case>, DeviceError> {
        parsed(self.crlm(&["cases", "--json"])?, "crlm cases --json")
    }

    fn ledger(&self) -> Result<Export, DeviceError> {
        parsed(self.crlm(&["ledger", "export", "--format", "json"])?, "crlm ledger export")
    }

    /// `crlm ledger show SEQ`: the record, or `None` past the end of the ledger.
    fn ledger_record(&self, seq: u64) -> Result<Option<LedgerRecord>, DeviceError> {
        let out = self.crlm(&["ledger", "show", &seq.to_string()])?;
        if !out.status.success() {
            return Ok(None);
        }
        parsed(out, "crlm ledger show").map(Some)
    }

    /// `crlm ledger verify`: Ok(report) when the chain and signatures verify.
    fn ledger_verify(&self) -> Result<Result<String, String>, DeviceError> {
        let out = self.crlm(&["ledger", "verify"])?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok(if out.status.success() { Ok(text) } else { Err(text) })
    }

    fn quarantine(&self) -> Result<Vec<Quarantined>, DeviceError> {
        let mut out = Vec::new();
        for (name, bytes) in self.state_files("quarantine")? {
            if !name.ends_with(".json") {
                continue;
            }
            out.push(
                serde_json::from_slice(&bytes)
                    .map_err(|source| DeviceError::Parse { command: format!("quarantine/{name}"), source })?,
            );
        }
        Ok(out)
    }
}

/// A command's JSON output, or why not.
pub fn parsed<T: serde::de::DeserializeOwned>(out: Output, command: &str) -> Result<T, DeviceError> {
    if !out.status.success() {
        return Err(DeviceError::Command {
            command: command.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|source| DeviceError::Parse { command: command.into(), source })
}

//! The `qemu` target: a virtual aarch64 box under `qemu-system-aarch64` (software emulation),
//! booted from the image `hil/qemu/build-image` makes: Debian 12 arm64 with systemd as init, the
//! project's unit and the aarch64 `crlm`. Each box gets a copy-on-write overlay of that image and
//! a state disk of its own (`/var/lib/crlm`, `/dev/vdb`), so a power cut (the VM killed) loses
//! exactly what the guest had not written to its disks. The share is served by a process of the
//! harness's on this machine: NFSv4.1 from nfs-ganesha (`ganesha.nfsd`, userspace, so no kernel
//! NFS server is needed here), mounted by the guest's kernel NFS client, or SMB from Samba
//! (`smbd`), mounted with CIFS ([`ShareProtocol`]). Both mounts are `soft`, as a lab's share is
//! mounted on the box; the share disappearing is that server killed. The broker and the
//! collector run on this machine; the guest reaches them at 10.0.2.2 (qemu's user network).
//! Everything else goes over SSH as for a real box ([`crate::ssh`]).

use crate::device::{Abilities, Device, DeviceError, Supervision};
use crate::host::free_port;
use crate::ssh::{SshConfig, SshDevice};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How the virtual box mounts the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareProtocol {
    /// NFSv4.1 from nfs-ganesha, mounted by the guest's kernel client.
    Nfs,
    /// SMB from Samba's smbd (the dialect the guest's kernel negotiates), mounted with CIFS.
    Smb,
}

impl ShareProtocol {
    fn server(self) -> &'static str {
        match self {
            ShareProtocol::Nfs => "ganesha.nfsd",
            ShareProtocol::Smb => "smbd",
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// target/hil-qemu: root.img, vmlinuz, initrd.img, id_ed25519.
    pub image: PathBuf,
    /// The host's broker port (the guest reaches it at 10.0.2.2).
    pub broker_port: u16,
    pub collector_key: Option<PathBuf>,
    pub trusted_keys: Vec<PathBuf>,
    pub state_disk_mib: Option<u64>,
    pub share_protocol: ShareProtocol,
}

pub struct QemuDevice {
    dir: tempfile::TempDir,
    opts: QemuOptions,
    ssh_port: u16,
    /// The share server's port on this machine (the guest reaches it at 10.0.2.2).
    share_port: u16,
    share: PathBuf,
    vm: Option<Child>,
    /// The share's server (smbd or ganesha.nfsd) while the share is up.
    server: Option<Child>,
    ssh: Option<SshDevice>,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), DeviceError> {
    let out = cmd.output().map_err(|e| DeviceError::io(what, e))?;
    if !out.status.success() {
        return Err(DeviceError::Failed(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

impl QemuDevice {
    pub fn new(opts: QemuOptions) -> Result<QemuDevice, DeviceError> {
        for f in ["root.img", "vmlinuz", "initrd.img", "id_ed25519"] {
            if !opts.image.join(f).exists() {
                return Err(DeviceError::NotOnThisTarget(format!(
                    "no virtual box image ({} is missing): run hil/qemu/build-image (docs/HIL.md)",
                    opts.image.join(f).display()
                )));
            }
        }
        for tool in ["qemu-system-aarch64", "qemu-img", opts.share_protocol.server(), "mkfs.ext4"] {
            if !crate::host::have(tool) {
                return Err(DeviceError::NotOnThisTarget(format!("{tool} is not installed (docs/HIL.md)")));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("crlm-hil-qemu-")
            .tempdir()
            .map_err(|e| DeviceError::io("a box folder", e))?;
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).map_err(|e| DeviceError::io("the share", e))?;
        let root = opts.image.join("root.img");
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&root)
                .arg(dir.path().join("box.qcow2")),
            "the box's overlay",
        )?;
        let state = dir.path().join("state.img");
        let mib = opts.state_disk_mib.unwrap_or(1024);
        run(
            Command::new("mkfs.ext4").args(["-q", "-F", "-L", "crlm-state"]).arg(&state).arg(format!("{mib}M")),
            "the state disk",
        )?;
        let dev = QemuDevice {
            dir,
            opts,
            ssh_port: free_port()?,
            share_port: free_port()?,
            share,
            vm: None,
            server: None,
            ssh: None,
        };
        Ok(dev)
    }

    fn ssh(&self) -> Result<&SshDevice, DeviceError> {
        self.ssh.as_ref().ok_or_else(|| DeviceError::Failed("the virtual box is not running".into()))
    }

    fn ssh_mut(&mut self) -> Result<&mut SshDevice, DeviceError> {
        self.ssh.as_mut().ok_or_else(|| DeviceError::Failed("the virtual box is not running".into()))
    }

    /// Start the share's server (smbd or ganesha.nfsd) unless it is running.
    fn share_up(&mut self) -> Result<(), DeviceError> {
        if self.server.is_some() {
            return Ok(());
        }
        let d = self.dir.path();
        let (mut cmd, log) = match self.opts.share_protocol {
            ShareProtocol::Smb => (self.smbd_command()?, d.join("smbd.log")),
            ShareProtocol::Nfs => (self.ganesha_command()?, d.join("ganesha.log")),
        };
        let server = self.opts.share_protocol.server();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| DeviceError::io(format!("starting {server}"), e))?;
        self.server = Some(child);
        if !crate::host::listening(self.share_port, Duration::from_secs(20)) {
            return Err(DeviceError::Failed(format!("{server} did not listen; see {}", log.display())));
        }
        Ok(())
    }

    /// Samba for this box alone: its own port, folders and log, the share open to guests.
    fn smbd_command(&self) -> Result<Command, DeviceError> {
        let d = self.dir.path();
        let conf = d.join("smb.conf");
        let text = format!(
            "[global]\n  smb ports = {port}\n  bind interfaces only = yes\n  interfaces = lo\n  pid directory = {d}\n  \
             lock directory = {d}/smb-lock\n  state directory = {d}/smb-state\n  cache directory = {d}/smb-cache\n  \
             private dir = {d}/smb-private\n  ncalrpc dir = {d}/smb-ncalrpc\n  log file = {d}/smbd.log\n  \
             map to guest = Bad User\n  disable spoolss = yes\n  load printers = no\n\
             [share]\n  path = {share}\n  guest ok = yes\n  read only = no\n  force user = root\n",
            port = self.share_port,
            d = d.display(),
            share = self.share.display()
        );
        for sub in ["smb-lock", "smb-state", "smb-cache", "smb-private", "smb-ncalrpc"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| DeviceError::io("samba's folders", e))?;
        }
        std::fs::write(&conf, text).map_err(|e| DeviceError::io("smb.conf", e))?;
        let mut cmd = Command::new("smbd");
        cmd.args(["--foreground", "--no-process-group", "--debug-stdout", "-s"]).arg(&conf);
        Ok(cmd)
    }

    /// nfs-ganesha for this box alone: NFSv4 only (no rpcbind, no lock manager), on its own port,
    /// owners as numbers (no idmapd on either side), no grace period after a restart (the box
    /// only reads), and no attribute or directory caching in the server, because the harness
    /// writes the exports into the folder underneath it, as a lab's other clients would.
    fn ganesha_command(&self) -> Result<Command, DeviceError> {
        let d = self.dir.path();
        let conf = d.join("ganesha.conf");
        let text = format!(
            "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; Enable_RQUOTA = false; \
             Enable_NLM = false; }}\n\
             NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = \"{d}/ganesha-recovery\"; \
             Allow_Numeric_Owners = true; Only_Numeric_Owners = true; }}\n\
             NFS_KRB5 {{ Active_krb5 = false; }}\n\
             MDCACHE {{ Dir_Chunk = 0; }}\n\
             EXPORT {{ Export_Id = 1; Path = \"{share}\"; Pseudo = /share; Access_Type = RW; Squash = No_Root_Squash; \
             SecType = sys; Protocols = 4; Transports = TCP; Attr_Expiration_Time = 0; FSAL {{ Name = VFS; }} }}\n",
            port = self.share_port,
            d = d.display(),
            share = self.share.display()
        );
        std::fs::create_dir_all(d.join("ganesha-recovery")).map_err(|e| DeviceError::io("ganesha's folders", e))?;
        std::fs::write(&conf, text).map_err(|e| DeviceError::io("ganesha.conf", e))?;
        let mut cmd = Command::new("ganesha.nfsd");
        cmd.arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(d.join("ganesha.log"))
            .arg("-p")
            .arg(d.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"]);
        Ok(cmd)
    }

    /// The share's server killed: the share is gone under the guest's mount.
    fn share_down(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Boot the VM and wait for its SSH.
    fn boot(&mut self) -> Result<(), DeviceError> {
        let d = self.dir.path();
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("console.log"))
            .map_err(|e| DeviceError::io("the console log", e))?;
        let img = &self.opts.image;
        let vm = Command::new("qemu-system-aarch64")
            .args(["-M", "virt", "-cpu", "max", "-smp", "2", "-m", "2048", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(img.join("vmlinuz"))
            .arg("-initrd")
            .arg(img.join("initrd.img"))
            .args(["-append", "root=LABEL=crlm-root rw console=ttyAMA0 systemd.show_status=0 net.ifnames=0"])
            .arg("-drive")
            .arg(format!("if=none,id=root,format=qcow2,file={}", d.join("box.qcow2").display()))
            .args(["-device", "virtio-blk-pci,drive=root"])
            .arg("-drive")
            .arg(format!("if=none,id=state,format=raw,cache=writeback,file={}", d.join("state.img").display()))
            .args(["-device", "virtio-blk-pci,drive=state"])
            .args(["-netdev", &format!("user,id=net,hostfwd=tcp:127.0.0.1:{}-:22", self.ssh_port)])
            .args(["-device", "virtio-net-pci,netdev=net"])
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| DeviceError::io("the console log", e))?)
            .stderr(console)
            .spawn()
            .map_err(|e| DeviceError::io("starting qemu-system-aarch64", e))?;
        self.vm = Some(vm);
        let key = img.join("id_ed25519");
        let cfg = SshConfig {
            host: "root@127.0.0.1".into(),
            share: self.share.clone(),
            options: vec![
                "-p".into(),
                self.ssh_port.to_string(),
                "-i".into(),
                key.display().to_string(),
                "-o".into(),
                "StrictHostKeyChecking=no".into(),
                "-o".into(),
                "UserKnownHostsFile=/dev/null".into(),
                "-o".into(),
                "LogLevel=ERROR".into(),
            ],
        };
        let start = Instant::now();
        loop {
            let probe = Command::new("ssh")
                .args(&cfg.options)
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=5",
                    &cfg.host,
                    "systemctl is-system-running --wait >/dev/null 2>&1; true",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if probe.is_ok_and(|s| s.success()) {
                break;
            }
            if self.vm.as_mut().and_then(|v| v.try_wait().ok().flatten()).is_some() {
                return Err(DeviceError::Failed(format!("qemu exited; see {}", d.join("console.log").display())));
            }
            if start.elapsed() > Duration::from_secs(600) {
                return Err(DeviceError::Failed(format!(
                    "the virtual box did not answer SSH within 10 minutes; see {}",
                    d.join("console.log").display()
                )));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        self.ssh = Some(match self.ssh.take() {
            // After a power cut: the same box, its state kept.
            Some(_) => SshDevice::attach(cfg)?,
            None => SshDevice::new(cfg)?,
        });
        self.configure()
    }

    /// The box's configuration for this site, its keys, and the share mounted.
    fn configure(&mut self) -> Result<(), DeviceError> {
        self.share_up()?;
        let ssh = self.ssh()?;
        let mut keys = Vec::new();
        for (i, k) in self.opts.trusted_keys.iter().enumerate() {
            let remote = format!("/etc/crlm/trusted-{i}.pub");
            ssh.put(k, &remote)?;
            keys.push(format!("\"{remote}\""));
        }
        let collector = match &self.opts.collector_key {
            Some(k) => {
                ssh.put(k, "/etc/crlm/collector.pub")?;
                "collector_key = \"/etc/crlm/collector.pub\"\n"
            }
            None => "",
        };
        let model = ssh.text("test -s /usr/share/crlm/model/model.toml && echo /usr/share/crlm/model || true")?;
        let toml = format!(
            "[share]\npath = \"/srv/crlm/share\"\nquiet_seconds = 2.0\npoll_seconds = 1.0\nincomplete_timeout_seconds = 60\n\
             [state]\npath = \"/var/lib/crlm\"\nmin_free_mb = 16\n\
             [model]\npath = \"{model}\"\ntrusted_keys = [{keys}]\n\
             [display]\ndriver = \"png\"\n\
             [mqtt]\nurl = \"mqtt://10.0.2.2:{port}\"\nsite = \"hil\"\ndevice = \"qemu\"\nheartbeat_seconds = 2.0\n\
             reconnect_max_seconds = 4.0\n{collector}",
            keys = keys.join(", "),
            port = self.opts.broker_port,
        );
        let local = self.dir.path().join("crlm.toml");
        std::fs::write(&local, toml).map_err(|e| DeviceError::io("crlm.toml", e))?;
        ssh.put(&local, "/etc/crlm/crlm.toml")?;
        let mount = match self.opts.share_protocol {
            // The kernel's own NFS client takes these options without mount.nfs (nfs-common).
            ShareProtocol::Nfs => format!(
                "modprobe nfsv4 2>/dev/null; mount -t nfs4 10.0.2.2:/share /srv/crlm/share \
                 -o vers=4.1,port={},addr=10.0.2.2,soft,timeo=50,retrans=2,actimeo=1",
                self.share_port
            ),
            ShareProtocol::Smb => format!(
                "mount -t cifs //10.0.2.2/share /srv/crlm/share \
                 -o port={},guest,soft,uid=crlm,gid=crlm,file_mode=0640,dir_mode=0750,actimeo=1",
                self.share_port
            ),
        };
        ssh.sh(&format!(
            "chown -R root:crlm /etc/crlm && chmod 0750 /etc/crlm && chmod 0640 /etc/crlm/* && \
             (mountpoint -q /srv/crlm/share || ({mount}))"
        ))?;
        Ok(())
    }

    fn kill_vm(&mut self) {
        if let Some(mut v) = self.vm.take() {
            let _ = v.kill();
            let _ = v.wait();
        }
    }
}

impl Drop for QemuDevice {
    fn drop(&mut self) {
        self.kill_vm();
        self.share_down();
    }
}

impl Device for QemuDevice {
    fn describe(&self) -> String {
        let share = match self.opts.share_protocol {
            ShareProtocol::Nfs => "the share over NFSv4.1",
            ShareProtocol::Smb => "the share over SMB (CIFS)",
        };
        format!("qemu: Debian 12 arm64 under qemu-system-aarch64 (TCG), systemd, the project's unit, {share}")
    }

    fn ids(&self) -> (String, String) {
        ("hil".into(), "qemu".into())
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            power_cut_loses_cache: true,
            small_state_disk: true,
            clock_step: true,
            real_systemd: true,
            share_outage: match self.opts.share_protocol {
                ShareProtocol::Nfs => {
                    "the NFS server (this machine's nfs-ganesha) killed and started again under the guest's NFSv4.1 soft mount"
                }
                ShareProtocol::Smb => {
                    "the SMB server (this machine's smbd) killed and started again under the guest's CIFS soft mount"
                }
            },
            // No GPU under emulation: the box's configuration chooses (candle on its CPU).
            required_provider: None,
        }
    }

    fn share(&self) -> &Path {
        &self.share
    }

    fn share_available(&mut self, available: bool) -> Result<(), DeviceError> {
        if available {
            self.share_up()
        } else {
            self.share_down();
            Ok(())
        }
    }

    fn start(&mut self) -> Result<(), DeviceError> {
        if self.vm.is_none() {
            self.boot()?;
        }
        self.ssh_mut()?.start()
    }

    fn stop(&mut self) -> Result<(), DeviceError> {
        self.ssh_mut()?.stop()
    }

    fn kill(&mut self) -> Result<(), DeviceError> {
        self.ssh_mut()?.kill()
    }

    fn freeze(&mut self) -> Result<(), DeviceError> {
        self.ssh_mut()?.freeze()
    }

    fn power_cut(&mut self) -> Result<(), DeviceError> {
        self.kill_vm();
        Ok(())
    }

    fn service_pid(&mut self) -> Result<Option<u32>, DeviceError> {
        if self.vm.is_none() {
            return Ok(None);
        }
        self.ssh_mut()?.service_pid()
    }

    fn supervision(&mut self) -> Result<Supervision, DeviceError> {
        self.ssh_mut()?.supervision()
    }

    fn crlm(&self, args: &[&str]) -> Result<Output, DeviceError> {
        self.ssh()?.crlm(args)
    }

    fn read_state(&self, rel: &str) -> Result<Vec<u8>, DeviceError> {
        self.ssh()?.read_state(rel)
    }

    fn state_files(&self, rel: &str) -> Result<Vec<(String, Vec<u8>)>, DeviceError> {
        self.ssh()?.state_files(rel)
    }

    fn panel_text(&self) -> Result<String, DeviceError> {
        self.ssh()?.panel_text()
    }

    fn save_panel(&self, dir: &Path) -> Result<Option<PathBuf>, DeviceError> {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::copy(self.dir.path().join("console.log"), dir.join("console.log"));
        self.ssh()?.save_panel(dir)
    }

    fn journal(&self) -> Result<String, DeviceError> {
        self.ssh()?.journal()
    }

    fn state_free_bytes(&self) -> Result<u64, DeviceError> {
        self.ssh()?.state_free_bytes()
    }

    fn fill_state_disk(&mut self, leave: Option<u64>) -> Result<(), DeviceError> {
        let ssh = self.ssh()?;
        ssh.sh("rm -f /var/lib/crlm/hil-filler")?;
        if let Some(leave) = leave {
            ssh.sh(&format!(
                "fallocate -l $(( $(df --output=avail -B1 /var/lib/crlm | tail -1) - {leave} )) /var/lib/crlm/hil-filler"
            ))?;
        }
        Ok(())
    }

    fn step_clock(&mut self, seconds: i64) -> Result<(), DeviceError> {
        self.ssh_mut()?.step_clock(seconds)
    }

    fn install_model(&mut self, tar: &Path) -> Result<Result<(), String>, DeviceError> {
        let ssh = self.ssh()?;
        ssh.sh("rm -rf /tmp/bundle && mkdir -p /tmp/bundle")?;
        ssh.put(tar, "/tmp/bundle/crlm-model.tar")?;
        let check = ssh.sh(
            "RAUC_SYSTEM_COMPATIBLE=crlm-edge-orin RAUC_MF_COMPATIBLE=crlm-edge-orin RAUC_BUNDLE_MOUNT_POINT=/tmp/bundle \
             CRLM_CONFIG=/etc/crlm/crlm.toml /usr/lib/crlm/crlm-model-hook install-check 2>&1 || echo \"REFUSED-BY-HOOK $?\"",
        )?;
        let said = String::from_utf8_lossy(&check.stdout).trim().to_string();
        if let Some((why, code)) = said.rsplit_once("REFUSED-BY-HOOK") {
            return Ok(Err(format!("{} (exit{code})", why.trim())));
        }
        // The slot written while the service is stopped (slot-pre-install, slot-post-install).
        ssh.sh("systemctl stop crlm.service && rm -rf /usr/share/crlm/model/* && \
             tar -xf /tmp/bundle/crlm-model.tar -C /usr/share/crlm/model")?;
        self.configure()?;
        self.ssh_mut()?.start()?;
        Ok(Ok(()))
    }
}

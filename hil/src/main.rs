//! `crlm-hil` (run as `hil/run`): the scenarios against one target, with JUnit XML and Markdown
//! reports. Exit status 0 when nothing failed (skips are not failures), 1 otherwise.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use crlm_hil::device::{Device, DeviceError};
use crlm_hil::local::{LocalDevice, LocalOptions};
use crlm_hil::qemu::{QemuDevice, QemuOptions, ShareProtocol};
use crlm_hil::report::{Outcome, RunReport, ScenarioReport};
use crlm_hil::scenario::{ALL, BoxSpec, Env};
use crlm_hil::ssh::{SshConfig, SshDevice};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Target {
    /// The service as a process on this machine.
    Local,
    /// A virtual aarch64 box under qemu-system-aarch64 (image: hil/qemu/build-image).
    Qemu,
    /// A real box over SSH (HIL_SSH_HOST, HIL_SSH_SHARE).
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Share {
    /// NFSv4.1 served by nfs-ganesha on this machine.
    Nfs,
    /// SMB served by Samba's smbd on this machine, mounted with CIFS.
    Smb,
}

#[derive(Debug, Parser)]
#[command(about = "Hardware-in-the-loop scenarios against the service on this machine, a virtual box or a real one")]
struct Args {
    #[arg(long, value_enum, default_value = "local")]
    target: Target,
    /// Run only these scenarios (name or number; repeat or comma-separate). Default: all.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Where hil-junit.xml, hil-report.md and each scenario's panel and log go.
    #[arg(long, default_value = "target/hil")]
    report: PathBuf,
    /// The crlm binary (the box's, for local; the host's tools for every target).
    #[arg(long, default_value = "target/debug/crlm")]
    crlm: PathBuf,
    /// Scenario 4: how long the broker stays away (the 10 minutes: 600).
    #[arg(long, default_value_t = 20)]
    outage_seconds: u64,
    /// Scenario 2: power cuts.
    #[arg(long, default_value_t = 20)]
    power_cycles: u32,
    /// How the qemu target's box mounts the share from this machine.
    #[arg(long, value_enum, default_value = "nfs")]
    share: Share,
    /// The qemu target's deadlines are this many times the local ones.
    #[arg(long, default_value_t = 5.0)]
    qemu_slowdown: f64,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list {
        for s in ALL {
            println!("{:>2}  {:<14} {}", s.number, s.name, s.title);
        }
        return Ok(());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crlm = std::fs::canonicalize(&args.crlm)
        .with_context(|| format!("the crlm binary {} (build it: cargo build -p crlm)", args.crlm.display()))?;
    let chosen: Vec<_> = ALL
        .iter()
        .filter(|s| args.scenario.is_empty() || args.scenario.iter().any(|w| w == s.name || w == &s.number.to_string()))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario matches {:?} (hil/run --list)", args.scenario);
    }
    std::fs::create_dir_all(&args.report).with_context(|| format!("creating {}", args.report.display()))?;
    let work = tempfile::Builder::new().prefix("crlm-hil-work-").tempdir().context("a scratch folder")?;
    let shared = repo.join("../shared/data");
    let shared_data = shared.join("MANIFEST.tsv").exists().then_some(shared);

    let target_name = format!("{:?}", args.target).to_lowercase();
    let share_protocol = match args.share {
        Share::Nfs => ShareProtocol::Nfs,
        Share::Smb => ShareProtocol::Smb,
    };
    let mut report = RunReport {
        target: match args.target {
            Target::Qemu => format!("qemu, share over {:?}", args.share).to_lowercase(),
            _ => target_name.clone(),
        },
        machine: machine(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        scenarios: Vec::new(),
    };
    // Why the whole target cannot run here, if it cannot.
    let unavailable: Option<String> = match args.target {
        Target::Local => None,
        // The virtual box's image is made (and cached) on first use.
        Target::Qemu => qemu_image(&repo.join("target/hil-qemu"), &repo).err(),
        Target::Ssh => SshConfig::from_env().err(),
    };
    let local_crlm = crlm.clone();
    let image = repo.join("target/hil-qemu");
    let factory = move |spec: &BoxSpec| -> Result<Box<dyn Device>, DeviceError> {
        match args.target {
            Target::Local => {
                let mut o = LocalOptions::new(local_crlm.clone(), spec.broker_url.clone());
                o.collector_key = spec.collector_key.clone();
                o.trusted_keys = spec.trusted_keys.clone();
                o.state_disk_mib = spec.state_disk_mib;
                Ok(Box::new(LocalDevice::new(o)?))
            }
            Target::Ssh => {
                let cfg = SshConfig::from_env().map_err(DeviceError::NotOnThisTarget)?;
                Ok(Box::new(SshDevice::new(cfg)?))
            }
            Target::Qemu => {
                let port = spec.broker_url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(1883);
                Ok(Box::new(QemuDevice::new(QemuOptions {
                    image: image.clone(),
                    broker_port: port,
                    collector_key: spec.collector_key.clone(),
                    trusted_keys: spec.trusted_keys.clone(),
                    state_disk_mib: spec.state_disk_mib,
                    share_protocol,
                })?))
            }
        }
    };
    let env = Env {
        crlm,
        work: work.path().to_path_buf(),
        evidence: args.report.join(&target_name),
        repo,
        factory: &factory,
        // Software emulation of an aarch64 box on this machine's cores.
        slow: if args.target == Target::Qemu { args.qemu_slowdown } else { 1.0 },
        outage: Duration::from_secs(args.outage_seconds),
        power_cycles: args.power_cycles,
        shared_data,
    };
    for s in chosen {
        eprintln!("== {}. {} ({target_name})", s.number, s.title);
        let r = match &unavailable {
            Some(why) => ScenarioReport {
                number: s.number,
                name: s.name,
                title: s.title,
                outcome: Outcome::Skip(why.clone()),
                elapsed: Duration::ZERO,
                timings: vec![],
                lost: 0,
                notes: vec![],
            },
            None => s.run(&env),
        };
        match &r.outcome {
            Outcome::Pass => eprintln!("   pass in {:.1} s", r.elapsed.as_secs_f64()),
            Outcome::Fail(why) => eprintln!("   FAIL in {:.1} s: {why}", r.elapsed.as_secs_f64()),
            Outcome::Skip(why) => eprintln!("   skipped: {why}"),
        }
        report.scenarios.push(r);
    }
    report.write(&args.report).with_context(|| format!("writing the reports in {}", args.report.display()))?;
    eprintln!(
        "reports: {} and {}",
        args.report.join("hil-junit.xml").display(),
        args.report.join("hil-report.md").display()
    );
    if report.failed() > 0 {
        bail!("{} of {} scenarios failed", report.failed(), report.scenarios.len());
    }
    Ok(())
}

/// Make the virtual box's image with hil/qemu/build-image when it is missing, or older than the
/// aarch64 crlm it installs.
fn qemu_image(image: &Path, repo: &Path) -> Result<(), String> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let crlm = repo.join("target/cross/aarch64-unknown-linux-gnu/release/crlm");
    let fresh = match (modified(&image.join("root.img")), modified(&crlm)) {
        (Some(img), Some(bin)) => img >= bin,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(());
    }
    eprintln!("== the virtual box's image (hil/qemu/build-image)");
    let status = std::process::Command::new(repo.join("hil/qemu/build-image"))
        .status()
        .map_err(|e| format!("hil/qemu/build-image could not run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("hil/qemu/build-image failed ({status}); docs/HIL.md says what it needs"))
    }
}

/// This machine, for the report: CPU model, cores, memory, kernel.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map(|kb| format!("{} GiB", kb / (1 << 20)))
        .unwrap_or_default();
    format!("{} ({}), {cores} cores, {mem}", cpu, std::env::consts::ARCH)
}

//! The scenarios (issue 20), each against a fresh box with its own broker, collector and
//! subscriber: a pass, a failure saying what went wrong, or a skip saying what the target lacks;
//! timings, and what was lost (must be 0).

use crate::device::{Device, DeviceError};
use crate::host::{Broker, Collector, Relay, Subscriber};
use crate::report::{Outcome, ScenarioReport};
use crate::wire::{Case, LockedRow};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a scenario asks of the box it is given.
#[derive(Debug, Clone, Default)]
pub struct BoxSpec {
    pub broker_url: String,
    pub collector_key: Option<PathBuf>,
    pub trusted_keys: Vec<PathBuf>,
    /// The state on a small disk of its own (MiB).
    pub state_disk_mib: Option<u64>,
}

/// Makes a fresh box for a scenario.
pub type Factory<'a> = dyn Fn(&BoxSpec) -> Result<Box<dyn Device>, DeviceError> + 'a;

/// The run's settings.
pub struct Env<'a> {
    /// `crlm` on the harness's machine: the project's writers, the broker, the collector.
    pub crlm: PathBuf,
    /// Scratch space for exports and keys.
    pub work: PathBuf,
    /// Where panels and logs of each scenario are kept.
    pub evidence: PathBuf,
    /// The repository (the demo model package).
    pub repo: PathBuf,
    pub factory: &'a Factory<'a>,
    /// Deadlines are multiplied by this (an emulated box is several times slower).
    pub slow: f64,
    /// Scenario 4: how long the broker stays away.
    pub outage: Duration,
    /// Scenario 2: power cuts.
    pub power_cycles: u32,
    /// `../shared/data` when present (its malformed files join scenario 6's corpus).
    pub shared_data: Option<PathBuf>,
}

/// Why a scenario stopped early.
pub enum Stop {
    Fail(String),
    Skip(String),
}

impl From<DeviceError> for Stop {
    fn from(e: DeviceError) -> Stop {
        match e {
            DeviceError::NotOnThisTarget(why) => Stop::Skip(why),
            e => Stop::Fail(e.to_string()),
        }
    }
}

impl From<String> for Stop {
    fn from(e: String) -> Stop {
        Stop::Fail(e)
    }
}

/// What a scenario records as it goes.
#[derive(Default)]
pub struct Rec {
    timings: Vec<(String, Duration)>,
    notes: Vec<String>,
    lost: u64,
}

impl Rec {
    fn time(&mut self, what: &str, d: Duration) {
        self.timings.push((what.into(), d));
    }
    fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
}

type Body = fn(&Env, &mut Rec) -> Result<(), Stop>;

pub struct Scenario {
    pub number: u32,
    pub name: &'static str,
    pub title: &'static str,
    body: Body,
}

pub const ALL: &[Scenario] = &[
    Scenario { number: 1, name: "golden", title: "Golden case: share -> lock -> collector -> panel", body: golden },
    Scenario { number: 2, name: "power-cut", title: "Power cut mid-case and mid-ledger-append", body: power_cut },
    Scenario { number: 3, name: "watchdog", title: "kill -9 and a hung service: restarted", body: watchdog },
    Scenario { number: 4, name: "broker-outage", title: "Broker outage: nothing lost", body: broker_outage },
    Scenario { number: 5, name: "share-outage", title: "The share disappears mid-copy", body: share_outage },
    Scenario { number: 6, name: "malformed", title: "Malformed exports quarantined, service up", body: malformed },
    Scenario { number: 7, name: "disk-full", title: "State disk nearly full", body: disk_full },
    Scenario { number: 8, name: "clock-step", title: "Clock stepped backwards and forwards", body: clock_step },
    Scenario { number: 9, name: "model-update", title: "Model package update and rollback", body: model_update },
];

impl Scenario {
    pub fn run(&self, env: &Env) -> ScenarioReport {
        let start = Instant::now();
        let mut rec = Rec::default();
        let outcome = match (self.body)(env, &mut rec) {
            Ok(()) if rec.lost == 0 => Outcome::Pass,
            Ok(()) => Outcome::Fail(format!("{} lost", rec.lost)),
            Err(Stop::Fail(why)) => Outcome::Fail(why),
            Err(Stop::Skip(why)) => Outcome::Skip(why),
        };
        ScenarioReport {
            number: self.number,
            name: self.name,
            title: self.title,
            outcome,
            elapsed: start.elapsed(),
            timings: rec.timings,
            lost: rec.lost,
            notes: rec.notes,
        }
    }
}

/// A box with its site: broker, collector (the box trusts its acks and it knows the box's key)
/// and an independent subscriber.
struct Site {
    dev: Box<dyn Device>,
    broker: Broker,
    /// The box's only path to the broker.
    relay: Relay,
    collector: Collector,
    sub: Subscriber,
    dir: tempfile::TempDir,
    exports: u32,
    /// Where the service's log and panel are kept when the site ends, pass or fail.
    evidence: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::create_dir_all(&self.evidence);
        let _ = self.dev.save_panel(&self.evidence);
        if let Ok(j) = self.dev.journal() {
            let _ = std::fs::write(self.evidence.join("journal.log"), j);
        }
    }
}

impl Site {
    fn new(env: &Env, mut spec: BoxSpec, name: &str) -> Result<Site, Stop> {
        let dir = tempfile::Builder::new()
            .prefix("site-")
            .tempdir_in(&env.work)
            .map_err(|e| Stop::Fail(format!("a site folder: {e}")))?;
        let broker = Broker::start(dir.path(), &env.crlm)?;
        let collector = Collector::start(dir.path(), &env.crlm, &broker.url())?;
        let sub = Subscriber::start(broker.port);
        let relay = Relay::start(broker.port)?;
        spec.broker_url = relay.url();
        spec.collector_key = Some(collector.key_pub.clone());
        let dev = (env.factory)(&spec)?;
        Ok(Site { dev, broker, relay, collector, sub, dir, exports: 0, evidence: env.evidence.join(name) })
    }

    /// Start the box and enrol it with the collector (its key exists once it has started).
    /// How long the box took to say it was ready.
    fn start(&mut self) -> Result<Duration, Stop> {
        let t = Instant::now();
        self.dev.start()?;
        let ready = t.elapsed();
        let key = self.dev.read_state("keys/device.pub")?;
        let (site, device) = self.dev.ids();
        self.collector.register(&site, &device, &key)?;
        // The collector reads its registrations again at most every 5 s; the box's first
        // heartbeats were refused just now, so a result sent within that window would wait for
        // the box's resend (30 s). Enrolment comes before a box's first case.
        std::thread::sleep(Duration::from_secs(6));
        Ok(ready)
    }

    /// A sample export written by the project's own writer (`crlm synth case`), not yet in the
    /// share. Each has its own patient.
    fn export(&mut self, env: &Env) -> Result<Export, Stop> {
        self.exports += 1;
        let patient = format!("HIL-{:04}", self.exports);
        let dir = self.dir.path().join(format!("export-{:04}", self.exports));
        let out = Command::new(&env.crlm)
            .args(["synth", "case", "--patient-id", &patient])
            .arg(&dir)
            .env_remove("CRLM_CONFIG")
            .output()
            .map_err(|e| Stop::Fail(format!("crlm synth case: {e}")))?;
        if !out.status.success() {
            return Err(Stop::Fail(format!("crlm synth case: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let mut files = Vec::new();
        list(&dir, &dir, &mut files).map_err(|e| Stop::Fail(format!("listing the export: {e}")))?;
        files.sort();
        Ok(Export { dir, files, patient, name: format!("case-{:04}", self.exports) })
    }

    /// Copy an export into the share file by file, as a lab machine writes it over the network.
    fn put(&self, e: &Export) -> Result<(), Stop> {
        for f in &e.files {
            self.put_file(e, f, None)?;
        }
        Ok(())
    }

    /// One file of an export into the share, or its first `bytes` only.
    fn put_file(&self, e: &Export, rel: &Path, bytes: Option<usize>) -> Result<(), Stop> {
        let to = self.dev.share().join(&e.name).join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|err| Stop::Fail(format!("the share: {err}")))?;
        }
        let data = std::fs::read(e.dir.join(rel)).map_err(|err| Stop::Fail(format!("the export: {err}")))?;
        let data = match bytes {
            Some(n) => data.get(..n).unwrap_or(&data),
            None => &data,
        };
        std::fs::write(&to, data).map_err(|err| Stop::Fail(format!("writing {} into the share: {err}", rel.display())))
    }

    /// Poll the box's cases until `done`, or fail naming `what` after `limit` (times `env.slow`).
    fn wait_cases(&self, env: &Env, what: &str, limit: f64, done: impl Fn(&[Case]) -> bool) -> Result<Vec<Case>, Stop> {
        let mut last = Vec::new();
        wait(env, what, limit, || {
            last = self.dev.cases().unwrap_or_default();
            done(&last)
        })
        .map_err(|e| Stop::Fail(format!("{e}; cases: {}", summary(&last))))?;
        Ok(last)
    }

    /// A new export into the share, then wait until the box holds `n` cases, all locked.
    fn lock_next(&mut self, env: &Env, n: usize, what: &str) -> Result<Vec<Case>, Stop> {
        let e = self.export(env)?;
        self.put(&e)?;
        self.wait_cases(env, what, 120.0, |c| c.len() == n && c.iter().all(locked))
    }

    /// Wait until the collector holds every pseudonym in `cases`, each verified.
    fn wait_collected(&self, env: &Env, cases: &BTreeSet<String>, limit: f64) -> Result<Vec<LockedRow>, Stop> {
        let mut rows = Vec::new();
        wait(env, "the results at the collector", limit, || {
            rows = self.collector.results().unwrap_or_default();
            let have: BTreeSet<_> =
                rows.iter().filter(|r| r.signature_ok == Some(true)).map(|r| r.pseudonym.clone()).collect();
            cases.is_subset(&have)
        })?;
        Ok(rows)
    }
}

struct Export {
    dir: PathBuf,
    files: Vec<PathBuf>,
    patient: String,
    name: String,
}

fn list(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            list(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

fn summary(cases: &[Case]) -> String {
    let v: Vec<String> = cases.iter().map(|c| format!("{} {} ({} files)", c.case, c.state, c.files)).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// Poll `ok` until true, or an error naming `what` after `limit` seconds times `env.slow`.
fn wait(env: &Env, what: &str, limit: f64, mut ok: impl FnMut() -> bool) -> Result<Duration, String> {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(limit * env.slow);
    loop {
        if ok() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("timed out after {:.0} s waiting for {what}", limit.as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn locked(c: &Case) -> bool {
    c.state == "predicted" && c.outputs_written
}

/// The ledger verifies and holds each pseudonym once; its rows.
fn ledger_once_each(dev: &dyn Device) -> Result<Vec<LockedRow>, Stop> {
    if let Err(why) = dev.ledger_verify()? {
        return Err(Stop::Fail(format!("the ledger does not verify: {why}")));
    }
    let rows = dev.ledger()?.rows;
    let mut seen = BTreeSet::new();
    for r in &rows {
        if !seen.insert(r.pseudonym.clone()) {
            return Err(Stop::Fail(format!("{} was locked twice", r.pseudonym)));
        }
    }
    Ok(rows)
}

/// Every result message for a case carried the same record (a resend after a lost ack is the
/// same message again; two different records would be two predictions).
fn sent_once_each(sub: &Subscriber) -> Result<usize, Stop> {
    let mut by_case: BTreeMap<String, BTreeSet<(u64, String)>> = BTreeMap::new();
    for m in sub.results() {
        by_case.entry(m.case).or_default().insert((m.ledger_seq, m.record_hash));
    }
    for (case, records) in &by_case {
        if records.len() > 1 {
            return Err(Stop::Fail(format!("{case} was sent as {} different records", records.len())));
        }
    }
    if sub.unreadable() > 0 {
        return Err(Stop::Fail(format!("{} messages did not parse as their schema", sub.unreadable())));
    }
    Ok(by_case.len())
}

/// Nothing identifying left the box: the patient IDs and folder names are in none of the
/// service's log and panel.
fn no_identifiers(site: &Site, exports: &[&Export]) -> Result<(), Stop> {
    let journal = site.dev.journal()?;
    let panel = site.dev.panel_text()?;
    for e in exports {
        for (what, text) in [("log", &journal), ("panel", &panel)] {
            if text.contains(&e.patient) || text.contains(&e.name) {
                return Err(Stop::Fail(format!("the {what} names the patient or the export's folder")));
            }
        }
    }
    Ok(())
}

// ---- 1 ----

fn golden(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "1-golden")?;
    let ready = site.start()?;
    rec.time("start -> ready", ready);
    let export = site.export(env)?;
    let t = Instant::now();
    site.put(&export)?;
    rec.time("export copied", t.elapsed());
    let cases = site.wait_cases(env, "the case locked", 120.0, |c| c.len() == 1 && c.iter().all(locked))?;
    rec.time("copied -> locked", t.elapsed());
    let case = cases.first().map(|c| c.case.clone()).unwrap_or_default();
    if cases.first().map(|c| c.files) != Some(export.files.len() as u64) {
        return Err(Stop::Fail(format!("not all {} files were taken: {}", export.files.len(), summary(&cases))));
    }
    site.wait_collected(env, &BTreeSet::from([case.clone()]), 60.0)?;
    rec.time("copied -> countersigned at the collector", t.elapsed());
    wait(env, "\"Prediction locked\" on the panel", 30.0, || {
        site.dev.panel_text().is_ok_and(|p| p.contains("Prediction locked") && p.contains(&case))
    })?;
    rec.time("copied -> panel", t.elapsed());
    let rows = ledger_once_each(site.dev.as_ref())?;
    rec.lost = 1u64.saturating_sub(rows.len() as u64);
    sent_once_each(&site.sub)?;
    no_identifiers(&site, &[&export])?;
    // What ran the model, from the lock itself; a real box must have used its TensorRT provider.
    let seq = cases.first().and_then(|c| c.ledger_seq).unwrap_or(0);
    let record = site.dev.ledger_record(seq)?.ok_or_else(|| Stop::Fail(format!("no ledger record {seq}")))?;
    let (backend, provider) = record.body.model.map(|m| (m.backend, m.device)).unwrap_or_default();
    rec.note(format!("the model ran on {backend}, execution provider {provider}"));
    if let Some(want) = site.dev.abilities().required_provider
        && provider != want
    {
        return Err(Stop::Fail(format!(
            "the prediction ran on {backend}/{provider}; this target requires the {want} provider (docs/HIL.md)"
        )));
    }
    rec.note(format!(
        "case {case}: {} files, locked, verified at the collector, panel \"Prediction locked\"",
        export.files.len()
    ));
    rec.note(format!("broker: {}", site.broker.kind));
    Ok(())
}

// ---- 2 ----

/// A small deterministic generator: the cut times are the same on every run.
struct Lcg(u64);
impl Lcg {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % max.max(1)
    }
}

fn power_cut(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "2-power-cut")?;
    site.start()?;
    let mut rng = Lcg(20);
    // Every lock the box acknowledged (in its ledger export) before each cut: pseudonym -> record.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let mut recovery = Duration::ZERO;
    let cycles = env.power_cycles;
    let mut landed: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..cycles as usize {
        let export = site.export(env)?;
        site.put(&export)?;
        // Anywhere from ingest to prediction to the ledger's append and the outputs.
        std::thread::sleep(Duration::from_millis(rng.next_ms((4000.0 * env.slow) as u64)));
        for r in site.dev.ledger().map(|e| e.rows).unwrap_or_default() {
            acknowledged.insert(r.pseudonym, r.record_hash);
        }
        // Where this cut lands: before the case was assembled, mid-case (ingest, prediction,
        // the ledger's append, the outputs) or after it was locked.
        let cases = site.dev.cases().unwrap_or_default();
        let at = if cases.len() < i + 1 {
            "before the case was assembled"
        } else if cases.iter().filter(|c| locked(c)).count() < i + 1 {
            "mid-case"
        } else {
            "after the lock"
        };
        *landed.entry(at).or_default() += 1;
        site.dev.power_cut()?;
        let t = Instant::now();
        site.dev.start()?;
        recovery += t.elapsed();
    }
    rec.time("mean power-on -> ready", recovery / cycles.max(1));
    let n = cycles as usize;
    let t = Instant::now();
    site.wait_cases(env, "every case locked", 60.0 + 20.0 * cycles as f64, |c| c.len() == n && c.iter().all(locked))?;
    rec.time("last power-on -> all locked", t.elapsed());
    let rows = ledger_once_each(site.dev.as_ref())?;
    let now: BTreeMap<_, _> = rows.iter().map(|r| (r.pseudonym.clone(), r.record_hash.clone())).collect();
    for (p, h) in &acknowledged {
        if now.get(p) != Some(h) {
            rec.lost += 1;
            rec.note(format!("{p}: locked as {h} before a cut, {:?} after", now.get(p)));
        }
    }
    let all: BTreeSet<String> = now.keys().cloned().collect();
    site.wait_collected(env, &all, 120.0)?;
    let at_collector = site.collector.results()?;
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &at_collector {
        *per.entry(r.pseudonym.as_str()).or_default() += 1;
    }
    if let Some((p, k)) = per.iter().find(|(_, k)| **k > 1) {
        return Err(Stop::Fail(format!("the collector holds {p} {k} times")));
    }
    sent_once_each(&site.sub)?;
    rec.lost += (n as u64).saturating_sub(rows.len() as u64);
    rec.note(format!(
        "{cycles} power cuts; {} locks acknowledged before a cut all survived unchanged; {} cases locked once each; ledger verifies; collector holds each once",
        acknowledged.len(),
        rows.len()
    ));
    let landed: Vec<String> = landed.iter().map(|(k, v)| format!("{v} {k}")).collect();
    rec.note(format!("where the cuts landed: {}", landed.join(", ")));
    if !site.dev.abilities().power_cut_loses_cache {
        rec.note("this target's power cut kills the process: the kernel keeps its page cache, so unflushed writes survive (the qemu target's cut loses them)");
    }
    Ok(())
}

// ---- 3 ----

fn watchdog(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "3-watchdog")?;
    site.start()?;
    site.lock_next(env, 1, "the first case locked")?;

    // kill -9: restarted (Restart=on-failure).
    let before = site.dev.supervision()?;
    let pid = site.dev.service_pid()?;
    site.dev.kill()?;
    let t = wait(env, "a restart after kill -9", 30.0, || {
        site.dev.supervision().is_ok_and(|s| s.restarts > before.restarts)
            && site.dev.service_pid().is_ok_and(|p| p.is_some() && p != pid)
    })?;
    rec.time("kill -9 -> restarted", t);

    // Hung (SIGSTOP): alive, silent; the watchdog fires and it is restarted.
    let before = site.dev.supervision()?;
    let pid = site.dev.service_pid()?;
    site.dev.freeze()?;
    let t = wait(env, "the watchdog restarting a hung service", 120.0, || {
        site.dev
            .supervision()
            .is_ok_and(|s| s.watchdog_timeouts > before.watchdog_timeouts && s.restarts > before.restarts)
            && site.dev.service_pid().is_ok_and(|p| p.is_some() && p != pid)
    })?;
    rec.time("SIGSTOP -> watchdog restart", t);

    // And it works afterwards.
    site.lock_next(env, 2, "a case locked after the restarts")?;
    let rows = ledger_once_each(site.dev.as_ref())?;
    rec.lost = 2u64.saturating_sub(rows.len() as u64);
    let s = site.dev.supervision()?;
    rec.note(format!(
        "restarts {}, of which by the watchdog {}; a case locked after both",
        s.restarts, s.watchdog_timeouts
    ));
    if !site.dev.abilities().real_systemd {
        rec.note("no systemd on this target: the harness keeps the unit's contract (Type=notify, WatchdogSec, SIGABRT then SIGKILL, Restart=on-failure); qemu and ssh run the real unit");
    }
    Ok(())
}

// ---- 4 ----

fn broker_outage(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "4-broker-outage")?;
    site.start()?;
    let cases = site.lock_next(env, 1, "the first case locked")?;
    site.wait_collected(env, &cases.iter().map(|c| c.case.clone()).collect(), 60.0)?;

    site.broker.down();
    let down = Instant::now();
    for _ in 0..2 {
        let e = site.export(env)?;
        site.put(&e)?;
    }
    let cases =
        site.wait_cases(env, "cases locked while the broker is away", 120.0, |c| c.len() == 3 && c.iter().all(locked))?;
    rec.time("broker down -> both locked offline", down.elapsed());
    if let Some(rest) = env.outage.checked_sub(down.elapsed()) {
        std::thread::sleep(rest);
    }
    site.broker.up()?;
    let t = Instant::now();
    let all: BTreeSet<String> = cases.iter().map(|c| c.case.clone()).collect();
    site.wait_collected(env, &all, 120.0)?;
    rec.time("broker back -> all at the collector", t.elapsed());
    let t2 = wait(env, "the outbox empty on the panel", 60.0, || {
        site.dev.panel_text().is_ok_and(|p| p.contains("Outbox 0"))
    })?;
    rec.time("broker back -> outbox empty", t.elapsed().max(t2));

    // A partition: the path between box and broker drops everything, silently.
    site.relay.partition(true);
    let cut = Instant::now();
    let cases = site.lock_next(env, 4, "a case locked during the partition")?;
    rec.time("partition -> case locked offline", cut.elapsed());
    if let Some(rest) = env.outage.checked_sub(cut.elapsed()) {
        std::thread::sleep(rest);
    }
    site.relay.partition(false);
    let t = Instant::now();
    let all: BTreeSet<String> = cases.iter().map(|c| c.case.clone()).collect();
    site.wait_collected(env, &all, 180.0)?;
    rec.time("healed -> all at the collector", t.elapsed());

    let rows = ledger_once_each(site.dev.as_ref())?;
    let collected: BTreeSet<String> = site.collector.results()?.into_iter().map(|r| r.pseudonym).collect();
    rec.lost = rows.iter().filter(|r| !collected.contains(&r.pseudonym)).count() as u64;
    sent_once_each(&site.sub)?;
    rec.note(format!(
        "broker away {:.0} s (the issue's 10 minutes: --outage-seconds 600), 2 cases locked meanwhile; then the path between box and broker cut for as long, 1 case locked meanwhile; all 4 at the collector after",
        env.outage.max(Duration::from_secs(1)).as_secs_f64()
    ));
    rec.note("the outage stops the broker's process (its host gone: connections refused); the partition is a relay that drops every byte both ways without closing anything (a link down: each side notices by its own timeouts)");
    Ok(())
}

// ---- 5 ----

fn share_outage(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "5-share-outage")?;
    site.start()?;
    let e = site.export(env)?;
    // The largest file (the slide) is cut off half-way when the share goes.
    let big = e
        .files
        .iter()
        .max_by_key(|f| std::fs::metadata(e.dir.join(f)).map(|m| m.len()).unwrap_or(0))
        .cloned()
        .ok_or_else(|| Stop::Fail("an empty export".into()))?;
    let half_files: Vec<&PathBuf> = e.files.iter().filter(|f| **f != big).take(e.files.len() / 2).collect();
    for f in &half_files {
        site.put_file(&e, f, None)?;
    }
    let size = std::fs::metadata(e.dir.join(&big)).map(|m| m.len() as usize).unwrap_or(0);
    site.put_file(&e, &big, Some(size / 2))?;
    let pid = site.dev.service_pid()?;
    let restarts = site.dev.supervision()?.restarts;
    site.dev.share_available(false)?;
    std::thread::sleep(Duration::from_secs_f64(5.0 * env.slow));
    site.dev.share_available(true)?;
    // The half file back in view, unchanged past the quiet time: it must not be taken.
    std::thread::sleep(Duration::from_secs_f64(4.0 * env.slow));
    let early = site.dev.cases()?;
    if early.iter().any(locked) {
        return Err(Stop::Fail(format!("a case was locked from a half-copied export: {}", summary(&early))));
    }
    for f in e.files.iter().filter(|f| !half_files.contains(f)) {
        site.put_file(&e, f, None)?;
    }
    let t = Instant::now();
    let cases = site
        .wait_cases(env, "the case locked once the copy finished", 120.0, |c| c.len() == 1 && c.iter().all(locked))?;
    rec.time("copy finished -> locked", t.elapsed());
    if cases.first().map(|c| c.files) != Some(e.files.len() as u64) {
        rec.lost += 1;
        rec.note(format!("files taken: {}", summary(&cases)));
    }
    let q = site.dev.quarantine()?;
    if !q.is_empty() {
        let why: Vec<String> = q.iter().map(|x| format!("{}: {}", x.check, x.reason)).collect();
        return Err(Stop::Fail(format!("the half-copied file was quarantined: {}", why.join("; "))));
    }
    if site.dev.service_pid()? != pid || site.dev.supervision()?.restarts != restarts {
        return Err(Stop::Fail("the service restarted while the share was away".into()));
    }
    ledger_once_each(site.dev.as_ref())?;
    rec.note(format!(
        "share gone for 5 s with {} of {} files and half the slide written; the half file was held, not taken or quarantined; the service stayed up",
        half_files.len() + 1,
        e.files.len()
    ));
    rec.note(format!("how the share went: {}", site.dev.abilities().share_outage));
    Ok(())
}

// ---- 6 ----

fn malformed(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "6-malformed")?;
    site.start()?;
    let sample = site.export(env)?;
    let bad = site.dev.share().join("malformed");
    std::fs::create_dir_all(&bad).map_err(|e| Stop::Fail(e.to_string()))?;
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Lcg(6);
    corpus.push(("random.dcm".into(), (0..5000).map(|_| rng.next_ms(256) as u8).collect()));
    corpus.push(("clinical.json".into(), b"{\"schema\": 1, \"patient\": ".to_vec()));
    corpus.push(("notes.txt".into(), b"scanner export notes\n".to_vec()));
    let ct = sample
        .files
        .iter()
        .find(|f| f.extension().is_some_and(|x| x == "dcm"))
        .ok_or_else(|| Stop::Fail("no CT slice in the sample".into()))?;
    let slice = std::fs::read(sample.dir.join(ct)).map_err(|e| Stop::Fail(e.to_string()))?;
    corpus.push(("truncated.dcm".into(), slice.get(..slice.len() / 2).unwrap_or_default().to_vec()));
    let slide = sample
        .files
        .iter()
        .find(|f| f.extension().is_some_and(|x| x == "svs" || x == "tif" || x == "tiff"))
        .ok_or_else(|| Stop::Fail("no slide in the sample".into()))?;
    let mut tiff = std::fs::read(sample.dir.join(slide)).map_err(|e| Stop::Fail(e.to_string()))?;
    // The first IFD's offset pointed past the end of the file.
    if let Some(b) = tiff.get_mut(4..8) {
        b.copy_from_slice(&u32::MAX.to_le_bytes());
    }
    corpus.push(("bad-ifd.svs".into(), tiff));
    if let Some(shared) = &env.shared_data {
        for rel in
            ["wsi/svs/broken.svs", "dicom/pydicom_test_files/rtplan_truncated.dcm", "dicom/pydicom_test_files/zipMR.gz"]
        {
            if let Ok(b) = std::fs::read(shared.join(rel)) {
                let name = rel.rsplit('/').next().unwrap_or(rel);
                corpus.push((format!("shared-{name}"), b));
            }
        }
    }
    for (name, bytes) in &corpus {
        std::fs::write(bad.join(name), bytes).map_err(|e| Stop::Fail(format!("writing {name}: {e}")))?;
    }
    let pid = site.dev.service_pid()?;
    let names: BTreeSet<String> = corpus.iter().map(|(n, _)| format!("malformed/{n}")).collect();
    let mut quarantined = Vec::new();
    let t = wait(env, "every malformed file quarantined with a reason", 90.0, || {
        quarantined = site.dev.quarantine().unwrap_or_default();
        let have: BTreeSet<String> = quarantined.iter().filter_map(|q| q.file.clone()).collect();
        names.is_subset(&have)
    })
    .map_err(|e| {
        let have: BTreeSet<String> = quarantined.iter().filter_map(|q| q.file.clone()).collect();
        Stop::Fail(format!("{e}; not quarantined: {:?}", names.difference(&have).collect::<Vec<_>>()))
    })?;
    rec.time("written -> all quarantined", t);
    for q in &quarantined {
        if q.reason.trim().is_empty() {
            return Err(Stop::Fail(format!("{:?} was quarantined without a reason", q.file)));
        }
        rec.note(format!("{}: {} ({})", q.file.as_deref().unwrap_or("?"), q.check, q.reason));
    }
    // Nothing stalled: a good case behind the corpus is locked, by the same process.
    site.put(&sample)?;
    let t = Instant::now();
    let cases = site.wait_cases(env, "a good case locked after the corpus", 120.0, |c| c.iter().any(locked))?;
    rec.time("good case after the corpus -> locked", t.elapsed());
    rec.lost = u64::from(!cases.iter().any(locked));
    if site.dev.service_pid()? != pid {
        return Err(Stop::Fail("the service restarted on the malformed files".into()));
    }
    Ok(())
}

// ---- 7 ----

fn disk_full(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let spec = BoxSpec { state_disk_mib: Some(192), ..BoxSpec::default() };
    let mut site = Site::new(env, spec, "7-disk-full")?;
    if !site.dev.abilities().small_state_disk {
        return Err(Stop::Skip("this target cannot give the state a small disk of its own".into()));
    }
    site.start()?;
    site.lock_next(env, 1, "the first case locked")?;
    site.dev.fill_state_disk(Some(8 << 20))?;
    let t = Instant::now();
    wait(env, "the disk_full condition in a heartbeat", 60.0, || {
        site.sub
            .last_heartbeat()
            .is_some_and(|h| h.conditions.iter().any(|c| c.code == "disk_full") && h.last_error.is_some())
    })?;
    rec.time("filled -> heartbeat condition", t.elapsed());
    wait(env, "the disk_full alert", 60.0, || site.sub.alerts().iter().any(|a| a == "disk_full"))?;
    rec.time("filled -> alert", t.elapsed());
    wait(env, "\"State disk full\" on the panel", 30.0, || {
        site.dev.panel_text().is_ok_and(|p| p.contains("State disk full"))
    })?;
    rec.time("filled -> panel", t.elapsed());
    // Then full to the last byte, and a case arrives: nothing may be corrupted, and it is locked
    // once there is room.
    site.dev.fill_state_disk(Some(0))?;
    let b = site.export(env)?;
    site.put(&b)?;
    std::thread::sleep(Duration::from_secs_f64(8.0 * env.slow));
    let during = site.dev.cases().map(|c| summary(&c)).unwrap_or_else(|e| format!("unreadable ({e})"));
    rec.note(format!("with 0 bytes free and a second case arriving: {during}"));
    let restarts = site.dev.supervision()?.restarts;
    if restarts > 0 {
        rec.note(format!("the service restarted {restarts} times on the full disk"));
    }
    site.dev.fill_state_disk(None)?;
    let t = Instant::now();
    wait(env, "a heartbeat without conditions", 60.0, || {
        site.sub.last_heartbeat().is_some_and(|h| h.conditions.is_empty() && h.last_error.is_none())
    })?;
    rec.time("room again -> condition cleared", t.elapsed());
    site.wait_cases(env, "the second case locked after recovery", 180.0, |c| c.len() == 2 && c.iter().all(locked))?;
    rec.time("room again -> second case locked", t.elapsed());
    let rows = ledger_once_each(site.dev.as_ref())?;
    rec.lost = 2u64.saturating_sub(rows.len() as u64);
    rec.note(format!(
        "state on a {} MiB disk of its own filled to 8 MiB free (below state.min_free_mb 16): condition, alert and panel; then to 0 bytes free; room again: condition cleared, the second case locked, ledger verifies",
        192
    ));
    Ok(())
}

// ---- 8 ----

fn clock_step(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let mut site = Site::new(env, BoxSpec::default(), "8-clock-step")?;
    if !site.dev.abilities().clock_step {
        // Ask anyway, for the target's own reason.
        site.dev.step_clock(0)?;
    }
    site.start()?;
    site.lock_next(env, 1, "the first case locked")?;
    let mut steps = Vec::new();
    for (n, step) in [(2, -3600i64), (3, 3600)] {
        site.dev.step_clock(step)?;
        site.lock_next(env, n, &format!("case {n} locked after a step of {step} s"))?;
        steps.push(step);
    }
    // Each step is in the ledger as its own record, before the lock that followed it.
    let mut jumps = Vec::new();
    let mut records = Vec::new();
    for seq in 0.. {
        let Some(r) = site.dev.ledger_record(seq)? else { break };
        if r.kind == "clock_jump" {
            jumps.push(r.body.wall_clock_step_seconds.unwrap_or(0.0));
        }
        records.push(format!("{} {} {}", r.seq, r.kind, r.wall_time));
    }
    rec.note(format!("ledger: {}", records.join("; ")));
    for (want, got) in steps.iter().zip(jumps.iter().chain(std::iter::repeat(&0.0))) {
        if (*want as f64 - got).abs() > 120.0 {
            return Err(Stop::Fail(format!("a step of {want} s was recorded as {jumps:?}")));
        }
    }
    let rows = ledger_once_each(site.dev.as_ref())?;
    rec.lost = 3u64.saturating_sub(rows.len() as u64);
    rec.note(format!("steps of {steps:?} s recorded as clock-jump records of {jumps:?} s; the chain verifies"));
    Ok(())
}

// ---- 9 ----

fn model_update(env: &Env, rec: &mut Rec) -> Result<(), Stop> {
    let keys = tempfile::tempdir_in(&env.work).map_err(|e| Stop::Fail(e.to_string()))?;
    let k = keys.path();
    let host = |args: &[&str], cfg: Option<&Path>| -> Result<(), Stop> {
        let mut c = Command::new(&env.crlm);
        c.args(args).env_remove("CRLM_CONFIG");
        if let Some(cfg) = cfg {
            c.env("CRLM_CONFIG", cfg);
        }
        let out = c.output().map_err(|e| Stop::Fail(format!("crlm {}: {e}", args.join(" "))))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Stop::Fail(format!("crlm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))))
        }
    };
    let s = |p: &Path| p.display().to_string();
    let demo = env.repo.join("models/packages/demo");
    // The study office's signing key, trusted by the box; a stranger's, not.
    let office = k.join("office.key");
    host(&["model", "keygen", &s(&office)], None)?;
    let office_pub = office.with_extension("pub");
    let cfg = k.join("crlm.toml");
    std::fs::write(&cfg, format!("[model]\ntrusted_keys = [{:?}]\n", s(&office_pub)))
        .map_err(|e| Stop::Fail(e.to_string()))?;
    // 1.0.0: the demo package as shipped; 1.1.0: the same network re-versioned and signed.
    let v1 = k.join("v1.tar");
    host(&["model", "pack", "--out", &s(&v1), &s(&demo)], Some(&cfg))?;
    let v2_dir = k.join("v2");
    copy_dir(&demo, &v2_dir).map_err(|e| Stop::Fail(format!("copying the package: {e}")))?;
    let manifest = v2_dir.join("model.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| Stop::Fail(e.to_string()))?;
    std::fs::write(&manifest, text.replacen("version = \"1.0.0\"", "version = \"1.1.0\"", 1))
        .map_err(|e| Stop::Fail(e.to_string()))?;
    host(&["model", "sign", "--key", &s(&office), &s(&v2_dir)], None)?;
    let v2 = k.join("v2.tar");
    host(&["model", "pack", "--out", &s(&v2), &s(&v2_dir)], Some(&cfg))?;
    // 1.2.0 with one weight byte changed after signing; and 1.1.0 signed by a stranger.
    let altered = k.join("altered");
    copy_dir(&v2_dir, &altered).map_err(|e| Stop::Fail(e.to_string()))?;
    flip_byte(&altered.join("weights.safetensors"), 100).map_err(|e| Stop::Fail(e.to_string()))?;
    let altered_tar = k.join("altered.tar");
    tar_by_hand(&altered, &altered_tar)?;
    let stranger = k.join("stranger");
    copy_dir(&v2_dir, &stranger).map_err(|e| Stop::Fail(e.to_string()))?;
    host(&["model", "sign", "--generate-key", "--key", &s(&k.join("stranger.key")), &s(&stranger)], None)?;
    let stranger_tar = k.join("stranger.tar");
    tar_by_hand(&stranger, &stranger_tar)?;

    let spec = BoxSpec { trusted_keys: vec![office_pub.clone()], ..BoxSpec::default() };
    let mut site = Site::new(env, spec, "9-model-update")?;
    site.start()?;
    let mut expect: Vec<&str> = Vec::new();
    let lock_one = |site: &mut Site, version: &'static str, expect: &mut Vec<&str>| -> Result<(), Stop> {
        expect.push(version);
        let n = expect.len();
        site.lock_next(env, n, &format!("case {n} locked")).map(|_| ())
    };
    lock_one(&mut site, "1.0.0", &mut expect)?;
    let t = Instant::now();
    site.dev.install_model(&v2)?.map_err(|why| Stop::Fail(format!("the trusted 1.1.0 was refused: {why}")))?;
    rec.time("install 1.1.0 (check, slot, restart)", t.elapsed());
    lock_one(&mut site, "1.1.0", &mut expect)?;
    for (what, tar) in [("one weight byte changed", &altered_tar), ("signed by an untrusted key", &stranger_tar)] {
        match site.dev.install_model(tar)? {
            Ok(()) => return Err(Stop::Fail(format!("a package {what} was installed"))),
            Err(why) => {
                rec.note(format!("refused, the installed package stays: {what}: {}", why.lines().last().unwrap_or("")))
            }
        }
    }
    lock_one(&mut site, "1.1.0", &mut expect)?;
    let t = Instant::now();
    site.dev.install_model(&v1)?.map_err(|why| Stop::Fail(format!("rolling back to 1.0.0 was refused: {why}")))?;
    rec.time("roll back to 1.0.0", t.elapsed());
    lock_one(&mut site, "1.0.0", &mut expect)?;
    let rows = ledger_once_each(site.dev.as_ref())?;
    let got: Vec<&str> = rows.iter().map(|r| r.model_version.as_deref().unwrap_or("?")).collect();
    if got != expect {
        return Err(Stop::Fail(format!("locked with model versions {got:?}, expected {expect:?}")));
    }
    rec.lost = (expect.len() as u64).saturating_sub(rows.len() as u64);
    rec.note(format!("locked in order with {}", got.join(", ")));
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn flip_byte(path: &Path, at: usize) -> std::io::Result<()> {
    let mut b = std::fs::read(path)?;
    if let Some(x) = b.get_mut(at) {
        *x ^= 1;
    }
    std::fs::write(path, b)
}

/// A tar of a package folder made without `crlm model pack` (which packs only what it trusts).
fn tar_by_hand(dir: &Path, out: &Path) -> Result<(), Stop> {
    let ok = Command::new("tar").arg("-cf").arg(out).arg("-C").arg(dir).arg(".").status().is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err(Stop::Fail("tar failed".into())) }
}

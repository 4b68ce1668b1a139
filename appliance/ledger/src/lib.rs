//! The prediction ledger: an append-only, hash-chained, signed JSON-lines file.
//!
//! Each line is one record (format 1): sequence number, kind, body, UTC wall time, monotonic time
//! and boot id, the previous record's hash, the device key id, and an Ed25519 signature over the
//! record without its signature. A record's hash is the SHA-256 of its whole line. Lines must be
//! in canonical form (the bytes this code writes), so no edit, however small, verifies.
//!
//! Durability: a record is written with one `write` on an `O_APPEND` file and fsynced before
//! `append` returns; the file's directory is fsynced when the file is created. `ledger.head`
//! (atomic replace) names the newest record; a file shorter than its head has lost records.
//! A torn last line (power cut mid-write) is cut off by [`Ledger::open`], which reports it so the
//! caller can alert; earlier records are never touched.
//!
//! # In the data path
//!
//! - Owns: the signed, hash-chained prediction ledger, its typed records (`RecordBody`, `CaseRecord`), verification, collector countersignatures and the statisticians' export.
//! - Inputs: `RecordBody` values from the worker.
//! - Outputs: `Record`s on disk (format 1), verification reports, export rows.
//! - Place: predict -> **ledger** (the lock) -> outputs, MQTT, export.
//! - Depends on: crlm-models (signing, case vocabulary), crlm-core.

pub mod countersign;
pub mod export;
pub mod record;

pub use record::*;

use crlm_core::fsutil;
use crlm_models::package::signing;
pub use crlm_models::package::signing::key_id;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Current record format.
pub const LEDGER_FORMAT: u32 = 1;
pub const LEDGER_FILE: &str = "ledger.jsonl";
pub const HEAD_FILE: &str = "ledger.head";
/// The previous hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A wall-clock step this much larger or smaller than monotonic time is recorded as a clock jump.
pub const CLOCK_JUMP_SECONDS: f64 = 60.0;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger I/O on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("ledger record {line}: {reason}")]
    Bad { line: usize, reason: String },
    /// The ledger failed its check at opening: nothing may be appended to it.
    #[error(
        "the ledger fails its check at record {line}: {reason}; nothing is locked until it is repaired (run `crlm ledger verify`, then call support)"
    )]
    Refused { line: usize, reason: String },
    #[error("device key: {0}")]
    Key(String),
    #[error("ledger record body: {0}")]
    Body(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io { path: path.display().to_string(), source }
}

/// The signed part of a record. Field order is the canonical order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordCore {
    pub format: u32,
    pub seq: u64,
    pub prev: String,
    pub kind: RecordKind,
    pub wall_time: String,
    /// CLOCK_BOOTTIME at writing (ns), with the boot it belongs to.
    pub mono_ns: u64,
    pub boot_id: String,
    pub key_id: String,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    #[serde(flatten)]
    pub core: RecordCore,
    pub sig: String,
}

impl Record {
    /// The record's hash: SHA-256 of its canonical line (what the next record's `prev` holds).
    pub fn hash(&self) -> String {
        sha256_hex(&line_of(self))
    }

    /// The body, typed by the record's kind.
    pub fn body(&self) -> Result<RecordBody, LedgerError> {
        Ok(RecordBody::from_value(self.core.kind, &self.core.body)?)
    }

    /// The case record of a prediction or refusal (`None` for other kinds, or a body that does
    /// not read as one).
    pub fn case(&self) -> Option<CaseRecord> {
        match self.body() {
            Ok(RecordBody::Prediction(c) | RecordBody::Refusal(c)) => Some(c),
            _ => None,
        }
    }
}

/// The signed head: the newest record's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub format: u32,
    pub seq: u64,
    pub hash: String,
}

fn sha256_hex(b: &[u8]) -> String {
    crlm_models::sha256_hex(b)
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_BOOTTIME exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Load the device key from `dir/device.key`, creating it (0600) and `device.pub` at first start.
/// Key files are in the model-signing format (hex), read and made by the same code.
pub fn device_key(dir: &Path) -> Result<SigningKey, LedgerError> {
    let path = dir.join("device.key");
    if path.exists() {
        return signing::read_signing_key(&path).map_err(|e| LedgerError::Key(format!("{e}: restore it from backup")));
    }
    let key = signing::generate_key();
    fsutil::ensure_dir(dir, 0o700).map_err(io(dir))?;
    // device.key (0600, never replaced) and device.pub beside it.
    signing::write_key_pair(&path, &key).map_err(|e| LedgerError::Key(e.to_string()))?;
    Ok(key)
}

/// Canonical line (no newline) of a record.
fn line_of(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

/// What opening found at the end of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Bytes of a torn last record that were cut off.
    pub cut_bytes: u64,
}

pub struct Ledger {
    path: PathBuf,
    head_path: PathBuf,
    file: File,
    key: SigningKey,
    key_id: String,
    next_seq: u64,
    prev_hash: String,
    /// (wall seconds, boottime ns, boot id) of the last record, for clock-jump detection.
    last_times: Option<(f64, u64, String)>,
    /// Sequence number and hash of the record locked for each `body.case_ref`: a case is locked
    /// once, and a restart after a crash finds the lock it made.
    cases: HashMap<String, (u64, String)>,
}

impl Ledger {
    /// Open (or create) the ledger in `dir`, cutting off a torn last record. What remains is
    /// checked as [`verify`] does (form, chain, every signature with `key`, the head file)
    /// before anything may be appended: a ledger that fails is [`LedgerError::Refused`], never
    /// extended (issue 21, defect 4: a record with a flipped byte was built on).
    pub fn open(dir: &Path, key: SigningKey) -> Result<(Self, Option<Recovery>), LedgerError> {
        fsutil::ensure_dir(dir, 0o700).map_err(io(dir))?;
        let path = dir.join(LEDGER_FILE);
        let created = !path.exists();
        let mut bytes = if created { Vec::new() } else { std::fs::read(&path).map_err(io(&path))? };
        let mut recovery = None;
        let good = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if good < bytes.len() {
            let cut = (bytes.len() - good) as u64;
            let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
            f.set_len(good as u64).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            bytes.truncate(good);
            recovery = Some(Recovery { cut_bytes: cut });
        }
        let head = std::fs::read(dir.join(HEAD_FILE)).ok();
        let report = verify_bytes(&bytes, head.as_deref(), &key.verifying_key());
        if let Some((line, why)) = report.first_bad {
            return Err(LedgerError::Refused { line, reason: why });
        }
        let (mut next_seq, mut prev_hash, mut last_times) = (0u64, GENESIS.to_string(), None);
        let mut cases = HashMap::new();
        for (i, line) in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let r: Record = serde_json::from_slice(line)
                .map_err(|e| LedgerError::Bad { line: i + 1, reason: format!("not a record: {e}") })?;
            if r.core.seq != next_seq || r.core.prev != prev_hash {
                return Err(LedgerError::Bad {
                    line: i + 1,
                    reason: "breaks the chain: run `crlm ledger verify` and call support".into(),
                });
            }
            next_seq += 1;
            prev_hash = sha256_hex(line);
            if let Some(case_ref) = r.case().map(|c| c.case_ref) {
                cases.insert(case_ref.to_string(), (r.core.seq, prev_hash.clone()));
            }
            let wall =
                chrono::DateTime::parse_from_rfc3339(&r.core.wall_time).map(|t| t.timestamp_micros() as f64 / 1e6);
            last_times = wall.ok().map(|w| (w, r.core.mono_ns, r.core.boot_id.clone()));
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))?;
        if created {
            fsutil::sync_dir(dir).map_err(io(dir))?;
        }
        let key_id = key_id(&key.verifying_key());
        let ledger =
            Ledger { head_path: dir.join(HEAD_FILE), path, file, key, key_id, next_seq, prev_hash, last_times, cases };
        Ok((ledger, recovery))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Records in the ledger.
    pub fn len(&self) -> u64 {
        self.next_seq
    }
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }
    /// The device key's id (what every record names in `key_id`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    /// The newest record's sequence number and hash.
    pub fn head(&self) -> Option<Head> {
        (self.next_seq > 0).then(|| Head {
            format: LEDGER_FORMAT,
            seq: self.next_seq - 1,
            hash: self.prev_hash.clone(),
        })
    }

    /// The record already locked for a case (`body.case_ref`), as (sequence number, hash).
    pub fn find_case(&self, case_ref: &str) -> Option<(u64, String)> {
        self.cases.get(case_ref).cloned()
    }

    /// Append one record; durable when this returns. A wall-clock jump since the previous record
    /// (same boot) is recorded first, as its own record.
    pub fn append(&mut self, body: &RecordBody) -> Result<Record, LedgerError> {
        let (kind, body) = (body.kind(), body.to_value()?);
        let now = chrono::Utc::now();
        let (wall, mono, boot) = (now.timestamp_micros() as f64 / 1e6, boottime_ns(), boot_id());
        if let Some((last_wall, last_mono, last_boot)) = self.last_times.clone()
            && last_boot == boot
            && mono >= last_mono
        {
            let drift = (wall - last_wall) - (mono - last_mono) as f64 / 1e9;
            if drift.abs() > CLOCK_JUMP_SECONDS {
                let jump =
                    RecordBody::ClockJump(ClockJump { wall_clock_step_seconds: (drift * 1000.0).round() / 1000.0 });
                self.write(now, mono, &boot, RecordKind::ClockJump, jump.to_value()?)?;
            }
        }
        self.write(now, mono, &boot, kind, body)
    }

    fn write(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        mono: u64,
        boot: &str,
        kind: RecordKind,
        body: serde_json::Value,
    ) -> Result<Record, LedgerError> {
        let core = RecordCore {
            format: LEDGER_FORMAT,
            seq: self.next_seq,
            prev: self.prev_hash.clone(),
            kind,
            wall_time: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            mono_ns: mono,
            boot_id: boot.to_string(),
            key_id: self.key_id.clone(),
            body,
        };
        let signed = serde_json::to_vec(&core).unwrap_or_default();
        let sig = hex::encode(self.key.sign(&signed).to_bytes());
        let record = Record { core, sig };
        let mut line = line_of(&record);
        line.push(b'\n');
        // One write on an O_APPEND file: a crash leaves either nothing or a prefix of this line,
        // which `open` cuts off.
        self.file.write_all(&line).map_err(io(&self.path))?;
        self.file.sync_all().map_err(io(&self.path))?;
        self.prev_hash = sha256_hex(&line[..line.len() - 1]);
        self.next_seq += 1;
        self.last_times = Some((now.timestamp_micros() as f64 / 1e6, mono, boot.to_string()));
        if let Some(case_ref) = record.case().map(|c| c.case_ref) {
            self.cases.insert(case_ref.to_string(), (record.core.seq, self.prev_hash.clone()));
        }
        let head = Head { format: LEDGER_FORMAT, seq: record.core.seq, hash: self.prev_hash.clone() };
        let head_bytes = serde_json::to_vec(&head).unwrap_or_default();
        fsutil::write_atomic(&self.head_path, &head_bytes, 0o600).map_err(io(&self.head_path))?;
        Ok(record)
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    /// 1-based line of the first bad record, and why.
    pub first_bad: Option<(usize, String)>,
    pub head_seq: Option<u64>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Check the ledger in `dir`: canonical form, chain, sequence, signatures (with `public`), head.
pub fn verify(dir: &Path, public: &VerifyingKey) -> Result<VerifyReport, LedgerError> {
    let path = dir.join(LEDGER_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let head = std::fs::read(dir.join(HEAD_FILE)).ok();
    Ok(verify_bytes(&bytes, head.as_deref(), public))
}

/// [`verify`] on the file's bytes and the head file's bytes (if there is one).
pub fn verify_bytes(bytes: &[u8], head_bytes: Option<&[u8]>, public: &VerifyingKey) -> VerifyReport {
    let head: Option<Head> = head_bytes.and_then(|b| serde_json::from_slice(b).ok());
    if head_bytes.is_some() && head.is_none() {
        return VerifyReport { records: 0, first_bad: Some((0, format!("{HEAD_FILE} is damaged"))), head_seq: None };
    }
    if let Some(h) = head.as_ref().filter(|h| h.format != LEDGER_FORMAT) {
        let reason = format!("{HEAD_FILE} has format {}, this build writes {LEDGER_FORMAT}", h.format);
        return VerifyReport { records: 0, first_bad: Some((0, reason)), head_seq: Some(h.seq) };
    }
    let mut report = VerifyReport { records: 0, first_bad: None, head_seq: head.as_ref().map(|h| h.seq) };
    let want_key = key_id(public);
    let (mut seq, mut prev) = (0u64, GENESIS.to_string());
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let terminated = lines.last().is_some_and(|l| l.is_empty());
    if terminated {
        lines.pop();
    }
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let bad = |why: String| Some((i + 1, why));
        if i + 1 == n && !terminated {
            report.first_bad = bad("the last record is not terminated (torn write or edited)".into());
            break;
        }
        let r: Record = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                report.first_bad = bad(format!("not a record: {e}"));
                break;
            }
        };
        if line_of(&r) != line {
            report.first_bad = bad("not in canonical form (edited)".into());
            break;
        }
        if r.core.format != LEDGER_FORMAT {
            report.first_bad = bad(format!("format {} is not {LEDGER_FORMAT}", r.core.format));
            break;
        }
        if r.core.seq != seq {
            report.first_bad =
                bad(format!("sequence {} where {seq} was expected (removed, inserted or reordered)", r.core.seq));
            break;
        }
        if r.core.prev != prev {
            report.first_bad =
                bad("previous-record hash does not match (a record before it was changed or removed)".into());
            break;
        }
        if r.core.key_id != want_key {
            report.first_bad = bad(format!("signed by key {} not {want_key}", r.core.key_id));
            break;
        }
        if !record_signature_ok(&r, public) {
            report.first_bad = bad("signature does not verify (changed)".into());
            break;
        }
        prev = sha256_hex(line);
        seq += 1;
        report.records = seq;
    }
    if report.first_bad.is_none()
        && let Some(h) = &head
    {
        if h.seq >= seq {
            report.first_bad = Some((
                seq as usize + 1,
                format!("the head names record {} but the file ends at {seq} records (records removed)", h.seq),
            ));
        } else if h.seq + 1 == seq && h.hash != prev {
            report.first_bad = Some((seq as usize, "the last record differs from the one the head names".into()));
        }
    }
    report
}

/// Every complete record of the ledger in `dir` with its hash, in order. Only the form is
/// checked here; [`verify`] checks the chain and signatures.
pub fn read_records(dir: &Path) -> Result<Vec<(Record, String)>, LedgerError> {
    let path = dir.join(LEDGER_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: Record = serde_json::from_slice(line)
            .map_err(|e| LedgerError::Bad { line: i + 1, reason: format!("not a record: {e}") })?;
        out.push((r, sha256_hex(line)));
    }
    Ok(out)
}

/// One record by sequence number.
pub fn read_record(dir: &Path, seq: u64) -> Result<Option<(Record, String)>, LedgerError> {
    Ok(read_records(dir)?.into_iter().find(|(r, _)| r.core.seq == seq))
}

/// Is one record signed by `public` (form and signature only, not its place in a chain)?
pub fn record_signature_ok(r: &Record, public: &VerifyingKey) -> bool {
    r.core.key_id == key_id(public)
        && hex::decode(&r.sig).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).is_some_and(|b| {
            public.verify(&serde_json::to_vec(&r.core).unwrap_or_default(), &Signature::from_bytes(&b)).is_ok()
        })
}

/// A public key file (64 hex digits), such as the exported `device.pub`.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, LedgerError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    signing::parse_public_key(&text).map_err(|e| LedgerError::Key(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crlm_models::cohort::Rng;

    fn ledger_with(n: u64) -> (tempfile::TempDir, VerifyingKey) {
        let d = tempfile::tempdir().unwrap();
        let key = device_key(&d.path().join("keys")).unwrap();
        let public = key.verifying_key();
        let (mut l, rec) = Ledger::open(&d.path().join("ledger"), key).unwrap();
        assert!(rec.is_none());
        for i in 0..n {
            l.append(&RecordBody::Prediction(CaseRecord::example(&format!("C-{i:04}"), 0.1 * (i % 10) as f64)))
                .unwrap();
        }
        (d, public)
    }

    fn files(d: &Path) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(d.join("ledger").join(LEDGER_FILE)).unwrap(),
            std::fs::read(d.join("ledger").join(HEAD_FILE)).unwrap(),
        )
    }

    #[test]
    fn appended_records_verify_and_reopening_continues_the_chain() {
        let (d, public) = ledger_with(5);
        let key = device_key(&d.path().join("keys")).unwrap();
        let (mut l, _) = Ledger::open(&d.path().join("ledger"), key).unwrap();
        assert_eq!(l.len(), 5);
        let mut refused = CaseRecord::example("C-0005", 0.0);
        (refused.status, refused.outputs, refused.refusal) = (CaseStatus::Refused, None, Some("clinical only".into()));
        l.append(&RecordBody::Refusal(refused)).unwrap();
        let r = verify(&d.path().join("ledger"), &public).unwrap();
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.records, 6);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.path().join("keys/device.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn ten_thousand_single_byte_mutations_are_all_caught() {
        let (d, public) = ledger_with(12);
        let (bytes, head) = files(d.path());
        assert!(verify_bytes(&bytes, Some(&head), &public).ok());
        let mut rng = Rng::new(42);
        for _ in 0..10_000 {
            let mut m = bytes.clone();
            let i = (rng.next_u64() % m.len() as u64) as usize;
            let delta = 1 + (rng.next_u64() % 255) as u8;
            m[i] = m[i].wrapping_add(delta);
            let r = verify_bytes(&m, Some(&head), &public);
            assert!(!r.ok(), "mutation at byte {i} (+{delta}) verified");
        }
    }

    #[test]
    fn deleted_and_reordered_records_are_caught_and_named() {
        let (d, public) = ledger_with(8);
        let (bytes, head) = files(d.path());
        let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
        for k in 0..lines.len() {
            let without: Vec<u8> =
                lines.iter().enumerate().filter(|(i, _)| *i != k).flat_map(|(_, l)| l.to_vec()).collect();
            let r = verify_bytes(&without, Some(&head), &public);
            assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(k + 1), "deleting record {k}: {r:?}");
        }
        for k in 0..lines.len() - 1 {
            let mut v = lines.clone();
            v.swap(k, k + 1);
            let r = verify_bytes(&v.concat(), Some(&head), &public);
            assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(k + 1), "swapping {k} and {}: {r:?}", k + 1);
        }
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert!(!verify_bytes(&bytes, Some(&head), &other).ok(), "another device's key must not verify");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_at_start_up_and_nothing_before_it_is_lost() {
        let (d, public) = ledger_with(4);
        let path = d.path().join("ledger").join(LEDGER_FILE);
        let before = std::fs::read(&path).unwrap();
        let mut torn = before.clone();
        torn.extend_from_slice(&before[..40]);
        std::fs::write(&path, &torn).unwrap();
        let key = device_key(&d.path().join("keys")).unwrap();
        let (mut l, rec) = Ledger::open(&d.path().join("ledger"), key).unwrap();
        assert_eq!(rec, Some(Recovery { cut_bytes: 40 }));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        l.append(&RecordBody::Recovery(RecoveryNote { torn_bytes_cut: 40 })).unwrap();
        let r = verify(&d.path().join("ledger"), &public).unwrap();
        assert!(r.ok() && r.records == 5, "{r:?}");
    }
}

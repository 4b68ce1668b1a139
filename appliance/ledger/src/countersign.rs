//! Countersignatures: the central collector's Ed25519 signature over a ledger chain head.
//!
//! The device's clock alone proves nothing to an auditor. When the study office's collector
//! receives a result it signs the box's chain head `(device key id, seq, hash)` with the time it
//! received it; the box keeps these next to its ledger (`countersignatures.jsonl`). A valid
//! countersignature of record N proves that records 0..=N existed, unchanged, no later than the
//! collector's time, because each record's hash covers every record before it.

use super::{Head, LedgerError, Record, io};
use crlm_core::fsutil;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const COUNTERSIGN_FILE: &str = "countersignatures.jsonl";
pub const COUNTERSIGN_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Countersignature {
    pub format: u32,
    /// The box whose ledger is countersigned (its device key id).
    pub device_key_id: String,
    pub seq: u64,
    /// The hash of record `seq` (the chain head the collector saw).
    pub hash: String,
    /// The collector's UTC time when it received that head (RFC 3339).
    pub received_at: String,
    pub collector_key_id: String,
    /// Ed25519 over [`message`], hex.
    pub sig: String,
}

/// The bytes a collector signs: a fixed prefix (so the signature can mean nothing else) and the
/// fields, one per line.
pub fn message(device_key_id: &str, seq: u64, hash: &str, received_at: &str) -> Vec<u8> {
    format!("crlm-ledger-countersignature-v1\n{device_key_id}\n{seq}\n{hash}\n{received_at}\n").into_bytes()
}

/// Countersign a box's chain head (the collector's side).
pub fn countersign(
    collector: &SigningKey,
    device_key_id: &str,
    head: &Head,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Countersignature {
    let received_at = received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sig = collector.sign(&message(device_key_id, head.seq, &head.hash, &received_at));
    Countersignature {
        format: COUNTERSIGN_FORMAT,
        device_key_id: device_key_id.to_string(),
        seq: head.seq,
        hash: head.hash.clone(),
        received_at,
        collector_key_id: super::key_id(&collector.verifying_key()),
        sig: hex::encode(sig.to_bytes()),
    }
}

impl Countersignature {
    /// Does the signature verify with `key`?
    pub fn verifies_with(&self, key: &VerifyingKey) -> bool {
        super::key_id(key) == self.collector_key_id
            && hex::decode(&self.sig).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).is_some_and(|b| {
                key.verify(
                    &message(&self.device_key_id, self.seq, &self.hash, &self.received_at),
                    &Signature::from_bytes(&b),
                )
                .is_ok()
            })
    }
}

/// Keep a countersignature beside the ledger in `dir` (appended, fsynced). The caller checks it
/// first with [`Countersignature::verifies_with`] when it knows the collector's key.
pub fn store(dir: &Path, cs: &Countersignature) -> Result<(), LedgerError> {
    let path = dir.join(COUNTERSIGN_FILE);
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))?;
    let mut line = serde_json::to_vec(cs).unwrap_or_default();
    line.push(b'\n');
    f.write_all(&line).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    if created {
        fsutil::sync_dir(dir).map_err(io(dir))?;
    }
    Ok(())
}

/// What the countersignatures beside a ledger prove.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ProofReport {
    pub countersignatures: usize,
    /// Countersignatures by a trusted collector that match the ledger.
    pub valid: usize,
    /// The highest record whose lock time a second party proves: (seq, received_at, collector).
    pub proven_up_to: Option<(u64, String, String)>,
    /// Countersignatures that contradict the ledger (a record changed after it was countersigned).
    pub contradictions: Vec<String>,
    /// Countersignatures not checked (unknown collector key, another device, unreadable).
    pub unchecked: Vec<String>,
}

/// Check the countersignatures in `dir` against the ledger's records and the trusted collectors.
pub fn check(
    dir: &Path,
    records: &[(Record, String)],
    device_key_id: &str,
    collectors: &[VerifyingKey],
) -> Result<ProofReport, LedgerError> {
    let path = dir.join(COUNTERSIGN_FILE);
    let mut report = ProofReport::default();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io(&path)(e)),
    };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        report.countersignatures += 1;
        let Ok(cs) = serde_json::from_str::<Countersignature>(line) else {
            report.unchecked.push(format!("line {}: not a countersignature (a torn write?)", i + 1));
            continue;
        };
        if cs.device_key_id != device_key_id {
            report.unchecked.push(format!("line {}: for device key {}, not this ledger's", i + 1, cs.device_key_id));
            continue;
        }
        let Some(key) = collectors.iter().find(|k| super::key_id(k) == cs.collector_key_id) else {
            report.unchecked.push(format!("line {}: collector key {} is not trusted here", i + 1, cs.collector_key_id));
            continue;
        };
        if !cs.verifies_with(key) {
            report.contradictions.push(format!("line {}: the collector's signature does not verify", i + 1));
            continue;
        }
        match records.get(cs.seq as usize) {
            Some((_, hash)) if *hash == cs.hash => {
                report.valid += 1;
                if report.proven_up_to.as_ref().is_none_or(|(s, _, _)| cs.seq > *s) {
                    report.proven_up_to = Some((cs.seq, cs.received_at.clone(), cs.collector_key_id.clone()));
                }
            }
            Some(_) => report.contradictions.push(format!(
                "line {}: record {} differs from the one the collector countersigned at {}",
                i + 1,
                cs.seq,
                cs.received_at
            )),
            None => report.contradictions.push(format!(
                "line {}: the collector countersigned record {} but the ledger ends before it (records removed)",
                i + 1,
                cs.seq
            )),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ledger, device_key, read_records};

    #[test]
    fn a_collectors_countersignature_proves_the_head_and_catches_later_edits() {
        let d = tempfile::tempdir().unwrap();
        let key = device_key(&d.path().join("keys")).unwrap();
        let dir = d.path().join("ledger");
        let (mut l, _) = Ledger::open(&dir, key).unwrap();
        for i in 0..3 {
            l.append(&crate::RecordBody::Prediction(crate::CaseRecord::example(&format!("c{i}"), 0.1))).unwrap();
        }
        let collector = SigningKey::from_bytes(&[9u8; 32]);
        let stranger = SigningKey::from_bytes(&[3u8; 32]);
        let head = l.head().unwrap();
        let cs = countersign(&collector, l.key_id(), &head, chrono::Utc::now());
        assert!(cs.verifies_with(&collector.verifying_key()));
        assert!(!cs.verifies_with(&stranger.verifying_key()));
        store(&dir, &cs).unwrap();
        let records = read_records(&dir).unwrap();
        let r = check(&dir, &records, l.key_id(), &[collector.verifying_key()]).unwrap();
        assert_eq!((r.valid, r.proven_up_to.as_ref().map(|p| p.0)), (1, Some(2)), "{r:?}");
        assert!(r.contradictions.is_empty());
        // Without the collector's key nothing is proven, and it says why.
        let r = check(&dir, &records, l.key_id(), &[stranger.verifying_key()]).unwrap();
        assert_eq!((r.valid, r.unchecked.len()), (0, 1));
        // A ledger whose countersigned record was rewritten contradicts the countersignature.
        let mut forged = records.clone();
        forged[2].1 = "00".repeat(32);
        let r = check(&dir, &forged, l.key_id(), &[collector.verifying_key()]).unwrap();
        assert_eq!(r.contradictions.len(), 1, "{r:?}");
        // A tampered countersignature does not verify.
        let mut bad = cs.clone();
        bad.received_at = "2020-01-01T00:00:00.000Z".into();
        assert!(!bad.verifies_with(&collector.verifying_key()));
    }
}

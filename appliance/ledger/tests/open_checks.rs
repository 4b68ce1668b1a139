//! What `Ledger::open` accepts before anything may be appended (issue 21, defect 4: the service
//! opened a ledger whose last record failed its signature and locked a new record on top).

use crlm_ledger::{CaseRecord, HEAD_FILE, LEDGER_FILE, Ledger, LedgerError, RecordBody, device_key, verify};
use std::path::Path;

fn ledger_with(dir: &Path, n: usize) {
    let key = device_key(&dir.join("keys")).unwrap();
    let (mut l, _) = Ledger::open(&dir.join("ledger"), key).unwrap();
    for i in 0..n {
        l.append(&RecordBody::Prediction(CaseRecord::example(&format!("C-{i:04}"), 0.5))).unwrap();
    }
}

fn open(dir: &Path) -> Result<Ledger, LedgerError> {
    Ledger::open(&dir.join("ledger"), device_key(&dir.join("keys")).unwrap()).map(|(l, _)| l)
}

#[test]
fn a_ledger_whose_last_record_fails_its_signature_is_refused_and_not_extended() {
    let d = tempfile::tempdir().unwrap();
    ledger_with(d.path(), 40);
    let path = d.path().join("ledger").join(LEDGER_FILE);
    let bytes = std::fs::read(&path).unwrap();
    // One byte of the last record's body flipped (still a well-formed record).
    let last = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let at = last + bytes[last..].windows(5).position(|w| w == b"C-003").unwrap() + 4;
    let mut changed = bytes.clone();
    changed[at] = b'8';
    std::fs::write(&path, &changed).unwrap();
    match open(d.path()) {
        Err(LedgerError::Refused { line, reason }) => {
            assert_eq!(line, 40);
            assert!(reason.contains("signature does not verify"), "{reason}");
        }
        other => panic!("opened: {:?}", other.map(|l| l.len())),
    }
    assert_eq!(std::fs::read(&path).unwrap(), changed, "nothing was appended");
}

#[test]
fn a_ledger_cut_behind_its_head_or_signed_by_another_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    ledger_with(d.path(), 5);
    let path = d.path().join("ledger").join(LEDGER_FILE);
    let bytes = std::fs::read(&path).unwrap();
    // The last whole record removed: the head still names record 4.
    let last = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    std::fs::write(&path, &bytes[..last]).unwrap();
    assert!(matches!(open(d.path()), Err(LedgerError::Refused { .. })));
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(open(d.path()).unwrap().len(), 5);
    // Another device key (a replaced key file) cannot extend this ledger.
    let other = tempfile::tempdir().unwrap();
    let key = device_key(other.path()).unwrap();
    let r = Ledger::open(&d.path().join("ledger"), key);
    assert!(matches!(r, Err(LedgerError::Refused { line: 1, .. })), "{:?}", r.err());
    // A torn last record (a power cut mid-write) is still cut off and the rest accepted.
    let mut torn = bytes.clone();
    torn.extend_from_slice(b"{\"format\":1,\"seq\":5,");
    std::fs::write(&path, &torn).unwrap();
    let (l, recovery) = Ledger::open(&d.path().join("ledger"), device_key(&d.path().join("keys")).unwrap()).unwrap();
    assert_eq!((l.len(), recovery.map(|r| r.cut_bytes)), (5, Some(20)));
    let public = crlm_ledger::read_public_key(&d.path().join("keys/device.pub")).unwrap();
    assert!(verify(&d.path().join("ledger"), &public).unwrap().ok());
    assert!(d.path().join("ledger").join(HEAD_FILE).exists());
}

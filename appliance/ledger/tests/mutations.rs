//! The ledger-mutation census (docs/RELIABILITY.md): every class of change an attacker with the
//! state disk can make to `ledger.jsonl` and `ledger.head`, each tried at every record (or a
//! fixed random sample of bytes), and what `verify_bytes` (the check the service runs at
//! opening and `crlm ledger verify` runs) says. Every class is caught on the box except one:
//! a tail cut together with the head file of that earlier moment, which *is* an earlier genuine
//! ledger (so is the same cut with the head file deleted). Only a second party holding a later record exposes it: the study office's collector,
//! whose countersignature of a later head the box cannot produce (docs/LEDGER.md).

use crlm_ledger::{CaseRecord, HEAD_FILE, LEDGER_FILE, Ledger, RecordBody, device_key, verify_bytes};
use ed25519_dalek::VerifyingKey;
use std::path::Path;

const RECORDS: usize = 24;

/// The bytes of `ledger.jsonl` and of `ledger.head` at one moment.
type Snapshot = (Vec<u8>, Vec<u8>);

/// The ledger file and its head file after each of `RECORDS` appends, under `dir`'s key.
fn history(dir: &Path) -> (Vec<Snapshot>, VerifyingKey) {
    let key = device_key(&dir.join("keys")).unwrap();
    let public = key.verifying_key();
    let (mut l, _) = Ledger::open(&dir.join("ledger"), key).unwrap();
    let mut states = Vec::new();
    for i in 0..RECORDS {
        l.append(&RecordBody::Prediction(CaseRecord::example(&format!("C-{i:04}"), 0.25 + i as f64 / 100.0))).unwrap();
        states.push((
            std::fs::read(dir.join("ledger").join(LEDGER_FILE)).unwrap(),
            std::fs::read(dir.join("ledger").join(HEAD_FILE)).unwrap(),
        ));
    }
    (states, public)
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

struct Census {
    rows: Vec<(&'static str, usize, usize)>,
}

impl Census {
    fn class(
        &mut self,
        name: &'static str,
        cases: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
        public: &VerifyingKey,
    ) {
        let (mut tried, mut caught) = (0, 0);
        for (bytes, head) in cases {
            tried += 1;
            if !verify_bytes(&bytes, head.as_deref(), public).ok() {
                caught += 1;
            }
        }
        self.rows.push((name, tried, caught));
    }
}

#[test]
fn every_ledger_mutation_is_caught_except_a_rewind_to_an_earlier_genuine_state() {
    let d = tempfile::tempdir().unwrap();
    let (states, public) = history(d.path());
    let (full, head) = states.last().cloned().unwrap();
    assert!(verify_bytes(&full, Some(&head), &public).ok());
    let recs = lines(&full);
    assert_eq!(recs.len(), RECORDS);
    // The same cases signed by another key (an attacker's own box), for substitutions.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_states, _) = history(other_dir.path());
    let other = lines(&other_states.last().unwrap().0);
    let join = |ls: &[Vec<u8>]| ls.concat();
    let h = || Some(head.clone());
    let mut census = Census { rows: Vec::new() };

    // A fixed sample of single-byte changes anywhere in the file (xorshift, seed 21).
    let mut x: u64 = 21;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let flips: Vec<_> = (0..2000)
        .map(|_| {
            let mut m = full.clone();
            let at = (next() % m.len() as u64) as usize;
            m[at] = m[at].wrapping_add(1 + (next() % 255) as u8);
            (m, h())
        })
        .collect();
    census.class("one byte changed anywhere (2,000 random)", flips, &public);
    census.class(
        "a record deleted",
        (0..RECORDS).map(|k| {
            let mut ls = recs.clone();
            ls.remove(k);
            (join(&ls), h())
        }),
        &public,
    );
    census.class(
        "two neighbouring records swapped",
        (0..RECORDS - 1).map(|k| {
            let mut ls = recs.clone();
            ls.swap(k, k + 1);
            (join(&ls), h())
        }),
        &public,
    );
    census.class(
        "a record duplicated",
        (0..RECORDS).map(|k| {
            let mut ls = recs.clone();
            ls.insert(k, recs[k].clone());
            (join(&ls), h())
        }),
        &public,
    );
    census.class(
        "a record replaced by one another key signed",
        (0..RECORDS).map(|k| {
            let mut ls = recs.clone();
            ls[k] = other[k].clone();
            (join(&ls), h())
        }),
        &public,
    );
    census.class("the whole file replaced by another key's ledger", std::iter::once((join(&other), h())), &public);
    census.class(
        "a record appended that another key signed",
        std::iter::once({
            let mut ls = recs.clone();
            ls.push(other[RECORDS - 1].clone());
            (join(&ls), h())
        }),
        &public,
    );
    census.class("tail cut, head file left as it was", (0..RECORDS - 1).map(|k| (states[k].0.clone(), h())), &public);
    census.class(
        "head file changed (one byte)",
        (0..head.len()).filter(|i| head[*i] != b'\n').map(|i| {
            let mut m = head.clone();
            m[i] = m[i].wrapping_add(1);
            (full.clone(), Some(m))
        }),
        &public,
    );
    census.class(
        "tail cut with the head file of that moment (a rewind)",
        (0..RECORDS - 1).map(|k| (states[k].0.clone(), Some(states[k].1.clone()))),
        &public,
    );
    census.class(
        "tail cut, head file deleted (a rewind without a head)",
        (0..RECORDS - 1).map(|k| (states[k].0.clone(), None)),
        &public,
    );
    println!("| mutation class | tried | caught by the box |");
    println!("|---|---:|---:|");
    for (name, tried, caught) in &census.rows {
        println!("| {name} | {tried} | {caught} |");
    }
    let (rest, rewinds) = census.rows.split_at(census.rows.len() - 2);
    for (name, tried, caught) in rest {
        assert_eq!(tried, caught, "{name}: {} of {tried} verified", tried - caught);
    }
    // A rewind is an earlier genuine ledger (the head file is not signed: it is a tripwire for a
    // torn or truncated file, and whoever can cut the file can rewrite or delete it too).
    // Nothing on the box can tell; the collector's countersignatures of later heads, held at the
    // office, are what expose it.
    for (name, _, caught) in rewinds {
        assert_eq!(*caught, 0, "{name}: caught on the box alone now; say so in docs/RELIABILITY.md");
    }
}

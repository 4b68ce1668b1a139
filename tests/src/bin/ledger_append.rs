//! Test helper for the kill -9 loop: opens the ledger in `STATE/ledger` (recovering a torn tail),
//! then appends records forever, printing `<seq> <id>` once each append has returned, i.e. once
//! the record is durable. The test kills it at random and checks every printed record survived.

use crlm_ledger::{CaseRecord, Ledger, RecordBody, RecoveryNote, device_key};
use std::io::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let state = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: ledger_append STATE ROUND"))?);
    let round = args.next().unwrap_or_default();
    let key = device_key(&state.join("keys"))?;
    let (mut ledger, recovery) = Ledger::open(&state.join("ledger"), key)?;
    if let Some(r) = recovery {
        ledger.append(&RecordBody::Recovery(RecoveryNote { torn_bytes_cut: r.cut_bytes }))?;
    }
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let id = format!("{round}-{n}");
        let rec = ledger.append(&RecordBody::Prediction(CaseRecord::example(&id, 0.5)))?;
        writeln!(out, "{} {id}", rec.core.seq)?;
        out.flush()?;
    }
    Ok(())
}

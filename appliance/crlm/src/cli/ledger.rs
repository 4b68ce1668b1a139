use super::*;

#[derive(Subcommand)]
pub enum LedgerAction {
    /// Check every record (form, sequence, chain, signature) and the head; exit 1 naming the first bad one.
    Verify {
        /// Ledger folder (default: <state.path>/ledger).
        path: Option<PathBuf>,
        /// Device public key file (default: <state.path>/keys/device.pub).
        #[arg(long)]
        key: Option<PathBuf>,
        /// A collector's public key file whose countersignatures count (besides ledger.collector_keys).
        #[arg(long = "collector-key")]
        collector_keys: Vec<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One row per locked prediction or refusal for the statisticians (the ledger is verified first).
    Export {
        /// Ledger folder (default: <state.path>/ledger).
        path: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device public key file (default: <state.path>/keys/device.pub).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print record N (0-based sequence number) as JSON.
    Show {
        seq: u64,
        path: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn run(action: LedgerAction) -> anyhow::Result<ExitCode> {
    use crlm_ledger as ledger;
    let state_dir = |config: Option<PathBuf>| load_config(config_path(config).as_deref()).map(|c| c.state.path);
    match action {
        LedgerAction::Verify { path, key, collector_keys, config } => {
            let cfg = match load_config(config_path(config).as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let state = cfg.state.path.clone();
            let dir = path.unwrap_or_else(|| state.join("ledger"));
            let public = ledger::read_public_key(&key.unwrap_or_else(|| state.join("keys").join("device.pub")))?;
            let r = ledger::verify(&dir, &public)?;
            match &r.first_bad {
                None => {
                    println!(
                        "{}: OK, {} records, chain and signatures intact (head at {:?})",
                        dir.display(),
                        r.records,
                        r.head_seq
                    );
                    let mut keys = Vec::new();
                    for k in cfg.mqtt.ack_keys(&cfg.ledger).chain(collector_keys.iter().map(PathBuf::as_path)) {
                        keys.push(ledger::read_public_key(k)?);
                    }
                    let records = ledger::read_records(&dir)?;
                    let proof = ledger::countersign::check(&dir, &records, &ledger::key_id(&public), &keys)?;
                    match &proof.proven_up_to {
                        Some((seq, at, by)) => println!(
                            "lock time proven by a second party up to record {seq}: collector {by} countersigned it at {at} ({} of {} countersignatures valid)",
                            proof.valid, proof.countersignatures
                        ),
                        None if proof.countersignatures == 0 => println!(
                            "no collector countersignatures yet: the lock times rest on this device's clock alone"
                        ),
                        None => println!("no countersignature could be checked ({} present)", proof.countersignatures),
                    }
                    for u in &proof.unchecked {
                        println!("  not checked: {u}");
                    }
                    if !proof.contradictions.is_empty() {
                        for c in &proof.contradictions {
                            println!("  CONTRADICTION: {c}");
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some((line, why)) => {
                    println!(
                        "{}: BAD at record {} (line {line}): {why}; {} records before it verify",
                        dir.display(),
                        line.saturating_sub(1),
                        r.records
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        LedgerAction::Export { path, format, out, key, config } => {
            let state = match state_dir(config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let dir = path.unwrap_or_else(|| state.join("ledger"));
            let public = ledger::read_public_key(&key.unwrap_or_else(|| state.join("keys").join("device.pub")))?;
            let r = ledger::verify(&dir, &public)?;
            if let Some((line, why)) = &r.first_bad {
                eprintln!("crlm ledger export: refused, the ledger does not verify at line {line}: {why}");
                return Ok(ExitCode::FAILURE);
            }
            let rows = ledger::export::rows(&ledger::read_records(&dir)?);
            let bytes = match format {
                ExportFormat::Csv => ledger::export::to_csv(&rows)?,
                ExportFormat::Json => {
                    serde_json::to_vec_pretty(&ledger::export::to_json(&rows, &ledger::key_id(&public)))?
                }
            };
            match out {
                Some(p) => {
                    std::fs::write(&p, &bytes).with_context(|| p.display().to_string())?;
                    eprintln!("{} rows written to {}", rows.len(), p.display());
                }
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerAction::Show { seq, path, config } => {
            let state = match state_dir(config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let file = path.unwrap_or_else(|| state.join("ledger")).join(ledger::LEDGER_FILE);
            let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let line = text
                .lines()
                .nth(seq as usize)
                .ok_or_else(|| anyhow::anyhow!("no record {seq} in {}", file.display()))?;
            let v: serde_json::Value = serde_json::from_str(line)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

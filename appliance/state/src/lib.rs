//! Durable state: files and cases in SQLite in the state directory (never on the share).
//!
//! WAL journal with `synchronous=FULL`: with NORMAL a committed transaction can roll back after
//! power loss. Every ingest step that changes state is one transaction, so a kill -9 at any point
//! leaves either the old or the new state, and a restarted service resumes from it.
//! The schema is versioned in `meta.schema_version`; a newer database is refused.
//!
//! # In the data path
//!
//! - Owns: the SQLite state database: schema, migrations, case rows.
//! - Inputs: transactions from ingest, the worker, the outbox and the panel feed.
//! - Outputs: `StateDb`, `CaseRow` (with its typed `CaseModalities`).
//! - Place: share -> ingest -> **state** -> worker; resumes everything after a crash.
//! - Depends on: crlm-core.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

mod cases;
mod modalities;
mod outbox;
pub use cases::*;
pub use modalities::*;
pub use outbox::*;
use std::path::Path;

pub const SCHEMA_VERSION: i64 = 2;

/// Columns added in schema 2 (predictions locked in the ledger); a version-1 database gains them.
const CASES_V2_COLUMNS: [(&str, &str); 4] =
    [("ledger_seq", "INTEGER"), ("record_hash", "TEXT"), ("outputs_ms", "INTEGER"), ("failure", "TEXT")];

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases(
    id INTEGER PRIMARY KEY,
    case_key TEXT NOT NULL UNIQUE,
    pseudonym TEXT NOT NULL,
    patient_id TEXT,
    state TEXT NOT NULL,
    modalities TEXT NOT NULL DEFAULT '{}',
    reasons TEXT NOT NULL DEFAULT '[]',
    series_choice TEXT,
    clinical_hash TEXT,
    ready_marker INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    last_file_ms INTEGER NOT NULL,
    ledger_seq INTEGER,
    record_hash TEXT,
    outputs_ms INTEGER,
    failure TEXT
);
-- Starts of processing a case that have not ended (the process died mid-case): a case that
-- keeps taking the service down is failed instead of retried for ever. Added within schema 2
-- (a table an older build ignores).
CREATE TABLE IF NOT EXISTS attempts(
    case_id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    last_ms INTEGER NOT NULL
);
-- Multi-file slides (VMS, MRXS) by content: the hash of the index's and its files' hashes, in
-- the index's order (the ledger's slide hash). No one file of such a slide tells a re-export;
-- this does. Added within schema 2 (a table an older build ignores).
CREATE TABLE IF NOT EXISTS slide_sets(
    index_file INTEGER PRIMARY KEY REFERENCES files(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS slide_sets_content ON slide_sets(content);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    case_id INTEGER REFERENCES cases(id),
    details TEXT,
    problem TEXT,
    seen_ms INTEGER NOT NULL,
    UNIQUE(path, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
CREATE INDEX IF NOT EXISTS files_case ON files(case_id);
CREATE TABLE IF NOT EXISTS clinical_records(
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id),
    row INTEGER NOT NULL,
    patient_id TEXT NOT NULL,
    case_ref TEXT,
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS clinical_patient ON clinical_records(patient_id);
CREATE TABLE IF NOT EXISTS mqtt_streams(stream TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mqtt_outbox(
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE(stream, seq)
);
CREATE TABLE IF NOT EXISTS quarantine(
    id INTEGER PRIMARY KEY,
    file_id INTEGER REFERENCES files(id),
    case_id INTEGER REFERENCES cases(id),
    path TEXT,
    check_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    action TEXT NOT NULL,
    record_file TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database {path} has schema version {found}; this crlm reads up to {SCHEMA_VERSION}: upgrade crlm")]
    TooNew { path: String, found: i64 },
    #[error("cannot create state directory {0}: {1}")]
    Dir(String, std::io::Error),
}

/// A case's state, as `crlm cases` shows it and the database stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseState {
    /// Files are arriving.
    Waiting,
    /// Every required modality is present.
    Complete,
    /// A modality is missing after `cases.partial_after_seconds`, or `READY` came with one missing.
    Partial,
    /// The study protocol excludes the patient (locked as a refusal, keeps this state).
    Ineligible,
    /// Inconsistent (two patients in one folder, a clinical file naming another patient).
    Quarantined,
    /// Predicted and locked in the ledger.
    Predicted,
    /// Locked in the ledger as a refusal (the package forbids the modalities present, or the
    /// inputs could not be used).
    Refused,
    /// Processing failed for a reason outside the case (I/O, model); named in `failure`.
    Failed,
}

impl CaseState {
    pub const ALL: [CaseState; 8] = [
        CaseState::Waiting,
        CaseState::Complete,
        CaseState::Partial,
        CaseState::Ineligible,
        CaseState::Quarantined,
        CaseState::Predicted,
        CaseState::Refused,
        CaseState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseState::Waiting => "waiting",
            CaseState::Complete => "complete",
            CaseState::Partial => "partial",
            CaseState::Ineligible => "ineligible",
            CaseState::Quarantined => "quarantined",
            CaseState::Predicted => "predicted",
            CaseState::Refused => "refused",
            CaseState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CaseState> {
        CaseState::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for CaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl rusqlite::types::ToSql for CaseState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
    }
}

impl rusqlite::types::FromSql for CaseState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        CaseState::parse(s)
            .ok_or_else(|| rusqlite::types::FromSqlError::Other(format!("unknown case state `{s}`").into()))
    }
}

/// The state database. Its connection is private: every statement is a method here (reads) or
/// on [`Tx`] (writes that must be atomic), so the schema has one owner.
pub struct StateDb {
    conn: Connection,
}

/// A transaction: every write in it commits together or not at all ([`Tx::commit`]; dropped
/// without it, nothing is written).
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Tx<'_> {
    pub fn commit(self) -> Result<(), StateError> {
        Ok(self.tx.commit()?)
    }
}

/// One row of `crlm cases`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaseRow {
    #[serde(rename = "case")]
    pub pseudonym: String,
    pub state: CaseState,
    pub modalities: CaseModalities,
    pub reasons: Vec<String>,
    pub series_choice: Option<serde_json::Value>,
    pub files: i64,
    /// The ledger record that locked the case's prediction or refusal.
    pub ledger_seq: Option<i64>,
    /// The case's outputs are in the outbox.
    pub outputs_written: bool,
    /// Why processing failed (state `failed`).
    pub failure: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl CaseRow {
    /// Nothing more will happen to this case: locked with its outputs written, quarantined or failed.
    pub fn settled(&self) -> bool {
        match self.state {
            CaseState::Quarantined | CaseState::Failed => true,
            CaseState::Waiting => false,
            _ => self.ledger_seq.is_some() && self.outputs_written,
        }
    }
}

impl StateDb {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent() {
            crlm_core::fsutil::ensure_dir(dir, 0o750).map_err(|e| StateError::Dir(dir.display().to_string(), e))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        let found: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key='schema_version'", [], |r| r.get(0)).optional()?;
        match found.and_then(|v| v.parse::<i64>().ok()) {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StateError::TooNew { path: path.display().to_string(), found: v });
            }
            Some(v) if v < SCHEMA_VERSION => {
                let tx = conn.unchecked_transaction()?;
                let have: Vec<String> = tx
                    .prepare("SELECT name FROM pragma_table_info('cases')")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for (col, ty) in CASES_V2_COLUMNS {
                    if !have.iter().any(|h| h == col) {
                        tx.execute_batch(&format!("ALTER TABLE cases ADD COLUMN {col} {ty}"))?;
                    }
                }
                tx.execute("UPDATE meta SET value=?1 WHERE key='schema_version'", params![SCHEMA_VERSION.to_string()])?;
                tx.commit()?;
                tracing::info!(stage = "state", from = v, to = SCHEMA_VERSION, "state database upgraded");
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )?;
            }
        }
        Ok(StateDb { conn })
    }

    /// Open for reading only (`crlm cases` while the service runs).
    pub fn open_read_only(path: &Path) -> Result<Self, StateError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(StateDb { conn })
    }

    /// Begin a write transaction ([`Tx`]). IMMEDIATE: the write lock is taken at BEGIN (waiting
    /// up to the busy timeout for another connection's), so a transaction that reads before it
    /// writes (the outbox's next sequence number) cannot fail half-way because another
    /// connection wrote in between.
    pub fn begin(&self) -> Result<Tx<'_>, StateError> {
        Ok(Tx { tx: rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)? })
    }

    /// Has this exact file version (path, size, mtime) been handled already?
    pub fn file_known(&self, path: &str, size: u64, mtime_ns: i64) -> Result<bool, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM files WHERE path=?1 AND size=?2 AND mtime_ns=?3",
                params![path, size as i64, mtime_ns],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn cases(&self) -> Result<Vec<CaseRow>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT c.pseudonym, c.state, c.modalities, c.reasons, c.series_choice, c.created_ms, c.updated_ms,
                    (SELECT COUNT(*) FROM files f WHERE f.case_id = c.id), c.ledger_seq,
                    c.outputs_ms IS NOT NULL, c.failure
             FROM cases c ORDER BY c.created_ms, c.id",
        )?;
        let rows = st.query_map([], |r| {
            let modalities: String = r.get(2)?;
            let reasons: String = r.get(3)?;
            let series: Option<String> = r.get(4)?;
            Ok(CaseRow {
                pseudonym: r.get(0)?,
                state: r.get(1)?,
                modalities: CaseModalities::from_json(&modalities),
                reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                series_choice: series.and_then(|s| serde_json::from_str(&s).ok()),
                created_at: rfc3339(r.get(5)?),
                updated_at: rfc3339(r.get(6)?),
                files: r.get(7)?,
                ledger_seq: r.get(8)?,
                outputs_written: r.get(9)?,
                failure: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

//! Cases, their files, clinical records and quarantine rows: every statement on those tables.
//! Reads are methods of [`StateDb`]; writes that belong together are methods of [`Tx`].

use crate::{CaseModalities, CaseState, StateDb, StateError, Tx};
use rusqlite::{OptionalExtension, params};

/// A case still waiting for files (ingest re-evaluates these on every pass).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenCaseRow {
    pub id: i64,
    pub key: String,
    pub pseudonym: String,
    pub patient_id: Option<String>,
    pub created_ms: i64,
    pub last_file_ms: i64,
}

/// What the prediction worker reads of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkRow {
    pub id: i64,
    pub key: String,
    pub pseudonym: String,
    pub state: CaseState,
    pub reasons: Vec<String>,
    pub clinical_hash: Option<String>,
    pub ledger_seq: Option<i64>,
    /// The CT series choice recorded when the case closed (JSON, as `crlm cases` shows it).
    pub series_choice: Option<String>,
}

/// An accepted file version of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct FileVersion {
    pub path: String,
    pub size: i64,
    pub mtime_ns: i64,
    pub sha256: Option<String>,
}

/// A recent quarantine (the panel's problem screen).
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub check: String,
    pub reason: String,
    pub action: String,
    pub case: Option<String>,
}

/// A file that entered the database.
pub struct NewFile<'a> {
    pub path: &'a str,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: Option<&'a str>,
    pub kind: &'a str,
    pub details: Option<&'a str>,
}

/// A quarantine: the check that failed, why, what staff should do, and the reason file written.
pub struct Quarantined<'a> {
    pub check: &'a str,
    pub reason: &'a str,
    pub action: &'a str,
    pub record_file: &'a str,
}

/// What ingest records when a case closes.
pub struct Closing<'a> {
    pub state: CaseState,
    pub modalities: &'a CaseModalities,
    pub reasons: &'a [String],
    pub series_choice: &'a str,
    pub clinical_hash: Option<&'a str>,
    pub pseudonym: &'a str,
    pub patient_id: Option<&'a str>,
}

fn reasons_of(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

/// The newest row of a path in `files`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: i64,
    pub sha256: Option<String>,
    /// `accepted`, `duplicate` or `quarantined`.
    pub status: String,
    pub case_id: Option<i64>,
}

/// A file whose content another file already brought (`?6`: the case that brought it).
const INSERT_DUPLICATE: &str =
    "INSERT OR IGNORE INTO files(path, size, mtime_ns, sha256, kind, status, case_id, details, problem, seen_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, 'duplicate', ?6, ?7, 'identical content already received', ?8)";

impl StateDb {
    /// Whether a file with this content was accepted already: `Some(case)` if so (`Some(None)`:
    /// a loose file of no case).
    pub fn accepted_content(&self, sha256: &str) -> Result<Option<Option<i64>>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT case_id FROM files WHERE sha256=?1 AND status='accepted' LIMIT 1",
                params![sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Record a file whose content another file of `case_id` already brought.
    pub fn record_duplicate(&self, f: &NewFile<'_>, case_id: Option<i64>, now: i64) -> Result<(), StateError> {
        self.conn.execute(
            INSERT_DUPLICATE,
            params![f.path, f.size as i64, f.mtime_ns, f.sha256, f.kind, case_id, f.details, now],
        )?;
        Ok(())
    }

    /// The newest row of a path (its current version once the ingestor has taken it in).
    pub fn latest_file(&self, path: &str) -> Result<Option<FileRow>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, sha256, status, case_id FROM files WHERE path=?1 ORDER BY id DESC LIMIT 1",
                params![path],
                |r| Ok(FileRow { id: r.get(0)?, sha256: r.get(1)?, status: r.get(2)?, case_id: r.get(3)? }),
            )
            .optional()?)
    }

    /// The case that brought a multi-file slide with this content (see `slide_sets`), if any.
    pub fn slide_set_case(&self, content: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT case_id FROM slide_sets WHERE content=?1 ORDER BY index_file LIMIT 1",
                params![content],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Cases still waiting for files, oldest first.
    pub fn open_cases(&self) -> Result<Vec<OpenCaseRow>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT id, case_key, pseudonym, patient_id, created_ms, last_file_ms FROM cases WHERE state='waiting' ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(OpenCaseRow {
                id: r.get(0)?,
                key: r.get(1)?,
                pseudonym: r.get(2)?,
                patient_id: r.get(3)?,
                created_ms: r.get(4)?,
                last_file_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// (path, kind, details JSON) of a case's accepted files, by path.
    pub fn accepted_file_details(&self, case_id: i64) -> Result<Vec<(String, String, String)>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT path, kind, COALESCE(details, '{}') FROM files WHERE case_id=?1 AND status='accepted' ORDER BY path",
        )?;
        let rows = st.query_map(params![case_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A case's accepted file versions, by path.
    pub fn accepted_file_versions(&self, case_id: i64) -> Result<Vec<FileVersion>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT path, size, mtime_ns, sha256 FROM files WHERE case_id=?1 AND status='accepted' ORDER BY path",
        )?;
        let rows = st.query_map([case_id], |r| {
            Ok(FileVersion { path: r.get(0)?, size: r.get(1)?, mtime_ns: r.get(2)?, sha256: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// (record JSON, hash) of the clinical records in a folder case's accepted files.
    pub fn clinical_records_of_case(&self, case_id: i64) -> Result<Vec<(String, String)>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT c.record, c.hash FROM clinical_records c JOIN files f ON f.id=c.file_id
             WHERE f.case_id=?1 AND f.status='accepted' ORDER BY c.id",
        )?;
        let rows = st.query_map(params![case_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// (record JSON, hash) of the root clinical records naming `patient_id`.
    pub fn root_clinical_records(&self, patient_id: &str) -> Result<Vec<(String, String)>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT c.record, c.hash FROM clinical_records c JOIN files f ON f.id=c.file_id
             WHERE c.case_ref IS NULL AND f.status='accepted' AND c.patient_id=?1 ORDER BY c.id",
        )?;
        let rows = st.query_map(params![patient_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The clinical record (JSON) with this hash.
    pub fn clinical_record(&self, hash: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT record FROM clinical_records WHERE hash=?1 LIMIT 1", [hash], |r| r.get(0))
            .optional()?)
    }

    /// Keep a waiting case's live view current.
    pub fn update_waiting_case(
        &self,
        id: i64,
        modalities: &CaseModalities,
        series_choice: &str,
        pseudonym: &str,
        patient_id: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE cases SET modalities=?2, series_choice=?3, pseudonym=?4, patient_id=COALESCE(patient_id, ?5) WHERE id=?1",
            params![id, modalities.to_json(), series_choice, pseudonym, patient_id],
        )?;
        Ok(())
    }

    /// The reasons recorded on a case so far.
    pub fn case_reasons(&self, id: i64) -> Result<Vec<String>, StateError> {
        let json: String = self.conn.query_row("SELECT reasons FROM cases WHERE id=?1", params![id], |r| r.get(0))?;
        Ok(reasons_of(&json))
    }

    /// Count a start of processing case `id`, committed before the work begins, so a process
    /// that dies mid-case leaves it counted. Returns the starts without an end, this one included.
    pub fn begin_attempt(&self, id: i64, now: i64) -> Result<u32, StateError> {
        let n: i64 = self.conn.query_row(
            "INSERT INTO attempts(case_id, n, last_ms) VALUES(?1, 1, ?2)
             ON CONFLICT(case_id) DO UPDATE SET n = n + 1, last_ms = ?2 RETURNING n",
            params![id, now],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Processing case `id` ended (locked, refused or failed): its count starts again.
    pub fn end_attempt(&self, id: i64) -> Result<(), StateError> {
        self.conn.execute("DELETE FROM attempts WHERE case_id=?1", params![id])?;
        Ok(())
    }

    /// Cases the worker has to do: closed and not locked, or locked without their outputs.
    pub fn work_pending(&self) -> Result<Vec<i64>, StateError> {
        let mut st = self.conn.prepare(
            "SELECT id FROM cases WHERE failure IS NULL AND (
                 (ledger_seq IS NULL AND state IN ('complete', 'partial', 'ineligible'))
                 OR (ledger_seq IS NOT NULL AND outputs_ms IS NULL))
             ORDER BY updated_ms, id",
        )?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What the worker reads of a case.
    pub fn work_row(&self, id: i64) -> Result<WorkRow, StateError> {
        Ok(self.conn.query_row(
            "SELECT id, case_key, pseudonym, state, reasons, clinical_hash, ledger_seq, series_choice FROM cases WHERE id=?1",
            [id],
            |r| {
                Ok(WorkRow {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    pseudonym: r.get(2)?,
                    state: r.get(3)?,
                    reasons: reasons_of(&r.get::<_, String>(4)?),
                    clinical_hash: r.get(5)?,
                    ledger_seq: r.get(6)?,
                    series_choice: r.get(7)?,
                })
            },
        )?)
    }

    /// Files under share folder `folder` kept as copies of another case's files: (kind, count,
    /// that case's pseudonym).
    pub fn copies_of_other_cases(&self, folder: &str, case_id: i64) -> Result<Vec<(String, i64, String)>, StateError> {
        let pattern = format!("{}/%", folder.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let mut st = self.conn.prepare(
            "SELECT f.kind, COUNT(*), c.pseudonym FROM files f JOIN cases c ON c.id = f.case_id
             WHERE f.status='duplicate' AND f.path LIKE ?1 ESCAPE '\\' AND f.case_id != ?2
             GROUP BY f.kind, c.id ORDER BY f.kind, c.id",
        )?;
        let rows = st.query_map(params![pattern, case_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Cases locked at ledger record `from_seq` or later: (id, pseudonym, seq).
    pub fn locked_from(&self, from_seq: u64) -> Result<Vec<(i64, String, i64)>, StateError> {
        let mut st =
            self.conn.prepare("SELECT id, pseudonym, ledger_seq FROM cases WHERE ledger_seq >= ?1 ORDER BY id")?;
        let rows = st.query_map([from_seq as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn pseudonym(&self, id: i64) -> Result<Option<String>, StateError> {
        Ok(self.conn.query_row("SELECT pseudonym FROM cases WHERE id=?1", [id], |r| r.get(0)).optional()?)
    }

    /// The case's outputs are written.
    pub fn set_outputs_written(&self, id: i64, now: i64) -> Result<(), StateError> {
        self.conn.execute("UPDATE cases SET outputs_ms=?2 WHERE id=?1", params![id, now])?;
        Ok(())
    }

    /// The most recently changed case: (pseudonym, state).
    pub fn latest_case(&self) -> Result<Option<(String, CaseState)>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT pseudonym, state FROM cases ORDER BY updated_ms DESC, id DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// The waiting case that changed last: (pseudonym, modalities, created_ms).
    pub fn latest_waiting_case(&self) -> Result<Option<(String, CaseModalities, i64)>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT pseudonym, modalities, created_ms FROM cases WHERE state='waiting' ORDER BY updated_ms DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, CaseModalities::from_json(&r.get::<_, String>(1)?), r.get(2)?)),
            )
            .optional()?)
    }

    /// The newest quarantine since `since_ms`.
    pub fn latest_quarantine(&self, since_ms: i64) -> Result<Option<QuarantineRow>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT q.check_name, q.reason, q.action, c.pseudonym FROM quarantine q LEFT JOIN cases c ON c.id = q.case_id
                 WHERE q.created_ms >= ?1 ORDER BY q.id DESC LIMIT 1",
                [since_ms],
                |r| Ok(QuarantineRow { check: r.get(0)?, reason: r.get(1)?, action: r.get(2)?, case: r.get(3)? }),
            )
            .optional()?)
    }

    /// Every quarantine record: (path, or empty for a case; check; reason), by path.
    pub fn quarantine_rows(&self) -> Result<Vec<(String, String, String)>, StateError> {
        let mut st =
            self.conn.prepare("SELECT COALESCE(path, ''), check_name, reason FROM quarantine ORDER BY path")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many file versions have this status (`accepted`, `duplicate`, `quarantined`).
    pub fn count_files(&self, status: &str) -> Result<i64, StateError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM files WHERE status=?1", [status], |r| r.get(0))?)
    }
}

impl Tx<'_> {
    /// The case with this key, made (waiting) if new: (id, state, patient id).
    pub fn ensure_case(
        &self,
        case_key: &str,
        pseudonym: &str,
        now: i64,
    ) -> Result<(i64, CaseState, Option<String>), StateError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO cases(case_key, pseudonym, state, created_ms, updated_ms, last_file_ms)
             VALUES (?1, ?2, 'waiting', ?3, ?3, ?3)",
            params![case_key, pseudonym, now],
        )?;
        Ok(self.tx.query_row("SELECT id, state, patient_id FROM cases WHERE case_key=?1", params![case_key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?)
    }

    /// A file arrived for the case.
    pub fn touch_case(&self, id: i64, now: i64) -> Result<(), StateError> {
        self.tx.execute("UPDATE cases SET last_file_ms=?2, updated_ms=?2 WHERE id=?1", params![id, now])?;
        Ok(())
    }

    /// The patient became known; the pseudonym follows it.
    pub fn set_patient(&self, id: i64, patient_id: &str, pseudonym: &str) -> Result<(), StateError> {
        self.tx
            .execute("UPDATE cases SET patient_id=?2, pseudonym=?3 WHERE id=?1", params![id, patient_id, pseudonym])?;
        Ok(())
    }

    /// An accepted file (of a case, or loose); returns its row id.
    pub fn insert_accepted_file(&self, f: &NewFile<'_>, case_id: Option<i64>, now: i64) -> Result<i64, StateError> {
        self.tx.execute(
            "INSERT INTO files(path, size, mtime_ns, sha256, kind, status, case_id, details, seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'accepted', ?6, ?7, ?8)",
            params![f.path, f.size as i64, f.mtime_ns, f.sha256, f.kind, case_id, f.details, now],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    /// A multi-file slide's index, accepted with the content of the whole slide.
    pub fn insert_slide_set(&self, index_file: i64, case_id: i64, content: &str) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO slide_sets(index_file, case_id, content) VALUES (?1, ?2, ?3)",
            params![index_file, case_id, content],
        )?;
        Ok(())
    }

    /// A file whose content another file of `case_id` already brought (as
    /// [`StateDb::record_duplicate`], inside this transaction).
    pub fn insert_duplicate_file(&self, f: &NewFile<'_>, case_id: i64, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            INSERT_DUPLICATE,
            params![f.path, f.size as i64, f.mtime_ns, f.sha256, f.kind, case_id, f.details, now],
        )?;
        Ok(())
    }

    /// Accepted files found, as a whole, to be a copy of what `of_case` brought (a multi-file
    /// slide's files once its index shows the slide is a re-export).
    pub fn mark_duplicates(&self, file_ids: &[i64], of_case: i64) -> Result<(), StateError> {
        for id in file_ids {
            self.tx.execute(
                "UPDATE files SET status='duplicate', case_id=?2, problem='identical content already received'
                 WHERE id=?1 AND status='accepted'",
                params![id, of_case],
            )?;
        }
        Ok(())
    }

    /// Remove a waiting case that holds nothing (its only files turned out to be another case's
    /// copies): a re-export never becomes a case. Returns whether it was removed.
    pub fn drop_case_if_empty(&self, id: i64) -> Result<bool, StateError> {
        let n = self.tx.execute(
            "DELETE FROM cases WHERE id=?1 AND state='waiting'
               AND NOT EXISTS (SELECT 1 FROM files WHERE case_id=?1)
               AND NOT EXISTS (SELECT 1 FROM quarantine WHERE case_id=?1)
               AND NOT EXISTS (SELECT 1 FROM slide_sets WHERE case_id=?1)",
            params![id],
        )?;
        Ok(n > 0)
    }

    /// A quarantined file and its quarantine record.
    pub fn insert_quarantined_file(&self, f: &NewFile<'_>, q: &Quarantined<'_>, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO files(path, size, mtime_ns, sha256, kind, status, problem, seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'quarantined', ?6, ?7)",
            params![f.path, f.size as i64, f.mtime_ns, f.sha256, f.kind, q.reason, now],
        )?;
        let file_id = self.tx.last_insert_rowid();
        self.tx.execute(
            "INSERT INTO quarantine(file_id, path, check_name, reason, action, record_file, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![file_id, f.path, q.check, q.reason, q.action, q.record_file, now],
        )?;
        Ok(())
    }

    /// A clinical record read from file `file_id` (row `row`, 1-based).
    pub fn insert_clinical_record(
        &self,
        file_id: i64,
        row: i64,
        patient_id: &str,
        case_ref: Option<&str>,
        record_json: &str,
        hash: &str,
    ) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT INTO clinical_records(file_id, row, patient_id, case_ref, record, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![file_id, row, patient_id, case_ref, record_json, hash],
        )?;
        Ok(())
    }

    /// A root clinical file arrived: wake the patient's waiting root studies.
    pub fn wake_root_studies(&self, patient_id: &str, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE cases SET last_file_ms=?2 WHERE patient_id=?1 AND case_key LIKE 'study:%' AND state='waiting'",
            params![patient_id, now],
        )?;
        Ok(())
    }

    /// Add a reason to a case (once).
    pub fn append_case_reason(&self, id: i64, reason: &str) -> Result<(), StateError> {
        let reasons: String = self.tx.query_row("SELECT reasons FROM cases WHERE id=?1", params![id], |r| r.get(0))?;
        let mut v = reasons_of(&reasons);
        if !v.iter().any(|r| r == reason) {
            v.push(reason.to_string());
        }
        self.tx.execute(
            "UPDATE cases SET reasons=?2 WHERE id=?1",
            params![id, serde_json::to_string(&v).unwrap_or_default()],
        )?;
        Ok(())
    }

    /// A case-level quarantine record.
    pub fn insert_case_quarantine(&self, case_id: i64, q: &Quarantined<'_>, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT INTO quarantine(case_id, check_name, reason, action, record_file, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![case_id, q.check, q.reason, q.action, q.record_file, now],
        )?;
        Ok(())
    }

    /// Close a waiting case (nothing happens to a case that is no longer waiting).
    pub fn close_case(&self, id: i64, c: &Closing<'_>, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE cases SET state=?2, modalities=?3, reasons=?4, series_choice=?5, clinical_hash=?6, pseudonym=?7,
                              patient_id=COALESCE(patient_id, ?8), updated_ms=?9 WHERE id=?1 AND state='waiting'",
            params![
                id,
                c.state,
                c.modalities.to_json(),
                serde_json::to_string(c.reasons).unwrap_or_default(),
                c.series_choice,
                c.clinical_hash,
                c.pseudonym,
                c.patient_id,
                now
            ],
        )?;
        Ok(())
    }

    /// The case's prediction or refusal is locked as ledger record `seq`.
    pub fn record_lock(
        &self,
        id: i64,
        seq: u64,
        record_hash: &str,
        state: CaseState,
        now: i64,
    ) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE cases SET ledger_seq=?2, record_hash=?3, state=?4, updated_ms=?5 WHERE id=?1",
            params![id, seq as i64, record_hash, state, now],
        )?;
        Ok(())
    }

    /// The case's lock was lost (cut off with a torn ledger tail): it waits to be decided and
    /// locked again (an ineligible case stays ineligible).
    pub fn unlock(&self, id: i64, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE cases SET ledger_seq=NULL, record_hash=NULL, outputs_ms=NULL,
                 state=CASE WHEN state='ineligible' THEN 'ineligible' ELSE 'complete' END, updated_ms=?2 WHERE id=?1",
            params![id, now],
        )?;
        Ok(())
    }

    /// Processing failed for a reason outside the case.
    pub fn mark_failed(&self, id: i64, why: &str, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE cases SET failure=?2, state=?3, updated_ms=?4 WHERE id=?1",
            params![id, why, CaseState::Failed, now],
        )?;
        Ok(())
    }
}

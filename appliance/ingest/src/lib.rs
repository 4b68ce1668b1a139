//! Ingest: the watched share becomes files, and files become cases.
//!
//! One [`Ingestor::scan_once`] is a full pass: walk the share ([`share`]), judge each file's
//! stability ([`stability`]), recognise it by content ([`recognise`]), accept it into a case or
//! quarantine it ([`quarantine`]), then re-evaluate open cases ([`cases`]): series selection
//! ([`series`]), completeness, eligibility ([`eligibility`]). Every state change is one SQLite
//! transaction, so a kill -9 anywhere leaves a state the next pass resumes from.
//!
//! # In the data path
//!
//! - Owns: the watched share, recognition by content, case assembly, the CT series choice, eligibility, quarantine, pseudonyms.
//! - Inputs: files on the share (local, NFS, SMB).
//! - Outputs: accepted files and closed cases in the state database; quarantine records.
//! - Place: share -> **ingest** -> state -> worker.
//! - Depends on: crlm-config, crlm-state, crlm-models, crlm-core.

pub mod cases;
pub mod eligibility;
pub mod inspect;
pub mod pseudonym;
pub mod quarantine;
pub mod recognise;
pub mod series;
pub mod share;
pub mod stability;

use cap_std::fs::Dir;
use crlm_config::Config;
use crlm_state::{StateDb, StateError, now_ms};
use pseudonym::SiteSecret;
use quarantine::{Quarantine, QuarantineRecord};
use recognise::{FileKind, Outcome, Problem, Recognised};
use serde::Serialize;
use share::ShareEntry;
use stability::{Observation, StabilityTracker, Verdict};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("share {path} cannot be read: {source}; check share.path and that the share is mounted")]
    Share { path: String, source: std::io::Error },
    #[error("state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error("quarantine folder {path} cannot be written: {source}")]
    Quarantine { path: String, source: std::io::Error },
}

/// What one scan did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScanReport {
    pub files_seen: usize,
    pub waiting: usize,
    pub accepted: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    pub case_changes: Vec<cases::CaseChange>,
    /// Files identical to one of another case (pseudonyms only): each is alerted.
    pub cross_case: Vec<String>,
}

/// What became of a file in a scan.
enum Considered {
    /// Taken in, refused, or waiting for the file itself.
    Done,
    /// A multi-file slide's index whose parts are in the share, not yet all taken in: its
    /// recognition is kept, to be taken up again at the end of the pass without parsing it (and
    /// opening it through OpenSlide) twice. The file is not kept open: a share may hold more
    /// indexes than the unit's LimitNOFILE.
    WaitsForParts(Box<Recognition>),
}

/// Recognitions kept for the end of a scan at most (an MRXS index may name 4096 files, so each
/// can hold a few hundred KB); an index past them is recognised again there, as the first was.
const MAX_KEPT_RECOGNITIONS: usize = 64;

/// A file found to be the version the walk saw, and recognised as usable.
struct Recognition {
    obs: Observation,
    rec: Recognised,
    /// Its folder is marked READY (or the file is marked done).
    marked: bool,
}

/// Where a multi-file slide's parts stand in one scan of the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// Every part taken in, as the version this scan saw.
    TakenIn,
    /// Every part in the share, some still to be taken in.
    Pending,
    /// This many parts are not in the share.
    Missing(usize),
}

pub struct Ingestor {
    pub(crate) cfg: Config,
    pub(crate) db: StateDb,
    share: Dir,
    pub(crate) share_root: PathBuf,
    tracker: StabilityTracker,
    pub(crate) secret: SiteSecret,
    pub(crate) quarantine: Quarantine,
    started: Instant,
    skip_top: HashSet<String>,
    /// Bumped whenever work progresses (the watchdog pings only while it moves).
    pub progress: Arc<AtomicU64>,
}

impl Ingestor {
    pub fn open(cfg: &Config) -> Result<Self, IngestError> {
        let state_dir = &cfg.state.path;
        crlm_core::fsutil::ensure_dir(state_dir, 0o750)
            .map_err(|e| IngestError::StateDir { path: state_dir.display().to_string(), source: e })?;
        let db = StateDb::open(&cfg.database_path())?;
        let secret_path = state_dir.join("keys").join("site.secret");
        let secret = SiteSecret::load_or_create(&secret_path)
            .map_err(|e| IngestError::StateDir { path: secret_path.display().to_string(), source: e })?;
        let share = share::open_share(&cfg.share.path)
            .map_err(|e| IngestError::Share { path: cfg.share.path.display().to_string(), source: e })?;
        // Never ingest our own folders if an operator put them inside the share.
        let mut skip_top = HashSet::new();
        for inner in [cfg.quarantine_dir(), cfg.state.path.clone()] {
            if let (Ok(a), Ok(b)) = (inner.canonicalize(), cfg.share.path.canonicalize())
                && let Ok(rel) = a.strip_prefix(&b)
                && let Some(top) = rel.components().next()
            {
                skip_top.insert(top.as_os_str().to_string_lossy().into_owned());
            }
        }
        Ok(Ingestor {
            quarantine: Quarantine { dir: cfg.quarantine_dir(), mode: cfg.quarantine.mode },
            share_root: cfg.share.path.clone(),
            cfg: cfg.clone(),
            db,
            share,
            tracker: StabilityTracker::default(),
            secret,
            started: Instant::now(),
            skip_top,
            progress: Arc::new(AtomicU64::new(0)),
        })
    }

    fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// One full pass over the share and the open cases.
    pub fn scan_once(&mut self) -> Result<ScanReport, IngestError> {
        let now = self.started.elapsed().as_secs_f64();
        let mut report = ScanReport::default();
        let scan = share::walk(&self.share, &self.skip_top)
            .map_err(|e| IngestError::Share { path: self.share_root.display().to_string(), source: e })?;
        let mut seen = HashSet::new();
        let (mut waits_for_parts, mut kept) = (Vec::new(), 0);
        for entry in &scan.entries {
            self.tick();
            match entry {
                ShareEntry::Symlink { rel, mtime_ns } => {
                    let p = Problem {
                        kind: FileKind::Unknown,
                        check: "share.no_symlinks",
                        reason: "symbolic link: the appliance never follows links (one could point outside the share)"
                            .into(),
                        action: "Copy the real file into the case folder instead of a link.",
                    };
                    self.refuse(rel, 0, *mtime_ns, None, p, &mut report)?;
                }
                ShareEntry::Special { rel } => {
                    let p = Problem {
                        kind: FileKind::Unknown,
                        check: "share.regular_file",
                        reason: "not a regular file (a pipe, socket or device)".into(),
                        action: "Remove it from the share.",
                    };
                    self.refuse(rel, 0, 0, None, p, &mut report)?;
                }
                ShareEntry::File { rel, size, mtime_ns, ino, nlink } => {
                    report.files_seen += 1;
                    seen.insert(rel.clone());
                    if let Considered::WaitsForParts(r) =
                        self.consider_file(rel, *size, *mtime_ns, *ino, *nlink, now, &scan, &mut report)?
                    {
                        let keep = kept < MAX_KEPT_RECOGNITIONS;
                        kept += usize::from(keep);
                        waits_for_parts.push((entry, keep.then_some(r)));
                    }
                }
            }
        }
        // Slide indexes whose parts came after them in this walk: once more, now that the parts
        // are taken in (so a folder marked READY closes with its whole slide).
        for (entry, r) in waits_for_parts {
            let ShareEntry::File { rel, size, mtime_ns, ino, nlink } = entry else { continue };
            report.waiting = report.waiting.saturating_sub(1);
            let Some(r) = r else {
                self.consider_file(rel, *size, *mtime_ns, *ino, *nlink, now, &scan, &mut report)?;
                continue;
            };
            match share::open_beneath(&self.share, rel) {
                Ok(file) if same_version(&file, r.obs) => {
                    self.take_in_usable(rel, &file, *r, now, &scan, &mut report)?;
                }
                // Gone or changed since: the next pass looks at it afresh.
                _ => report.waiting += 1,
            }
        }
        for deep in &scan.too_deep {
            tracing::warn!(stage = "ingest", depth_limit = 16, folder_hash = %short_hash(deep), "folder nested too deep; not scanned");
        }
        self.tracker.retain_seen(&seen);
        let ready: HashSet<PathBuf> = scan.ready_folders.clone();
        report.case_changes = cases::evaluate(self, &ready)?;
        for c in &report.case_changes {
            for r in c.reasons.iter().filter(|r| r.starts_with(cases::CROSS_CASE_REASON)) {
                report.cross_case.push(format!("case {}: {r}", c.case));
            }
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    fn consider_file(
        &mut self,
        rel: &Path,
        size: u64,
        mtime_ns: i64,
        ino: u64,
        nlink: u64,
        now: f64,
        scan: &share::ShareScan,
        report: &mut ScanReport,
    ) -> Result<Considered, IngestError> {
        let rel_s = rel.to_string_lossy().into_owned();
        if self.db.file_known(&rel_s, size, mtime_ns)? {
            return Ok(Considered::Done);
        }
        if nlink > 1 {
            let p = Problem {
                kind: FileKind::Unknown,
                check: "share.no_hard_links",
                reason: format!("the file has {nlink} hard links: it may be another file's content under a new name"),
                action: "Copy the file into the share instead of linking it.",
            };
            return self.refuse(rel, size, mtime_ns, None, p, report).map(|()| Considered::Done);
        }
        let top_ready = rel.components().next().map(|c| PathBuf::from(c.as_os_str()));
        let marked = scan.done.contains(rel)
            || (rel.components().count() > 1 && top_ready.as_ref().is_some_and(|t| scan.ready_folders.contains(t)));
        let obs = Observation { size, mtime_ns, ino };
        if self.tracker.observe(rel, obs, now, self.cfg.share.quiet_seconds, marked) == Verdict::Wait {
            report.waiting += 1;
            return Ok(Considered::Done);
        }
        let file = match share::open_beneath(&self.share, rel) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(stage = "ingest", error = %e, "file vanished or cannot be opened; will look again");
                return Ok(Considered::Done);
            }
        };
        if !same_version(&file, obs) {
            return Ok(Considered::Done); // changed since the walk: the next pass sees the new version
        }
        match recognise::recognise(&file, &self.share_root, rel, &self.cfg.limits) {
            Outcome::Usable(rec) => {
                return self.take_in_usable(rel, &file, Recognition { obs, rec, marked }, now, scan, report);
            }
            Outcome::NotYet(p) => {
                let for_s = self.tracker.incomplete_for(rel, now);
                // A folder marked READY (or a file marked done) will not grow: an incomplete file
                // there is quarantined at once, not after the incomplete timeout.
                if marked || for_s >= self.cfg.share.incomplete_timeout_seconds {
                    let why = if marked {
                        "its folder is marked READY, so it will not be completed".to_string()
                    } else {
                        format!("unchanged and still incomplete after {for_s:.0} s")
                    };
                    let p = Problem { reason: format!("{} ({why})", p.reason), ..p };
                    let sha = self.hash_file(&file);
                    self.refuse(rel, size, mtime_ns, sha, p, report)?;
                } else {
                    report.waiting += 1;
                }
            }
            Outcome::Bad(p) => {
                let sha = self.hash_file(&file);
                self.refuse(rel, size, mtime_ns, sha, p, report)?;
            }
        }
        Ok(Considered::Done)
    }

    /// Take in a file recognised as usable: at once, or, for a multi-file slide's index, after
    /// every file it names.
    fn take_in_usable(
        &mut self,
        rel: &Path,
        file: &std::fs::File,
        recognition: Recognition,
        now: f64,
        scan: &share::ShareScan,
        report: &mut ScanReport,
    ) -> Result<Considered, IngestError> {
        let Recognition { obs, rec, marked } = recognition;
        // A multi-file slide's index is taken in after every file it names, so that the
        // case holds the whole slide when it closes and no part is still being copied.
        if let Recognised::Slide(h) = &rec
            && let parts = self.parts_state(rel, &h.members, scan)?
            && parts != Parts::TakenIn
        {
            // In a READY folder a part this pass has still to take in is waited for (the index
            // may come before its parts in the walk); a part that is not in the folder is not
            // coming.
            let for_s = self.tracker.incomplete_for(rel, now);
            let timed_out = for_s >= self.cfg.share.incomplete_timeout_seconds;
            if timed_out || (marked && matches!(parts, Parts::Missing(_))) {
                let reason = match parts {
                    Parts::Missing(n) => format!(
                        "{n} of the {} files this slide index names are not beside it ({})",
                        h.members.len(),
                        if marked { "its folder is marked READY".to_string() } else { format!("after {for_s:.0} s") }
                    ),
                    _ => format!("the files this slide index names were not all taken in after {for_s:.0} s"),
                };
                let p = Problem {
                    kind: FileKind::Slide,
                    check: "slide.parts",
                    reason,
                    action: "Copy the slide's index and every file it names into the same case folder.",
                };
                let sha = self.hash_file(file);
                self.refuse(rel, obs.size, obs.mtime_ns, sha, p, report)?;
            } else {
                report.waiting += 1;
                if parts == Parts::Pending {
                    return Ok(Considered::WaitsForParts(Box::new(Recognition { obs, rec, marked })));
                }
            }
            return Ok(Considered::Done);
        }
        let Some(sha) = self.hash_file(file) else { return Ok(Considered::Done) };
        if !same_version(file, obs) {
            return Ok(Considered::Done);
        }
        self.tracker.forget(rel);
        cases::accept_file(self, rel, obs.size, obs.mtime_ns, &sha, rec, report)?;
        Ok(Considered::Done)
    }

    /// Where the files `members` names beside `rel` stand in this scan: all taken in (accepted
    /// or refused) as the version this scan saw, some still to be taken in, or some absent.
    fn parts_state(&self, rel: &Path, members: &[String], scan: &share::ShareScan) -> Result<Parts, IngestError> {
        let dir = rel.parent().unwrap_or(Path::new(""));
        let (mut pending, mut missing) = (false, 0);
        for m in members {
            let part = crlm_models::slide::index::member_path(dir, m);
            match scan.file_versions.get(&part).copied() {
                Some((size, mtime_ns)) if self.db.file_known(&part.to_string_lossy(), size, mtime_ns)? => {}
                Some(_) => pending = true,
                None => missing += 1,
            }
        }
        Ok(match (missing, pending) {
            (0, false) => Parts::TakenIn,
            (0, true) => Parts::Pending,
            (n, _) => Parts::Missing(n),
        })
    }

    /// SHA-256 of the whole file, streamed; `None` if reading fails (looked at again later).
    fn hash_file(&self, file: &std::fs::File) -> Option<String> {
        use std::io::Seek;
        let mut r = file;
        r.seek(std::io::SeekFrom::Start(0)).ok()?;
        crlm_models::sha256_stream(r, || self.tick()).ok().map(|(sha, _)| sha)
    }

    /// Quarantine one file version: reason file (and move), then the database row.
    fn refuse(
        &mut self,
        rel: &Path,
        size: u64,
        mtime_ns: i64,
        sha: Option<String>,
        p: Problem,
        report: &mut ScanReport,
    ) -> Result<(), IngestError> {
        let rel_s = rel.to_string_lossy().into_owned();
        if self.db.file_known(&rel_s, size, mtime_ns)? {
            return Ok(());
        }
        // Deterministic id: a rerun after a crash rewrites the same record, never a second one.
        let id = format!("file-{}", &crlm_models::sha256_hex(format!("{rel_s}\0{size}\0{mtime_ns}").as_bytes())[..16]);
        let rec = QuarantineRecord {
            version: quarantine::RECORD_VERSION,
            id: id.clone(),
            created_at: crlm_state::rfc3339(now_ms()),
            file: Some(rel_s.clone()),
            case: None,
            kind: p.kind.as_str().into(),
            check: p.check.into(),
            reason: p.reason.clone(),
            action: p.action.into(),
            sha256: sha.clone(),
            moved_to: None,
        };
        let record_file = self
            .quarantine
            .record(&self.share_root, rec)
            .map_err(|e| IngestError::Quarantine { path: self.quarantine.dir.display().to_string(), source: e })?;
        let tx = self.db.begin()?;
        let file = crlm_state::NewFile {
            path: &rel_s,
            size,
            mtime_ns,
            sha256: sha.as_deref(),
            kind: p.kind.as_str(),
            details: None,
        };
        let record_file = record_file.display().to_string();
        let q =
            crlm_state::Quarantined { check: p.check, reason: &p.reason, action: p.action, record_file: &record_file };
        tx.insert_quarantined_file(&file, &q, now_ms())?;
        tx.commit()?;
        self.tracker.forget(rel);
        report.quarantined += 1;
        // Logs carry the check and a hash of the path, never the name (names can identify patients).
        tracing::warn!(stage = "ingest", error_kind = p.check, file = %short_hash(rel), record = %id, "file quarantined: {}", p.check);
        Ok(())
    }

    pub fn database(&self) -> &StateDb {
        &self.db
    }
}

fn same_version(file: &std::fs::File, obs: Observation) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .map(|m| {
            m.len() == obs.size && m.mtime() * 1_000_000_000 + m.mtime_nsec() == obs.mtime_ns && m.ino() == obs.ino
        })
        .unwrap_or(false)
}

/// A short non-reversible tag for a path, for logs.
pub fn short_hash(p: &Path) -> String {
    crlm_models::sha256_hex(p.as_os_str().as_encoded_bytes())[..10].to_string()
}

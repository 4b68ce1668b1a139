//! `crlm inspect`: what the appliance sees in a file or folder, changing nothing. Uses the same
//! walker and recogniser as the service, so its verdicts are the service's.

use super::recognise::{self, FileKind, Outcome};
use super::share::{self, ShareEntry};
use crlm_models::limits::Limits;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct InspectItem {
    pub path: String,
    pub kind: FileKind,
    /// Empty when the file is usable as it is.
    pub problems: Vec<String>,
    /// `usable`, `incomplete` (the service would wait) or `rejected`.
    pub verdict: &'static str,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot inspect {path}: {source}")]
pub struct InspectError {
    pub path: String,
    pub source: std::io::Error,
}

pub fn inspect(path: &Path, limits: &Limits) -> Result<Vec<InspectItem>, InspectError> {
    let err = |source| InspectError { path: path.display().to_string(), source };
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let (dir_path, only): (PathBuf, Option<PathBuf>) = if meta.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (parent.to_path_buf(), path.file_name().map(PathBuf::from))
    };
    // A multi-file slide's parts are looked for beside its index, within the folder above the
    // one inspected (an MRXS folder's .mrxs lies beside it).
    let (root, root_rel) = match (dir_path.parent(), dir_path.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), PathBuf::from(n)),
        _ => (dir_path.clone(), PathBuf::new()),
    };
    let dir = share::open_share(&dir_path).map_err(err)?;
    let scan = share::walk(&dir, &HashSet::new()).map_err(err)?;
    let mut out = Vec::new();
    for entry in scan.entries {
        let rel = match &entry {
            ShareEntry::File { rel, .. } | ShareEntry::Symlink { rel, .. } | ShareEntry::Special { rel } => rel.clone(),
        };
        if let Some(o) = &only
            && &rel != o
        {
            continue;
        }
        let shown = if only.is_some() { path.display().to_string() } else { dir_path.join(&rel).display().to_string() };
        let item = match entry {
            ShareEntry::Symlink { .. } => refused(shown, "symbolic link: the service refuses links"),
            ShareEntry::Special { .. } => refused(shown, "not a regular file"),
            ShareEntry::File { nlink, .. } if nlink > 1 => {
                refused(shown, &format!("the file has {nlink} hard links: the service refuses hard-linked files"))
            }
            ShareEntry::File { .. } => match share::open_beneath(&dir, &rel) {
                Err(e) => refused(shown, &format!("cannot open: {e}")),
                Ok(f) => match recognise::recognise(&f, &root, &root_rel.join(&rel), limits) {
                    Outcome::Usable(r) => InspectItem {
                        path: shown,
                        kind: r.kind(),
                        problems: vec![],
                        verdict: "usable",
                        details: r.details().as_object().cloned().unwrap_or_default(),
                    },
                    Outcome::NotYet(p) => with_problem(shown, p, "incomplete"),
                    Outcome::Bad(p) => with_problem(shown, p, "rejected"),
                },
            },
        };
        out.push(item);
    }
    if out.is_empty()
        && let Some(o) = only
    {
        // Ignored names (temporary files, markers) are not listed by the walk: say so.
        out.push(refused(
            path.display().to_string(),
            &format!("{} is a temporary, hidden or marker name: the service ignores it", o.display()),
        ));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn refused(path: String, why: &str) -> InspectItem {
    InspectItem {
        path,
        kind: FileKind::Unknown,
        problems: vec![why.into()],
        verdict: "rejected",
        details: Default::default(),
    }
}

fn with_problem(path: String, p: recognise::Problem, verdict: &'static str) -> InspectItem {
    let mut details = serde_json::Map::new();
    details.insert("check".into(), p.check.into());
    details.insert("action".into(), p.action.into());
    InspectItem { path, kind: p.kind, problems: vec![p.reason], verdict, details }
}

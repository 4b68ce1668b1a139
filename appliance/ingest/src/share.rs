//! The watched share, seen only through a capability handle (cap-std): every path is resolved
//! beneath the share's directory, symlinks are never followed, and no path is built from data
//! inside a file. Temporary and hidden names are skipped; done-markers are collected.

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::MetadataExt;
use cap_std::fs::{Dir, OpenOptions};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Deepest folder nesting followed inside the share.
const MAX_DEPTH: usize = 16;

/// A case folder's marker: everything in the folder is complete.
pub const CASE_READY_MARKER: &str = "READY";
/// A file's marker: `<file>.done` says `<file>` is complete.
pub const FILE_DONE_SUFFIX: &str = ".done";

/// What the walk found at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareEntry {
    File {
        rel: PathBuf,
        size: u64,
        mtime_ns: i64,
        ino: u64,
        nlink: u64,
    },
    /// Symlinks are refused: never followed, reported once.
    Symlink {
        rel: PathBuf,
        mtime_ns: i64,
    },
    /// FIFOs, sockets, devices.
    Special {
        rel: PathBuf,
    },
}

/// One full scan of the share.
#[derive(Debug, Default)]
pub struct ShareScan {
    pub entries: Vec<ShareEntry>,
    /// Files whose `<file>.done` marker exists.
    pub done: HashSet<PathBuf>,
    /// Top-level case folders holding a `READY` marker.
    pub ready_folders: HashSet<PathBuf>,
    /// Folders deeper than the limit (reported, not followed).
    pub too_deep: Vec<PathBuf>,
    /// Each plain file's (size, mtime in ns), by path: a slide index's parts are looked up here
    /// (an MRXS index may name thousands) instead of searching `entries` for each.
    pub file_versions: HashMap<PathBuf, (u64, i64)>,
}

/// Names the watcher never takes: temporary copies, Office lock files, hidden files.
pub fn is_ignored_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.starts_with("~$")
        || [".part", ".tmp", ".crdownload", ".filepart", ".partial", ".swp"].iter().any(|s| lower.ends_with(s))
}

pub fn open_share(path: &Path) -> std::io::Result<Dir> {
    Dir::open_ambient_dir(path, cap_std::ambient_authority())
}

/// Walk the whole share. `skip_top` are top-level names not to enter (e.g. an in-share quarantine).
pub fn walk(share: &Dir, skip_top: &HashSet<String>) -> std::io::Result<ShareScan> {
    let mut scan = ShareScan::default();
    walk_dir(share, Path::new(""), 0, skip_top, &mut scan)?;
    Ok(scan)
}

fn walk_dir(
    dir: &Dir,
    rel: &Path,
    depth: usize,
    skip_top: &HashSet<String>,
    scan: &mut ShareScan,
) -> std::io::Result<()> {
    for entry in dir.entries()? {
        let entry = entry?;
        let name_os = entry.file_name();
        let Some(name) = name_os.to_str() else {
            continue; // non-UTF-8 names cannot be recorded faithfully; they are not scanner output
        };
        let child = rel.join(name);
        if depth == 0 && skip_top.contains(name) {
            continue;
        }
        if name == CASE_READY_MARKER {
            if let Some(top) = rel.components().next() {
                scan.ready_folders.insert(PathBuf::from(top.as_os_str()));
            }
            continue;
        }
        if let Some(target) = name.strip_suffix(FILE_DONE_SUFFIX) {
            scan.done.insert(rel.join(target));
            continue;
        }
        if is_ignored_name(name) {
            continue;
        }
        // The entry's own type: symlinks are reported, never followed.
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            let mtime_ns = dir.symlink_metadata(name).map(|m| m.mtime() * 1_000_000_000 + m.mtime_nsec()).unwrap_or(0);
            scan.entries.push(ShareEntry::Symlink { rel: child, mtime_ns });
        } else if ft.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                scan.too_deep.push(child);
                continue;
            }
            match dir.open_dir_nofollow(name) {
                Ok(sub) => walk_dir(&sub, &child, depth + 1, skip_top, scan)?,
                // A folder replaced by a symlink between listing and opening.
                Err(_) => scan.entries.push(ShareEntry::Symlink { rel: child, mtime_ns: 0 }),
            }
        } else if ft.is_file() {
            let m = dir.symlink_metadata(name)?;
            let (size, mtime_ns) = (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec());
            scan.file_versions.insert(child.clone(), (size, mtime_ns));
            scan.entries.push(ShareEntry::File { rel: child, size, mtime_ns, ino: m.ino(), nlink: m.nlink() });
        } else {
            scan.entries.push(ShareEntry::Special { rel: child });
        }
    }
    Ok(())
}

/// Open a file beneath the share for reading, refusing symlinks at any component.
pub fn open_beneath(share: &Dir, rel: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = OpenOptions::new();
    opts.read(true).follow(FollowSymlinks::No);
    let f = share.open_with(rel, &opts)?;
    Ok(f.into_std())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_and_hidden_names_are_ignored() {
        for n in [".hidden", "~$lock.docx", "IM1.dcm.part", "slide.svs.tmp", "a.crdownload"] {
            assert!(is_ignored_name(n), "{n}");
        }
        for n in ["IM1.dcm", "slide.svs", "clinical.json", "1.2.3.4"] {
            assert!(!is_ignored_name(n), "{n}");
        }
    }

    #[test]
    fn symlinks_are_reported_and_escapes_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("case1")).unwrap();
        std::fs::write(d.path().join("case1/a.dcm"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("case1/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("etcdir")).unwrap();
        std::fs::write(d.path().join("case1/a.dcm.done"), b"").unwrap();
        std::fs::write(d.path().join("case1/READY"), b"").unwrap();
        let share = open_share(d.path()).unwrap();
        let scan = walk(&share, &HashSet::new()).unwrap();
        let symlinks: Vec<_> = scan.entries.iter().filter(|e| matches!(e, ShareEntry::Symlink { .. })).collect();
        assert_eq!(symlinks.len(), 2);
        assert!(scan.done.contains(Path::new("case1/a.dcm")));
        assert!(scan.ready_folders.contains(Path::new("case1")));
        assert!(open_beneath(&share, Path::new("case1/passwd")).is_err());
        assert!(open_beneath(&share, Path::new("etcdir/passwd")).is_err());
        assert!(open_beneath(&share, Path::new("../../etc/passwd")).is_err());
        assert!(open_beneath(&share, Path::new("case1/a.dcm")).is_ok());
    }
}

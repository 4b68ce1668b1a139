//! Multi-file slides: an index file names the other files of the slide. Two formats are known:
//! a Hamamatsu VMS key file ([`super::vms`]) names JPEG files beside it; an MRXS `Slidedat.ini`
//! ([`super::mrxs`]) names the index and data files beside it, and its folder lies beside the
//! `.mrxs` file OpenSlide opens. Either way the index is the slide and the files it names are its
//! parts, written as paths relative to the index's folder: a plain file name, or for MRXS the one
//! `../<folder>.mrxs`. This module is the one place that knows both.

use super::{SlideError, mrxs, vms};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Which index a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Vms,
    Mrxs,
}

/// A multi-file slide's index, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlideIndex {
    Vms(vms::VmsIndex),
    /// `Slidedat.ini` and the name of its folder (the `.mrxs` beside it has that name).
    Mrxs {
        index: mrxs::MrxsIndex,
        folder: String,
    },
}

/// The largest index file of any kind (checked before reading a file to sniff it in full).
pub const MAX_INDEX_BYTES: u64 = mrxs::MAX_INDEX_BYTES;

/// Which index `head` (a file's first bytes) is, if any.
pub fn sniff(head: &[u8]) -> Option<IndexKind> {
    if vms::sniff_vms(head) {
        Some(IndexKind::Vms)
    } else if mrxs::sniff_slidedat(head) {
        Some(IndexKind::Mrxs)
    } else {
        None
    }
}

impl SlideIndex {
    /// Read the index of `kind` in `file`, which lies at `path`.
    pub fn read(kind: IndexKind, file: &File, path: &Path) -> Result<SlideIndex, SlideError> {
        match kind {
            IndexKind::Vms => vms::read_index(file).map(SlideIndex::Vms),
            IndexKind::Mrxs => {
                let folder = path
                    .parent()
                    .and_then(Path::file_name)
                    .and_then(|f| f.to_str())
                    .filter(|f| !f.is_empty() && !f.starts_with('.'))
                    .ok_or_else(|| SlideError::Index("Slidedat.ini must lie in the slide's own folder".into()))?;
                Ok(SlideIndex::Mrxs { index: mrxs::read_slidedat(file)?, folder: folder.to_string() })
            }
        }
    }

    /// The format, for people.
    pub fn format_name(&self) -> &'static str {
        match self {
            SlideIndex::Vms(_) => vms::FORMAT_NAME,
            SlideIndex::Mrxs { .. } => mrxs::FORMAT_NAME,
        }
    }

    /// The files the slide cannot be read without, relative to the index's folder.
    pub fn required(&self) -> Vec<String> {
        match self {
            SlideIndex::Vms(i) => i.required.clone(),
            SlideIndex::Mrxs { index, folder } => {
                let mut m = index.members();
                m.push(format!("../{folder}.mrxs"));
                m
            }
        }
    }

    /// Files used when present (a VMS optimisation file), relative to the index's folder.
    pub fn optional(&self) -> Vec<String> {
        match self {
            SlideIndex::Vms(i) => i.optional.clone(),
            SlideIndex::Mrxs { .. } => Vec::new(),
        }
    }

    /// Does the index at `index_path` name the file at `path` (required or optional)?
    pub fn names(&self, index_path: &Path, path: &Path) -> bool {
        let dir = index_path.parent().unwrap_or(Path::new(""));
        self.required().iter().chain(&self.optional()).any(|m| member_path(dir, m) == path)
    }

    /// The path OpenSlide opens for the index at `index_path`.
    pub fn open_path(&self, index_path: &Path) -> Option<PathBuf> {
        match self {
            SlideIndex::Vms(_) => Some(index_path.to_path_buf()),
            SlideIndex::Mrxs { .. } => mrxs::mrxs_path(index_path),
        }
    }
}

/// Where member `m` (relative to the index's folder `dir`) lies: `dir/m`, or for `../name`
/// beside `dir`. The index parsers admit no other form.
pub fn member_path(dir: &Path, m: &str) -> PathBuf {
    match m.strip_prefix("../") {
        Some(rest) => dir.parent().unwrap_or(Path::new("")).join(rest),
        None => dir.join(m),
    }
}

/// A multi-file slide's content as one hash: SHA-256 of the index's and its parts' SHA-256 hex
/// strings joined, in the index's order. What the ledger records as the slide's hash, and what
/// tells a re-export of a whole slide (no one file of it does).
pub fn slide_set_sha256<S: AsRef<str>>(index_sha: &str, part_shas: &[S]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(index_sha.as_bytes());
    for p in part_shas {
        h.update(p.as_ref().as_bytes());
    }
    hex::encode(h.finalize())
}

/// The whole of a small index file, its size checked against `limit` before reading.
pub(crate) fn read_bounded(file: &File, limit: u64, what: &'static str) -> Result<Vec<u8>, SlideError> {
    use std::io::{Read, Seek};
    let len = file.metadata()?.len();
    if len > limit {
        return Err(SlideError::OverLimit { what, value: len, limit });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    let mut r = file;
    r.seek(std::io::SeekFrom::Start(0))?;
    r.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The valid UTF-8 prefix of a file's first bytes (the head may end mid-character).
pub(crate) fn head_text(head: &[u8]) -> &str {
    match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(head.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or_default(),
    }
}

/// Lines of an INI/key file without a UTF-8 byte-order mark, trimmed, blank lines and comments
/// skipped.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
}

/// The group a `[name]` line opens.
pub(crate) fn group(line: &str) -> Option<&str> {
    line.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

/// A name an index gives (`whose`: which index, for the message) must be a plain file name: no
/// folder, no `..`, no hidden file.
pub(crate) fn plain_name(name: &str, whose: &str) -> Result<(), SlideError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(SlideError::Index(format!(
            "{whose} names a file that is not a plain file name in its own folder (a path, `..` or a hidden \
             file); the appliance reads a slide's files only from beside its index"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slide_sets_hash_is_of_its_files_hashes_joined_as_the_ledger_has_always_recorded_it() {
        let parts = ["b".repeat(64), "c".repeat(64)];
        let joined = format!("{}{}{}", "a".repeat(64), parts[0], parts[1]);
        assert_eq!(slide_set_sha256(&"a".repeat(64), &parts), crate::sha256_hex(joined.as_bytes()));
        assert_ne!(
            slide_set_sha256(&"a".repeat(64), &[&parts[1], &parts[0]]),
            slide_set_sha256(&"a".repeat(64), &parts)
        );
    }

    #[test]
    fn members_resolve_beside_the_index_and_the_mrxs_beside_its_folder() {
        let d = Path::new("case/slide");
        assert_eq!(member_path(d, "Data0000.dat"), Path::new("case/slide/Data0000.dat"));
        assert_eq!(member_path(d, "../slide.mrxs"), Path::new("case/slide.mrxs"));
        let text =
            b"[GENERAL]\nSLIDE_ID=x\n[HIERARCHICAL]\nINDEXFILE=Index.dat\n[DATAFILE]\nFILE_COUNT=1\nFILE_0=D.dat\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slide").join("Slidedat.ini");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        assert_eq!(sniff(text), Some(IndexKind::Mrxs));
        let i = SlideIndex::read(IndexKind::Mrxs, &File::open(&p).unwrap(), &p).unwrap();
        assert_eq!(i.required(), ["Index.dat", "D.dat", "../slide.mrxs"]);
        assert!(i.names(&p, &dir.path().join("slide.mrxs")));
        assert!(i.names(&p, &dir.path().join("slide/D.dat")));
        assert!(!i.names(&p, &dir.path().join("other.mrxs")));
        assert_eq!(i.open_path(&p), Some(dir.path().join("slide.mrxs")));
    }
}

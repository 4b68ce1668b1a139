//! Durable file writes: temp file, fsync, rename, fsync the directory. Everything crlm writes
//! outside SQLite and the ledger (keys, quarantine records, NIfTI volumes, model packages) goes
//! through here, so a power cut leaves the old file or the new one, never a torn one.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically with the given Unix mode; the directory is fsynced so the
/// new name survives power loss.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_with(path, mode, |w| w.write_all(bytes))
}

/// Stream a new file into place atomically: `write` fills a buffered temporary file beside
/// `path`, which is then fsynced, renamed over `path`, and the directory fsynced. On any error
/// the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let result = fill(&tmp, mode, write).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&dir)
}

/// Like [`write_atomic`], but never replaces an existing file (keys): fails with
/// `AlreadyExists` when `path` exists, also when another process creates it meanwhile.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    // A hard link refuses to replace an existing name, atomically.
    let result = fill(&tmp, mode, |w| w.write_all(bytes)).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    result?;
    sync_dir(&dir)
}

/// The directory of `path` (created if missing) and a temporary name in it.
fn temp_beside(path: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    Ok((dir, tmp))
}

fn fill(tmp: &Path, mode: u32, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    write(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// fsync a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create a directory (and parents) with the given mode if missing.
pub fn ensure_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(path)?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k/secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temp files left");
    }

    #[test]
    fn write_new_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("device.key");
        write_new(&p, b"first", 0o600).unwrap();
        let e = write_new(&p, b"second", 0o600).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temp files left");
    }

    #[test]
    fn failed_streamed_write_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vol.nii");
        write_atomic(&p, b"old", 0o644).unwrap();
        let e = write_atomic_with(&p, 0o644, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temp files left");
    }
}

//! A package's files as read for verification. Small files are held in memory (they are what is
//! verified and then used, so nothing can change between the two). A folder package's large
//! files (ONNX external data, a foundation-model tile encoder) stay on disk: they are hashed
//! while streaming, never held whole in RAM, and hashed again when they are used
//! ([`super::ModelPackage::verified_path`]) so an edit after verification is caught. A `.tar`
//! package is read into memory whole, up to [`MAX_PACKAGE_BYTES`]; larger packages are folders.

use super::{MODEL_TOML, PackageError};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest `.tar` package (all files together, in memory), checked before reading.
pub const MAX_PACKAGE_BYTES: u64 = 2 << 30;
/// Largest folder package (all files together; large files stay on disk).
pub const MAX_FOLDER_PACKAGE_BYTES: u64 = 64 << 30;
/// Files up to this size are held in memory; larger ones of a folder package stay on disk.
pub const IN_MEMORY_MAX: u64 = 64 << 20;
/// Largest `model.toml`, manifest or signature.
pub const METADATA_MAX: u64 = 16 << 20;

/// One package file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    Bytes(Vec<u8>),
    /// Left on disk: its path, size and the SHA-256 computed while reading it.
    Disk {
        path: PathBuf,
        size: u64,
        sha256: String,
    },
}

impl FileData {
    pub fn sha256(&self) -> String {
        match self {
            FileData::Bytes(b) => crate::sha256_hex(b),
            FileData::Disk { sha256, .. } => sha256.clone(),
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            FileData::Bytes(b) => b.len() as u64,
            FileData::Disk { size, .. } => *size,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes, when held in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            FileData::Bytes(b) => Some(b),
            FileData::Disk { .. } => None,
        }
    }
}

impl From<Vec<u8>> for FileData {
    fn from(b: Vec<u8>) -> Self {
        FileData::Bytes(b)
    }
}

/// SHA-256 and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    crate::sha256_stream(std::fs::File::open(path)?, || ())
}

/// The demo package's files, built in.
fn built_in_demo() -> BTreeMap<String, FileData> {
    let mut m = BTreeMap::new();
    let mut put = |name: &str, bytes: &[u8]| m.insert(name.to_string(), FileData::Bytes(bytes.to_vec()));
    put(MODEL_TOML, include_bytes!("../../packages/demo/model.toml"));
    put("weights.safetensors", include_bytes!("../../packages/demo/weights.safetensors"));
    put(super::MANIFEST, include_bytes!("../../packages/demo/MANIFEST.sha256"));
    put(super::SIGNATURE, include_bytes!("../../packages/demo/SIGNATURE.json"));
    m
}

/// Read a package's files without judging them.
pub fn read_files(source: &super::PackageSource) -> Result<BTreeMap<String, FileData>, PackageError> {
    read_files_with(source, IN_MEMORY_MAX)
}

/// As [`read_files`], holding files up to `in_memory_max` bytes in memory.
pub fn read_files_with(
    source: &super::PackageSource,
    in_memory_max: u64,
) -> Result<BTreeMap<String, FileData>, PackageError> {
    match source {
        super::PackageSource::BuiltInDemo => Ok(built_in_demo()),
        super::PackageSource::Dir(dir) => {
            let mut out = BTreeMap::new();
            let mut total = 0u64;
            read_dir_into(dir, "", in_memory_max, &mut out, &mut total)?;
            Ok(out)
        }
        super::PackageSource::Tar(path) => read_tar(path),
    }
}

pub(super) fn io(p: &Path, e: std::io::Error) -> PackageError {
    PackageError::Io(format!("{}: {e}", p.display()))
}

fn read_dir_into(
    dir: &Path,
    prefix: &str,
    in_memory_max: u64,
    out: &mut BTreeMap<String, FileData>,
    total: &mut u64,
) -> Result<(), PackageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name().to_str().map(str::to_string).ok_or_else(|| {
            PackageError::Layout(format!("{}: a file name that is not UTF-8", entry.path().display()))
        })?;
        let rel = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| io(&entry.path(), e))?;
        if meta.is_dir() {
            read_dir_into(&entry.path(), &format!("{rel}/"), in_memory_max, out, total)?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > MAX_FOLDER_PACKAGE_BYTES {
                return Err(PackageError::Layout(format!("larger than {MAX_FOLDER_PACKAGE_BYTES} bytes")));
            }
            // model.toml, the manifest and the signature are read whole (and must be small).
            let metadata = [MODEL_TOML, super::MANIFEST, super::SIGNATURE].contains(&rel.as_str());
            if metadata && meta.len() > METADATA_MAX {
                return Err(PackageError::Layout(format!("{rel}: {} bytes, more than {METADATA_MAX}", meta.len())));
            }
            let data = if meta.len() > in_memory_max && !metadata {
                let path = entry.path();
                let (sha256, size) = sha256_file(&path).map_err(|e| io(&path, e))?;
                FileData::Disk { path, size, sha256 }
            } else {
                FileData::Bytes(std::fs::read(entry.path()).map_err(|e| io(&entry.path(), e))?)
            };
            out.insert(rel, data);
        } else {
            return Err(PackageError::Layout(format!("{rel}: not a regular file (links are refused)")));
        }
    }
    Ok(())
}

fn read_tar(path: &Path) -> Result<BTreeMap<String, FileData>, PackageError> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut archive = tar::Archive::new(file);
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(|e| io(path, e))? {
        let mut entry = entry.map_err(|e| io(path, e))?;
        let kind = entry.header().entry_type();
        let name = entry.path().map_err(|e| io(path, e))?.to_string_lossy().trim_start_matches("./").to_string();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(PackageError::Layout(format!("{name}: not a regular file in the tar (links are refused)")));
        }
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(PackageError::Layout(format!("{name}: a path outside the package")));
        }
        let size = entry.header().size().map_err(|e| io(path, e))?;
        total += size;
        if total > MAX_PACKAGE_BYTES {
            return Err(PackageError::Layout(format!(
                "larger than {MAX_PACKAGE_BYTES} bytes: a package this large is installed as a folder, not a .tar"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(|e| io(path, e))?;
        if out.insert(name.clone(), FileData::Bytes(bytes)).is_some() {
            return Err(PackageError::Layout(format!("{name}: twice in the tar")));
        }
    }
    Ok(out)
}

/// Write the package's files as a reproducible tar (sorted, mtime 0, root-owned, 0644); files
/// left on disk are streamed in.
pub fn pack_tar(files: &BTreeMap<String, FileData>, out: &Path) -> Result<(), PackageError> {
    crlm_core::fsutil::write_atomic_with(out, 0o644, |w| {
        let mut builder = tar::Builder::new(w);
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len());
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            match data {
                FileData::Bytes(b) => builder.append_data(&mut h, name, b.as_slice())?,
                FileData::Disk { path, .. } => builder.append_data(&mut h, name, std::fs::File::open(path)?)?,
            }
        }
        builder.finish()
    })
    .map_err(|e| io(out, e))
}

//! Model packages: a folder (or a `.tar` of it) holding `model.toml`, `weights.safetensors`, a
//! SHA-256 manifest of every file and an Ed25519 signature over the manifest. A package is used
//! only after every hash and the signature check out and the signer is trusted; the error names
//! the file that failed. The demo package is built into the binary (the default model).

pub mod files;
pub mod parts;
pub mod signing;
pub mod spec;

pub use files::{FileData, MAX_PACKAGE_BYTES, pack_tar, read_files};
pub use signing::{MANIFEST, SIGNATURE};
pub use spec::{Modality, ModelSpec};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MODEL_TOML: &str = "model.toml";
/// The built-in architecture.
pub const ARCHITECTURE_V1: &str = "crlm-net-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("model package I/O: {0}")]
    Io(String),
    #[error("model package layout: {0}")]
    Layout(String),
    #[error("{MANIFEST}: {0}")]
    Manifest(String),
    #[error("{0}: SHA-256 does not match the manifest (the file was altered)")]
    HashMismatch(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("key: {0}")]
    Key(String),
    #[error("{MODEL_TOML}: {0}")]
    Spec(String),
}

/// Which keys may sign packages the appliance will run.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// The study's keys (from the configuration).
    pub keys: Vec<VerifyingKey>,
}

impl TrustStore {
    /// Read public keys (hex) from files.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, PackageError> {
        let mut keys = Vec::new();
        for p in paths {
            let text = std::fs::read_to_string(p).map_err(|e| PackageError::Io(format!("{}: {e}", p.display())))?;
            keys.push(
                signing::parse_public_key(&text).map_err(|e| PackageError::Key(format!("{}: {e}", p.display())))?,
            );
        }
        Ok(TrustStore { keys })
    }
}

/// Who vouches for a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// A key in the configured trust store.
    Study,
    /// The committed demo key (demo packages only).
    Demo,
}

/// Where a package came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageSource {
    Dir(PathBuf),
    Tar(PathBuf),
    /// The demo package built into the binary.
    BuiltInDemo,
}

impl PackageSource {
    /// A path: a `.tar` file or a folder.
    pub fn from_path(path: &Path) -> Self {
        if path.is_file() { PackageSource::Tar(path.to_path_buf()) } else { PackageSource::Dir(path.to_path_buf()) }
    }
    pub fn describe(&self) -> String {
        match self {
            PackageSource::Dir(p) | PackageSource::Tar(p) => p.display().to_string(),
            PackageSource::BuiltInDemo => "built-in demo package".into(),
        }
    }
}

/// A verified package.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub spec: ModelSpec,
    /// SHA-256 of the manifest: the model's identity.
    pub sha256: String,
    pub signer_key_id: String,
    pub trust: Trust,
    pub source: PackageSource,
    /// Every file, by '/'-separated relative name (large files of a folder package on disk).
    pub files: BTreeMap<String, FileData>,
}

impl ModelPackage {
    /// The safetensors weights, when the package carries them (in memory).
    pub fn weights(&self) -> Option<&[u8]> {
        self.spec.weights.as_ref().and_then(|w| self.file(&w.file))
    }
    /// A file of the package held in memory (an ONNX graph, say); `None` for one left on disk.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).and_then(FileData::bytes)
    }
    /// A file's bytes: from memory, or read from disk and checked against its verified hash.
    pub fn read(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>, PackageError> {
        match self.files.get(name) {
            Some(FileData::Bytes(b)) => Ok(std::borrow::Cow::Borrowed(b)),
            Some(FileData::Disk { path, sha256, .. }) => {
                let bytes = std::fs::read(path).map_err(|e| files::io(path, e))?;
                if &crate::sha256_hex(&bytes) != sha256 {
                    return Err(PackageError::HashMismatch(name.to_string()));
                }
                Ok(std::borrow::Cow::Owned(bytes))
            }
            None => Err(PackageError::Layout(format!("{name} is not in the package"))),
        }
    }
    /// The path of a file of a folder package, hashed again now (it may be gigabytes that a
    /// runtime will read itself): refused when it changed since verification. `None` for a
    /// package that is not a folder.
    pub fn verified_path(&self, name: &str) -> Result<Option<PathBuf>, PackageError> {
        let PackageSource::Dir(dir) = &self.source else { return Ok(None) };
        let data = self.files.get(name).ok_or_else(|| PackageError::Layout(format!("{name} is not in the package")))?;
        let path = dir.join(name);
        let (sha, _) = files::sha256_file(&path).map_err(|e| files::io(&path, e))?;
        if sha != data.sha256() {
            return Err(PackageError::HashMismatch(name.to_string()));
        }
        Ok(Some(path))
    }
    /// Load and verify.
    pub fn load(source: &PackageSource, trust: &TrustStore) -> Result<Self, PackageError> {
        let files = read_files(source)?;
        verify_files(files, source.clone(), trust)
    }
}

/// Check signature, trust, every hash, and the spec.
pub fn verify_files(
    mut files: BTreeMap<String, FileData>,
    source: PackageSource,
    trust: &TrustStore,
) -> Result<ModelPackage, PackageError> {
    // The manifest, signature and model.toml are small: held in memory, or not a package.
    let small = |name: &str| -> Result<Option<&[u8]>, PackageError> {
        match files.get(name) {
            None => Ok(None),
            Some(FileData::Bytes(b)) => Ok(Some(b)),
            Some(FileData::Disk { size, .. }) => Err(PackageError::Layout(format!("{name}: {size} bytes, too large"))),
        }
    };
    let manifest = small(MANIFEST)?.ok_or_else(|| {
        PackageError::Layout(format!("{MANIFEST} is missing: the package is not signed (see `crlm model sign`)"))
    })?;
    let sig_bytes = small(SIGNATURE)?
        .ok_or_else(|| PackageError::Layout(format!("{SIGNATURE} is missing: the package is not signed")))?;
    let sig: signing::SignatureFile = serde_json::from_slice(sig_bytes)
        .map_err(|e| PackageError::Signature(format!("{SIGNATURE} is not valid: {e}")))?;
    let signer = signing::verify_signature(manifest, &sig)?;
    let manifest_text = std::str::from_utf8(manifest).map_err(|_| PackageError::Manifest("not UTF-8".into()))?;
    let listed = signing::parse_manifest(manifest_text)?;
    for (name, want) in &listed {
        let data =
            files.get(name).ok_or_else(|| PackageError::Layout(format!("{name} is in the manifest but missing")))?;
        if &data.sha256() != want {
            return Err(PackageError::HashMismatch(name.clone()));
        }
    }
    if let Some(extra) = files.keys().find(|n| *n != MANIFEST && *n != SIGNATURE && !listed.contains_key(*n)) {
        return Err(PackageError::Layout(format!("{extra} is not in the manifest (added after signing)")));
    }
    let spec_bytes = small(MODEL_TOML)?.ok_or_else(|| PackageError::Layout(format!("{MODEL_TOML} is missing")))?;
    let spec = parse_spec(spec_bytes)?;
    let is_demo_key = signing::demo_public_key().is_ok_and(|k| k == signer);
    let trust_level = if trust.keys.contains(&signer) {
        Trust::Study
    } else if is_demo_key && spec.demo {
        Trust::Demo
    } else if is_demo_key {
        return Err(PackageError::Signature(
            "signed with the public demo key but not marked demo = true: refused (the demo key is public)".into(),
        ));
    } else {
        return Err(PackageError::Signature(format!(
            "signed by key {} which is not trusted (add its .pub file to model.trusted_keys)",
            signing::key_id(&signer)
        )));
    };
    let mut named: Vec<&str> = spec.weights.iter().map(|w| w.file.as_str()).collect();
    let parts = spec.graph_parts();
    named.extend(parts.iter().flat_map(|p| p.present()).map(|(_, g)| g.file.as_str()));
    if let Some(missing) = named.iter().find(|f| !files.contains_key(**f)) {
        return Err(PackageError::Layout(format!("{missing} (named in {MODEL_TOML}) is missing")));
    }
    let sha256 = crate::sha256_hex(manifest);
    files.remove(SIGNATURE);
    Ok(ModelPackage { spec, sha256, signer_key_id: signing::key_id(&signer), trust: trust_level, source, files })
}

/// Parse and check `model.toml`.
pub fn parse_spec(bytes: &[u8]) -> Result<ModelSpec, PackageError> {
    let text = std::str::from_utf8(bytes).map_err(|_| PackageError::Spec("not UTF-8".into()))?;
    let spec: ModelSpec = toml::from_str(text).map_err(|e| PackageError::Spec(e.to_string()))?;
    let bad = |m: String| Err(PackageError::Spec(m));
    match spec.format {
        spec::SPEC_FORMAT => check_v1(&spec)?,
        spec::SPEC_FORMAT_PARTS => check_v2(&spec)?,
        other => {
            return bad(format!(
                "format {other} is not supported (this build reads {} and {})",
                spec::SPEC_FORMAT,
                spec::SPEC_FORMAT_PARTS
            ));
        }
    }
    if !(0.0..=1.0).contains(&spec.decision.threshold) {
        return bad("decision.threshold must be within 0..1".into());
    }
    let time = spec.time_axis();
    if let Some(p) = time.problem() {
        return bad(p);
    }
    if spec.modalities.allowed.is_empty() {
        return bad("modalities.allowed is empty: nothing could ever be predicted".into());
    }
    if spec.slide.tile_px < 8 || spec.slide.tile_batch == Some(0) {
        return bad("slide.tile_px (>= 8) and slide.tile_batch must be positive".into());
    }
    if spec.slide.tile_mean.is_some() != spec.slide.tile_std.is_some()
        || spec.slide.tile_std.is_some_and(|s| s.iter().any(|v| v.is_nan() || *v <= 0.0))
    {
        return bad("slide.tile_mean and slide.tile_std go together, every std positive".into());
    }
    Ok(spec)
}

/// Format 1: CRLM-Net v1, its sizes, weights and/or its five graphs.
fn check_v1(spec: &ModelSpec) -> Result<(), PackageError> {
    let bad = |m: String| Err(PackageError::Spec(m));
    if spec.architecture != ARCHITECTURE_V1 {
        return bad(format!(
            "architecture {:?} is not built in (only {ARCHITECTURE_V1}); any other network is a format 2 \
             package of ONNX parts (docs/MODEL.md)",
            spec.architecture
        ));
    }
    if spec.parts.is_some() {
        return bad("[parts] is format 2: set format = 2 (and drop [network])".into());
    }
    let Some(network) = &spec.network else { return bad("format 1 needs [network] (CRLM-Net's sizes)".into()) };
    if spec.weights.is_none() && spec.onnx.is_none() {
        return bad("neither [weights] nor [onnx]: the package has no network".into());
    }
    if let Some(onnx) = &spec.onnx {
        for (part, g, n_in, n_out) in onnx.parts() {
            if g.inputs.len() != n_in || g.outputs.len() != n_out {
                return bad(format!("onnx.{part} must name {n_in} input(s) and {n_out} output(s) (docs/BACKENDS.md)"));
            }
        }
    }
    let time = spec.time_axis();
    if network.intervals == 0 || time.outputs() != network.intervals {
        return bad(format!(
            "the time axis has {} outputs, network.intervals is {}",
            time.outputs(),
            network.intervals
        ));
    }
    Ok(())
}

/// Format 2: named ONNX parts, a declared time axis, tile normalisation when slides are used.
fn check_v2(spec: &ModelSpec) -> Result<(), PackageError> {
    let bad = |m: String| Err(PackageError::Spec(m));
    let Some(parts) = &spec.parts else { return bad("format 2 needs [parts] (the model's ONNX graphs)".into()) };
    if spec.network.is_some() || spec.weights.is_some() || spec.onnx.is_some() {
        return bad("[network], [weights] and [onnx] are format 1 (CRLM-Net v1); format 2 has [parts]".into());
    }
    if spec.time.is_none() {
        return bad("format 2 needs [time]: hazard interval edges in months, or a risk output and its horizon".into());
    }
    let problems = parts.problems();
    if !problems.is_empty() {
        return bad(problems.join("; "));
    }
    let uses = |m: Modality| spec.modalities.allowed.iter().any(|s| s.contains(&m));
    if uses(Modality::Slide) {
        if parts.tile_encoder.is_none() {
            return bad("slides are allowed but there is no parts.tile_encoder".into());
        }
        if spec.slide.tile_mean.is_none() {
            return bad("format 2 with slides needs slide.tile_mean and slide.tile_std".into());
        }
    }
    for (m, role) in [(Modality::Ct, "ct"), (Modality::Slide, "slide"), (Modality::Clinical, "clinical")] {
        let read = parts.fusion.input(role).is_some();
        if uses(m) && !read {
            return bad(format!("{} is an allowed modality but parts.fusion has no {role:?} input", m.name()));
        }
        // Without a mask the fusion cannot tell a missing modality from zeros.
        let optional = spec.modalities.allowed.iter().any(|s| !s.contains(&m));
        if read && optional && parts.fusion.input("mask").is_none() {
            return bad(format!(
                "{} may be missing (modalities.allowed) but parts.fusion has no \"mask\" input to say so",
                m.name()
            ));
        }
    }
    Ok(())
}

/// Write the manifest and signature for the package folder `dir` (atomically, each file).
pub fn sign_dir(dir: &Path, key: &SigningKey) -> Result<String, PackageError> {
    let mut files = read_files(&PackageSource::Dir(dir.to_path_buf()))?;
    files.remove(MANIFEST);
    files.remove(SIGNATURE);
    let spec = files
        .get(MODEL_TOML)
        .and_then(FileData::bytes)
        .ok_or_else(|| PackageError::Layout(format!("{MODEL_TOML} is missing")))?;
    parse_spec(spec)?;
    let manifest = signing::manifest_text(&files);
    let sig = signing::sign_manifest(manifest.as_bytes(), key);
    let sig_json = serde_json::to_string_pretty(&sig).map_err(|e| PackageError::Io(e.to_string()))? + "\n";
    write_atomic(&dir.join(MANIFEST), manifest.as_bytes())?;
    write_atomic(&dir.join(SIGNATURE), sig_json.as_bytes())?;
    Ok(crate::sha256_hex(manifest.as_bytes()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    crlm_core::fsutil::write_atomic(path, bytes, 0o644).map_err(|e| files::io(path, e))
}

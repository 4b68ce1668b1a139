//! The manifest (`MANIFEST.sha256`, `sha256sum` format, so `sha256sum -c` works too) and its
//! Ed25519 signature (`SIGNATURE.json`). The package's identity is the SHA-256 of the manifest:
//! it covers every file, so one hash names the exact model everywhere.

use super::PackageError;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const MANIFEST: &str = "MANIFEST.sha256";
pub const SIGNATURE: &str = "SIGNATURE.json";
/// Current `SIGNATURE.json` format.
pub const SIGNATURE_FORMAT: u32 = 1;

/// The public key of the demo package. Its private key is committed (models/packages/demo.key)
/// so anyone can rebuild the demo; it is therefore trusted for `demo = true` packages only.
pub const DEMO_PUBLIC_KEY: &str = include_str!("../../packages/demo.pub");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: u32,
    pub algorithm: String,
    /// Hex of the 32-byte Ed25519 public key that signed.
    pub public_key: String,
    /// Hex of the 64-byte signature over the exact bytes of MANIFEST.sha256.
    pub signature: String,
}

/// The manifest text for these files (every file but the manifest and the signature), sorted.
pub fn manifest_text(files: &BTreeMap<String, super::FileData>) -> String {
    let mut s = String::new();
    for (name, data) in files {
        if name != MANIFEST && name != SIGNATURE {
            s.push_str(&format!("{}  {name}\n", data.sha256()));
        }
    }
    s
}

/// Parse the manifest into name -> hash, refusing malformed lines and duplicates.
pub fn parse_manifest(text: &str) -> Result<BTreeMap<String, String>, PackageError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| PackageError::Manifest(format!("line {}: {why}", i + 1));
        let (hash, name) = line.split_once("  ").ok_or_else(|| bad("expected '<sha256>  <file>'"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not a SHA-256"));
        }
        if out.insert(name.to_string(), hash.to_ascii_lowercase()).is_some() {
            return Err(bad("file listed twice"));
        }
    }
    Ok(out)
}

/// Key id: the first 16 hex digits of the SHA-256 of the public key.
pub fn key_id(public: &VerifyingKey) -> String {
    crate::sha256_hex(public.as_bytes())[..16].to_string()
}

pub fn parse_public_key(hex_text: &str) -> Result<VerifyingKey, PackageError> {
    let bytes: [u8; 32] = hex::decode(hex_text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::Key("a public key is 64 hex digits (32 bytes)".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| PackageError::Key(format!("not an Ed25519 public key: {e}")))
}

pub fn demo_public_key() -> Result<VerifyingKey, PackageError> {
    parse_public_key(DEMO_PUBLIC_KEY)
}

/// A new signing key from the operating system's random source.
pub fn generate_key() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// Write a new key pair: `path` (hex seed, mode 0600, never overwritten) and the public key at
/// `path` with extension `.pub`.
pub fn write_new_key(path: &Path) -> Result<VerifyingKey, PackageError> {
    write_key_pair(path, &generate_key())
}

/// Write `key` as a key pair: `path` (hex seed, mode 0600, never overwritten: an existing file is
/// an error) and the public key (hex, 0644) at `path` with extension `.pub`, both durably.
pub fn write_key_pair(path: &Path, key: &SigningKey) -> Result<VerifyingKey, PackageError> {
    let err = |p: &Path, e: std::io::Error| PackageError::Io(format!("{}: {e}", p.display()));
    crlm_core::fsutil::write_new(path, format!("{}\n", hex::encode(key.to_bytes())).as_bytes(), 0o600)
        .map_err(|e| err(path, e))?;
    let public = key.verifying_key();
    let pub_path = path.with_extension("pub");
    crlm_core::fsutil::write_atomic(&pub_path, format!("{}\n", hex::encode(public.as_bytes())).as_bytes(), 0o644)
        .map_err(|e| err(&pub_path, e))?;
    Ok(public)
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, PackageError> {
    let text = std::fs::read_to_string(path).map_err(|e| PackageError::Io(format!("{}: {e}", path.display())))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::Key(format!("{}: a signing key is 64 hex digits", path.display())))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Sign manifest bytes.
pub fn sign_manifest(manifest: &[u8], key: &SigningKey) -> SignatureFile {
    SignatureFile {
        format: SIGNATURE_FORMAT,
        algorithm: "ed25519".into(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(key.sign(manifest).to_bytes()),
    }
}

/// Check the signature over the manifest; returns the signer's key.
pub fn verify_signature(manifest: &[u8], sig: &SignatureFile) -> Result<VerifyingKey, PackageError> {
    if sig.format != SIGNATURE_FORMAT || sig.algorithm != "ed25519" {
        return Err(PackageError::Signature(format!(
            "{SIGNATURE}: format {} / algorithm {} is not supported (want format {SIGNATURE_FORMAT}, ed25519)",
            sig.format, sig.algorithm
        )));
    }
    let key = parse_public_key(&sig.public_key)?;
    let bytes: [u8; 64] = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::Signature(format!("{SIGNATURE}: the signature is not 128 hex digits")))?;
    key.verify(manifest, &Signature::from_bytes(&bytes)).map_err(|_| {
        PackageError::Signature(format!("{SIGNATURE}: the signature does not match {MANIFEST} (altered or re-signed)"))
    })?;
    Ok(key)
}

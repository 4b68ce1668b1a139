//! Model packages: signing, verification, and refusal of anything altered, naming the file.

use crlm_models::inference::Model;
use crlm_models::package::{
    self, MANIFEST, ModelPackage, PackageError, PackageSource, SIGNATURE, Trust, TrustStore, signing,
};
use std::path::{Path, PathBuf};

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/demo")
}

/// A copy of the demo package's model.toml and weights, signed with `key`.
fn signed_copy(dir: &Path, key: &ed25519_dalek::SigningKey, demo: bool) -> PathBuf {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let toml = std::fs::read_to_string(demo_dir().join("model.toml")).unwrap();
    let toml = if demo { toml } else { toml.replace("demo = true", "demo = false") };
    std::fs::write(pkg.join("model.toml"), toml).unwrap();
    std::fs::copy(demo_dir().join("weights.safetensors"), pkg.join("weights.safetensors")).unwrap();
    package::sign_dir(&pkg, key).unwrap();
    pkg
}

fn demo_key() -> ed25519_dalek::SigningKey {
    signing::read_signing_key(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/demo.key")).unwrap()
}

fn load(pkg: &Path, trust: &TrustStore) -> Result<ModelPackage, PackageError> {
    ModelPackage::load(&PackageSource::from_path(pkg), trust)
}

#[test]
fn the_built_in_demo_package_verifies_and_builds() {
    let p = ModelPackage::load(&PackageSource::BuiltInDemo, &TrustStore::default()).unwrap();
    assert!(p.spec.demo);
    assert_eq!(p.trust, Trust::Demo);
    // The committed folder and the built-in copy are the same package.
    let from_dir = load(&demo_dir(), &TrustStore::default()).unwrap();
    assert_eq!(p.sha256, from_dir.sha256);
    Model::new(p).unwrap();
}

#[test]
fn a_tampered_weight_byte_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = signed_copy(tmp.path(), &demo_key(), true);
    load(&pkg, &TrustStore::default()).unwrap();
    let w = pkg.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let i = bytes.len() - 7;
    bytes[i] ^= 0x01;
    std::fs::write(&w, bytes).unwrap();
    let err = load(&pkg, &TrustStore::default()).unwrap_err();
    assert_eq!(err, PackageError::HashMismatch("weights.safetensors".into()));
    assert!(err.to_string().contains("weights.safetensors"));
}

#[test]
fn a_changed_manifest_line_breaks_the_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = signed_copy(tmp.path(), &demo_key(), true);
    // Re-hash the altered weights into the manifest without re-signing: the signature fails.
    let w = pkg.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let i = bytes.len() - 3;
    bytes[i] ^= 0x80;
    std::fs::write(&w, &bytes).unwrap();
    let manifest = std::fs::read_to_string(pkg.join(MANIFEST)).unwrap();
    let fixed: String = manifest
        .lines()
        .map(|l| {
            if l.ends_with("weights.safetensors") {
                format!("{}  weights.safetensors\n", crlm_models::sha256_hex(&bytes))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(pkg.join(MANIFEST), fixed).unwrap();
    let err = load(&pkg, &TrustStore::default()).unwrap_err();
    assert!(matches!(err, PackageError::Signature(_)), "{err}");
    assert!(err.to_string().contains(MANIFEST), "{err}");
}

#[test]
fn added_or_missing_files_and_a_missing_signature_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = signed_copy(tmp.path(), &demo_key(), true);
    std::fs::write(pkg.join("extra.bin"), b"x").unwrap();
    let err = load(&pkg, &TrustStore::default()).unwrap_err();
    assert!(err.to_string().contains("extra.bin"), "{err}");
    std::fs::remove_file(pkg.join("extra.bin")).unwrap();
    std::fs::rename(pkg.join("weights.safetensors"), tmp.path().join("w")).unwrap();
    let err = load(&pkg, &TrustStore::default()).unwrap_err();
    assert!(err.to_string().contains("weights.safetensors"), "{err}");
    std::fs::rename(tmp.path().join("w"), pkg.join("weights.safetensors")).unwrap();
    std::fs::remove_file(pkg.join(SIGNATURE)).unwrap();
    let err = load(&pkg, &TrustStore::default()).unwrap_err();
    assert!(err.to_string().contains(SIGNATURE), "{err}");
}

#[test]
fn only_trusted_keys_may_sign_and_the_demo_key_only_demo_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let key_path = tmp.path().join("study.key");
    let public = signing::write_new_key(&key_path).unwrap();
    let key = signing::read_signing_key(&key_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let pkg = signed_copy(&tmp.path().join("a"), &key, false);
    let err = load(&pkg, &TrustStore::default()).unwrap_err();
    assert!(err.to_string().contains(&signing::key_id(&public)), "{err}");
    let trust = TrustStore::from_files(&[key_path.with_extension("pub")]).unwrap();
    assert_eq!(load(&pkg, &trust).unwrap().trust, Trust::Study);

    let not_demo = signed_copy(&tmp.path().join("b"), &demo_key(), false);
    let err = load(&not_demo, &trust).unwrap_err();
    assert!(err.to_string().contains("demo"), "{err}");
}

#[test]
fn a_tar_of_the_package_is_the_same_package() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = signed_copy(tmp.path(), &demo_key(), true);
    let p = load(&pkg, &TrustStore::default()).unwrap();
    let tar = tmp.path().join("pkg.tar");
    package::pack_tar(&package::read_files(&PackageSource::Dir(pkg.clone())).unwrap(), &tar).unwrap();
    let t = load(&tar, &TrustStore::default()).unwrap();
    assert_eq!(t.sha256, p.sha256);
    assert!(matches!(t.source, PackageSource::Tar(_)));
}

//! TLS for `mqtts://` (rustls with the ring provider, pure Rust plus ring's assembly, which
//! cross-compiles to aarch64): the broker is verified against `mqtt.ca_file`, or the system's
//! roots when none is set; with `client_cert_file` and `client_key_file` the box also proves
//! itself (mutual TLS).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("no trusted CA: mqtt.ca_file is empty and the system has no root certificates")]
    NoRoots,
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), why: why.to_string() }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The client side of TLS: whom to trust, and (optionally) who we are.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert_and_key: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client_cert_and_key {
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = client_config(Some(&d.path().join("ca.pem")), None).unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        std::fs::write(d.path().join("empty.pem"), "not a certificate\n").unwrap();
        let e = client_config(Some(&d.path().join("empty.pem")), None).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}

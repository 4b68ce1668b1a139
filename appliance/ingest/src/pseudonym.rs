//! Case pseudonyms: a keyed HMAC-SHA-256 of the PatientID with a site secret created at first
//! start and kept on the box (mode 0600). The same patient always gets the same pseudonym on this
//! box; without the secret the pseudonym cannot be linked back. The mapping back stays in the
//! state database, on the box.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;

pub struct SiteSecret([u8; 32]);

impl SiteSecret {
    /// Load the secret from `path`, creating it (atomically, mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&bytes);
                Ok(SiteSecret(k))
            }
            Ok(bytes) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "site secret {} has {} bytes, expected 32: restore it from backup",
                    path.display(),
                    bytes.len()
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                rand::rng().fill_bytes(&mut k);
                crlm_core::fsutil::write_atomic(path, &k, 0o600)?;
                Ok(SiteSecret(k))
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, domain: &str, value: &str) -> String {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        m.update(domain.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        hex::encode_upper(&m.finalize().into_bytes()[..6])
    }

    /// The case pseudonym for a PatientID: `P-` and 12 hex digits.
    pub fn patient_pseudonym(&self, patient_id: &str) -> String {
        format!("P-{}", self.mac("patient", patient_id.trim()))
    }

    /// A keyed reference (`R-` and 32 hex digits) for a value that must not leave the box, such
    /// as a DICOM UID: stable on this box, and only this box (holding the secret) can check it.
    pub fn keyed_ref(&self, domain: &str, value: &str) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        m.update(domain.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        format!("R-{}", hex::encode(&m.finalize().into_bytes()[..16]))
    }

    /// A pseudonym for a case whose patient is not known yet (e.g. only a slide arrived).
    pub fn case_pseudonym(&self, case_key: &str) -> String {
        format!("C-{}", self.mac("case", case_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_not_the_id() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys/site.secret");
        let a = SiteSecret::load_or_create(&p).unwrap();
        let b = SiteSecret::load_or_create(&p).unwrap();
        assert_eq!(a.patient_pseudonym("123456"), b.patient_pseudonym("123456"));
        assert_ne!(a.patient_pseudonym("123456"), a.patient_pseudonym("123457"));
        assert!(!a.patient_pseudonym("123456").contains("123456"));
        let other = SiteSecret::load_or_create(&d.path().join("other")).unwrap();
        assert_ne!(a.patient_pseudonym("123456"), other.patient_pseudonym("123456"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

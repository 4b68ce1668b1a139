//! Signed MQTT messages. A broker authenticates clients at best, and any client it lets in can
//! publish on any topic its ACL allows, so neither end acts on a message because of where it
//! arrived: every box message carries the box's Ed25519 signature (its ledger key, registered
//! with the study office) and every ack the collector's.
//!
//! A signed payload is the message's JSON object with one more member, `auth`:
//! `{"key_id": "<16 hex>", "sig": "<128 hex>"}`. The signature is over
//! [`signed_bytes`]: a fixed prefix naming who signs, the topic (so a message cannot be replayed
//! on another box's topic or another leaf) and the object without `auth` as canonical JSON
//! (members ordered by name, no whitespace; serde_json's maps are ordered and its floats
//! round-trip, so the receiver rebuilds the exact bytes from what it parsed).

use crlm_ledger::key_id;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who signs: the prefix of the signed bytes, so a signature of one kind can mean nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// A box: results, alerts, status, heartbeats.
    Box,
    /// The study office's collector: acks.
    Collector,
}

impl Party {
    fn prefix(self) -> &'static [u8] {
        match self {
            Party::Box => b"crlm-mqtt-box-message-v1\n",
            Party::Collector => b"crlm-mqtt-collector-ack-v1\n",
        }
    }
}

/// The `auth` member of a signed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The signing key's id (the first 16 hex of its SHA-256, as the ledger names keys).
    pub key_id: String,
    /// Ed25519 over [`signed_bytes`], hex.
    pub sig: String,
}

/// Why a payload is not a verified message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not a JSON object")]
    NotJson,
    #[error("unsigned (no auth member)")]
    Unsigned,
    #[error("its auth member is malformed")]
    BadAuth,
    #[error("signed with key {0}, which is not the key registered for this sender")]
    UnknownKey(String),
    #[error("the signature does not verify (changed, or signed for another topic)")]
    BadSignature,
}

/// The bytes signed for `object` (without `auth`) published on `topic`.
pub fn signed_bytes(signer: Party, topic: &str, object: &Map<String, Value>) -> Vec<u8> {
    let mut out = signer.prefix().to_vec();
    out.extend_from_slice(topic.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&serde_json::to_vec(object).unwrap_or_default());
    out
}

/// Sign a JSON object payload for `topic`; an `auth` member already there is replaced.
pub fn seal(signer: Party, topic: &str, payload: &[u8], key: &SigningKey) -> Result<Vec<u8>, AuthError> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(payload) else {
        return Err(AuthError::NotJson);
    };
    object.remove("auth");
    let sig = key.sign(&signed_bytes(signer, topic, &object));
    let auth = Auth { key_id: key_id(&key.verifying_key()), sig: hex::encode(sig.to_bytes()) };
    object.insert("auth".into(), serde_json::to_value(auth).map_err(|_| AuthError::BadAuth)?);
    serde_json::to_vec(&object).map_err(|_| AuthError::NotJson)
}

/// A payload split into its object (without `auth`) and its `auth`, not yet verified.
#[derive(Debug, Clone)]
pub struct Opened {
    pub object: Map<String, Value>,
    pub auth: Auth,
}

impl Opened {
    /// Split a received payload.
    pub fn new(payload: &[u8]) -> Result<Opened, AuthError> {
        let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(payload) else {
            return Err(AuthError::NotJson);
        };
        let auth = object.remove("auth").ok_or(AuthError::Unsigned)?;
        let auth: Auth = serde_json::from_value(auth).map_err(|_| AuthError::BadAuth)?;
        Ok(Opened { object, auth })
    }

    /// Verify with the one key registered for the sender.
    pub fn verify(&self, signer: Party, topic: &str, key: &VerifyingKey) -> Result<(), AuthError> {
        if key_id(key) != self.auth.key_id {
            return Err(AuthError::UnknownKey(self.auth.key_id.clone()));
        }
        let sig =
            hex::decode(&self.auth.sig).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).ok_or(AuthError::BadAuth)?;
        key.verify(&signed_bytes(signer, topic, &self.object), &Signature::from_bytes(&sig))
            .map_err(|_| AuthError::BadSignature)
    }

    /// Verify with whichever of `keys` the payload names.
    pub fn verify_any(&self, signer: Party, topic: &str, keys: &[VerifyingKey]) -> Result<(), AuthError> {
        match keys.iter().find(|k| key_id(k) == self.auth.key_id) {
            Some(k) => self.verify(signer, topic, k),
            None => Err(AuthError::UnknownKey(self.auth.key_id.clone())),
        }
    }

    /// Read the verified object as a typed payload.
    pub fn parse<T: serde::de::DeserializeOwned>(self) -> Option<T> {
        serde_json::from_value(Value::Object(self.object)).ok()
    }
}

/// SHA-256 (hex) of a payload's content: its object without `auth`, canonical. The box and the
/// collector compute it alike from what each holds (the box its unsigned outbox row, the
/// collector the signed message it stored), so an ack can name exactly the message it covers.
pub fn content_sha256(payload: &[u8]) -> Option<String> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(payload) else { return None };
    object.remove("auth");
    Some(crlm_models::sha256_hex(&serde_json::to_vec(&object).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn a_sealed_payload_verifies_on_its_topic_only_with_its_key() {
        let k = key(1);
        let payload = br#"{"version":1,"kind":"result","z":0.1234567890123,"a":[1,2,{"y":null,"b":"x"}]}"#;
        let sealed = seal(Party::Box, "crlm/v1/s/d/result", payload, &k).unwrap();
        let opened = Opened::new(&sealed).unwrap();
        assert_eq!(opened.verify(Party::Box, "crlm/v1/s/d/result", &k.verifying_key()), Ok(()));
        // Another box's topic, another leaf, the other signer's prefix, another key: refused.
        let other_topic = opened.verify(Party::Box, "crlm/v1/s/other/result", &k.verifying_key());
        assert_eq!(other_topic, Err(AuthError::BadSignature));
        let other_leaf = opened.verify(Party::Box, "crlm/v1/s/d/alert", &k.verifying_key());
        assert_eq!(other_leaf, Err(AuthError::BadSignature));
        let other_signer = opened.verify(Party::Collector, "crlm/v1/s/d/result", &k.verifying_key());
        assert_eq!(other_signer, Err(AuthError::BadSignature));
        assert!(matches!(
            opened.verify(Party::Box, "crlm/v1/s/d/result", &key(2).verifying_key()),
            Err(AuthError::UnknownKey(_))
        ));
        // The content hash ignores the signature, so both ends compute the same.
        assert_eq!(content_sha256(&sealed), content_sha256(payload));
    }

    #[test]
    fn any_change_to_a_sealed_payload_breaks_its_signature() {
        let k = key(3);
        let sealed = seal(Party::Collector, "t", br#"{"through_seq":5,"stream":"result"}"#, &k).unwrap();
        let text = String::from_utf8(sealed).unwrap();
        let changed = text.replace("\"through_seq\":5", "\"through_seq\":1000");
        assert_ne!(changed, text);
        let opened = Opened::new(changed.as_bytes()).unwrap();
        assert_eq!(opened.verify(Party::Collector, "t", &k.verifying_key()), Err(AuthError::BadSignature));
        // A member added after signing is covered too.
        let added = text.replacen('{', "{\"extra\":1,", 1);
        let opened = Opened::new(added.as_bytes()).unwrap();
        assert_eq!(opened.verify(Party::Collector, "t", &k.verifying_key()), Err(AuthError::BadSignature));
        // Unsigned and malformed payloads say so.
        assert_eq!(Opened::new(br#"{"through_seq":5}"#).err(), Some(AuthError::Unsigned));
        assert_eq!(Opened::new(br#"{"auth":{"key_id":1}}"#).err(), Some(AuthError::BadAuth));
        assert_eq!(Opened::new(b"[1]").err(), Some(AuthError::NotJson));
    }
}

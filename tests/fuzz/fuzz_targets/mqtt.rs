//! Every MQTT payload as the box and the collector receive it: the typed messages, the signed
//! envelope, and the collector's whole receive path (a fresh in-memory database, one registered
//! box) on any topic. The input is `<topic> <payload>`, or a payload for a result topic.
#![no_main]
// The allocation cap (crlm_fuzz::MAX_ALLOCATION) is crlm_fuzz's global allocator.
use crlm_fuzz as _;
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

const BOX_KEY: [u8; 32] = [3; 32];

/// The collector's registry: one box, site01/box01, with the key above.
fn registry() -> &'static Mutex<crlm_fleet::Registry> {
    static R: OnceLock<Mutex<crlm_fleet::Registry>> = OnceLock::new();
    R.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("crlm-fuzz-devices-{}", std::process::id()));
        let public = ed25519_dalek::SigningKey::from_bytes(&BOX_KEY).verifying_key();
        let hex: String = public.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let _ = std::fs::create_dir_all(dir.join("site01"));
        let _ = std::fs::write(dir.join("site01/box01.pub"), hex);
        Mutex::new(crlm_fleet::Registry::load(Some(&dir)))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = crlm_mqtt::Message::parse(data);
    let _ = serde_json::from_slice::<crlm_mqtt::Ack>(data);
    let _ = crlm_mqtt::auth::content_sha256(data);
    let (topic, payload) = match data.iter().position(|b| *b == b' ') {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("crlm/v1/site01/box01/result".to_string(), data),
    };
    if let Ok(o) = crlm_mqtt::auth::Opened::new(payload) {
        let key = ed25519_dalek::SigningKey::from_bytes(&BOX_KEY).verifying_key();
        let _ = o.verify(crlm_mqtt::auth::Party::Box, &topic, &key);
        let _ = o.parse::<crlm_mqtt::Message>();
    }
    let Ok(mut registry) = registry().lock() else { return };
    let Ok(db) = crlm_fleet::open_db(std::path::Path::new(":memory:")) else { return };
    let collector = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let _ = crlm_fleet::receive(&db, &topic, payload, &mut registry, &collector);
});

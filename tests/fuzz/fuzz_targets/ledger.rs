//! The ledger reader and verifier on any file content, with any head file.
#![no_main]
// The allocation cap (crlm_fuzz::MAX_ALLOCATION) is crlm_fuzz's global allocator.
use crlm_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    // The last line, when it parses as one, is the head file.
    let (ledger, head) = match data.iter().rposition(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let _ = crlm_ledger::verify_bytes(ledger, head, &key);
    for line in ledger.split(|b| *b == b'\n') {
        if let Ok(r) = serde_json::from_slice::<crlm_ledger::Record>(line) {
            let _ = r.body();
            let _ = r.hash();
        }
    }
});

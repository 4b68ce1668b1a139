//! A model package's model.toml (read before its signature is checked against the manifest).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crlm_models::package::parse_spec(data);
});

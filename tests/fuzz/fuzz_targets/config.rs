//! The appliance configuration (TOML) with environment overrides, then its validation.
#![no_main]
// The allocation cap (crlm_fuzz::MAX_ALLOCATION) is crlm_fuzz's global allocator.
use crlm_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line, when it looks like one, is an environment override.
    let (env, text) = match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("CRLM_") => match first.split_once('=') {
            Some((k, v)) => (vec![(k.to_string(), v.to_string())], rest),
            None => (vec![], text),
        },
        _ => (vec![], text),
    };
    let _ = crlm_config::Config::from_sources(text, &env, None);
});

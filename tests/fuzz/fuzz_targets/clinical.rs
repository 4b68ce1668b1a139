//! The clinical file (JSON schema v1 or CSV) as lab staff export it.
#![no_main]
// The allocation cap (crlm_fuzz::MAX_ALLOCATION) is crlm_fuzz's global allocator.
use crlm_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crlm_models::clinical::sniff_clinical(data);
    if let Ok((_, records)) = crlm_models::clinical::parse_clinical(data) {
        for r in &records {
            let _ = r.hash();
        }
    }
});

//! The 12-bit JPEG decoder (extended, DICOM's 1.2.840.10008.1.2.4.51) on any bytes.
#![no_main]
// The allocation cap (crlm_fuzz::MAX_ALLOCATION) is crlm_fuzz's global allocator.
use crlm_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crlm_models::dicom::jpeg12::decode(data, 1 << 20);
});

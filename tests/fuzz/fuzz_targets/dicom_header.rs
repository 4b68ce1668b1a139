//! The DICOM header reader and its guard, on any bytes (a CT file on the share).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crlm_models::dicom::header::sniff_dicom(data);
    let path = crlm_fuzz::scratch(data, "dcm");
    if let Ok(h) = crlm_models::dicom::header::read_header(&path, &crlm_fuzz::limits()) {
        let _ = h.expected_native_bytes(&crlm_fuzz::limits());
    }
});

//! A one-file CT series through the whole loader: header, guard, pixel decode in every transfer
//! syntax the box accepts (native, RLE, JPEG baseline/extended/lossless, JPEG 2000, JPEG-LS where
//! built), rescale and geometry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = crlm_fuzz::scratch(data, "dcm");
    let _ = crlm_models::ct::load_series(&[path], &crlm_fuzz::limits());
});

//! A whole-slide image: TIFF/BigTIFF/SVS IFDs or a DICOM slide (header, frame table, pyramid),
//! then every level's first tile and a region across tile edges (JPEG, JPEG 2000, LZW, Deflate,
//! uncompressed tiles and strips; DICOM JPEG, JPEG 2000 and native frames).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = crlm_models::slide::sniff_tiff(data);
    let path = crlm_fuzz::scratch(data, "tif");
    let Ok(reader) = crlm_models::slide::read::SlideReader::open(&path, &crlm_fuzz::limits()) else { return };
    for level in 0..reader.level_count().min(4) {
        let _ = reader.read_tile(level, 0, 0);
        let _ = reader.read_tile(level, 1, 1);
        let _ = reader.read_region(level, 200, 200, 96, 96);
    }
});

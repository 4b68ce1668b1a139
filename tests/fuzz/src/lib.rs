//! What the fuzz targets share: limits small enough for libFuzzer's 40 MB allocation cap (the
//! readers check them before allocating, so a file claiming more is refused, not allocated), and
//! one scratch file per process that the file-reading parsers open like a file on the share.

use crlm_models::limits::Limits;
use std::io::Write;
use std::path::PathBuf;

/// Limits for fuzzing: every claim above them is an error before any allocation.
pub fn limits() -> Limits {
    Limits {
        max_dicom_pixel_bytes: 8 << 20,
        max_dicom_frames: 16,
        // Tiles are limited to this side too: 2048 x 2048 x 4 bytes stays under the 40 MB cap.
        max_slide_dimension: 2048,
        max_slide_tiles: 1024,
        max_tiff_ifds: 8,
        max_clinical_bytes: 1 << 20,
    }
}

/// `data` written to this process's scratch file (in /dev/shm where there is one), its path.
pub fn scratch(data: &[u8], ext: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("crlm-fuzz-{}.{ext}", std::process::id()));
    if let Ok(mut f) = std::fs::File::create(&path) {
        let _ = f.write_all(data);
    }
    path
}

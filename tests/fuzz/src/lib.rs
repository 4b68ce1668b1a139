//! What the fuzz targets share: limits small enough for a 40 MB allocation cap (the readers
//! check them before allocating, so a file claiming more is refused, not allocated), the cap
//! itself as the global allocator (libFuzzer's `-malloc_limit_mb` needs a sanitizer, which these
//! runs do not use), and one scratch file per process that the file-reading parsers open like a
//! file on the share.

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
/// The file is alone in a folder of this process: a DICOM slide is read with the files beside
/// it, which must not be another process's input.
pub fn scratch(data: &[u8], ext: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("crlm-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("input.{ext}"));
    if let Ok(mut f) = std::fs::File::create(&path) {
        let _ = f.write_all(data);
    }
    path
}

/// The allocation cap, 40 MB: the most any reader may take for one input under [`limits`].
pub const MAX_ALLOCATION: usize = 40 << 20;

/// The box's allocator (crlm_models::memory: allocations over a thread's read cap are refused,
/// as in the `crlm` binary) with the fuzzing cap as its hook. libFuzzer's `-malloc_limit_mb`
/// works only through a sanitizer's allocator hooks, and these targets run without a sanitizer,
/// so the cap is kept here: an allocation over it aborts, which libFuzzer reports as a crash and
/// keeps the input (found when a 644-byte DICOM header took 1.3 GB while the runs said "40 MB
/// cap").
#[global_allocator]
static ALLOCATOR: crlm_models::memory::CappedAllocator = crlm_models::memory::CappedAllocator::with_hook(fuzz_cap);

fn fuzz_cap(size: usize) {
    if size > MAX_ALLOCATION {
        over_cap(size);
    }
}

#[cold]
fn over_cap(size: usize) -> ! {
    eprintln!("crlm-fuzz: allocation of {size} bytes is over the {MAX_ALLOCATION}-byte cap");
    std::process::abort()
}

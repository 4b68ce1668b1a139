//! Every other scanner's format through OpenSlide itself, loaded at run time (feature
//! `openslide`): Hamamatsu NDPI and VMS, 3DHISTECH MRXS, Leica SCN, Ventana BIF, Philips TIFF,
//! and whatever else the installed OpenSlide reads. Nothing is linked at build time: the library
//! is found when a slide needs it (the `OPENSLIDE_LIBRARY_PATH` path, a Python `openslide-bin`
//! install, then `libopenslide.so.1` (OpenSlide 4) and `libopenslide.so.0` (3.x, Debian's) from
//! the system's library path), so a box or workstation without it still builds and runs, and
//! refuses those formats naming them.
//!
//! The native readers ([`super::tiff`], [`super::dicom_wsi`]) stay the fast path for SVS, tiled
//! TIFF and DICOM; the slide's header says which reader it went to
//! ([`super::SlideFormat::reader`]). Regions come from `openslide_read_region` (premultiplied
//! ARGB), composited on white as the native readers draw absent pixels.

use super::SlideError;
use super::tiff::{SlideFormat, SlideHeader, SlideLevel};
use libloading::Library;
use std::ffi::{CStr, CString, c_char, c_double, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type Osr = *mut c_void;

/// The OpenSlide C API this crate calls (stable since OpenSlide 3.4).
struct Api {
    _lib: Library,
    detect_vendor: unsafe extern "C" fn(*const c_char) -> *const c_char,
    open: unsafe extern "C" fn(*const c_char) -> Osr,
    close: unsafe extern "C" fn(Osr),
    get_error: unsafe extern "C" fn(Osr) -> *const c_char,
    level_count: unsafe extern "C" fn(Osr) -> i32,
    level_dimensions: unsafe extern "C" fn(Osr, i32, *mut i64, *mut i64),
    level_downsample: unsafe extern "C" fn(Osr, i32) -> c_double,
    read_region: unsafe extern "C" fn(Osr, *mut u32, i64, i64, i32, i64, i64),
    property_value: unsafe extern "C" fn(Osr, *const c_char) -> *const c_char,
    associated_names: unsafe extern "C" fn(Osr) -> *const *const c_char,
    version: unsafe extern "C" fn() -> *const c_char,
}

// SAFETY: the API table holds function pointers into a library that stays loaded for the
// process's life (the table lives in a static); OpenSlide's functions are thread-safe.
unsafe impl Send for Api {}
// SAFETY: as above: the table is immutable after loading.
unsafe impl Sync for Api {}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The library's candidates, most preferred first.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("OPENSLIDE_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out;
    }
    // PyPI's openslide-bin: OpenSlide 4 built by the OpenSlide project (reads DICOM too).
    if let Ok(o) = std::process::Command::new("python3")
        .args(["-c", "import openslide_bin, os; print(os.path.dirname(openslide_bin.__file__))"])
        .stderr(std::process::Stdio::null())
        .output()
        && let Ok(dir) = String::from_utf8(o.stdout)
        && !dir.trim().is_empty()
    {
        out.push(Path::new(dir.trim()).join("libopenslide.so.1"));
    }
    out.push(PathBuf::from("libopenslide.so.1"));
    out.push(PathBuf::from("libopenslide.so.0"));
    out
}

fn load() -> Result<Api, String> {
    let mut tried = Vec::new();
    for path in candidates() {
        // SAFETY: loading OpenSlide runs its library constructors (GLib, libtiff, ...), which
        // have no preconditions; the path is one the operator or the system provides.
        let lib = match unsafe { Library::new(&path) } {
            Ok(l) => l,
            Err(e) => {
                tried.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        // SAFETY: each symbol is looked up by its documented name and given the signature of
        // OpenSlide's public header (openslide.h, unchanged from 3.4 to 4.0).
        let api = unsafe {
            Api {
                detect_vendor: *lib.get(b"openslide_detect_vendor\0").map_err(|e| e.to_string())?,
                open: *lib.get(b"openslide_open\0").map_err(|e| e.to_string())?,
                close: *lib.get(b"openslide_close\0").map_err(|e| e.to_string())?,
                get_error: *lib.get(b"openslide_get_error\0").map_err(|e| e.to_string())?,
                level_count: *lib.get(b"openslide_get_level_count\0").map_err(|e| e.to_string())?,
                level_dimensions: *lib.get(b"openslide_get_level_dimensions\0").map_err(|e| e.to_string())?,
                level_downsample: *lib.get(b"openslide_get_level_downsample\0").map_err(|e| e.to_string())?,
                read_region: *lib.get(b"openslide_read_region\0").map_err(|e| e.to_string())?,
                property_value: *lib.get(b"openslide_get_property_value\0").map_err(|e| e.to_string())?,
                associated_names: *lib.get(b"openslide_get_associated_image_names\0").map_err(|e| e.to_string())?,
                version: *lib.get(b"openslide_get_version\0").map_err(|e| e.to_string())?,
                _lib: lib,
            }
        };
        tracing::info!(stage = "slide", library = %path.display(), version = %version_of(&api), "OpenSlide loaded");
        return Ok(api);
    }
    Err(format!(
        "OpenSlide is not installed (tried {}); install Debian's libopenslide0 or `pip install openslide-bin`, \
         or set OPENSLIDE_LIBRARY_PATH",
        tried.join("; ")
    ))
}

fn api() -> Result<&'static Api, SlideError> {
    API.get_or_init(load).as_ref().map_err(|e| SlideError::Unsupported(e.clone()))
}

fn version_of(api: &Api) -> String {
    // SAFETY: openslide_get_version returns a static NUL-terminated string.
    unsafe { cstr((api.version)()) }.unwrap_or_default()
}

/// The loaded OpenSlide's version, or why it is not available.
pub fn library_version() -> Result<String, String> {
    API.get_or_init(load).as_ref().map(version_of).map_err(Clone::clone)
}

/// # Safety
/// `p` is null or a NUL-terminated string that lives while this runs.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn c_path(path: &Path) -> Result<CString, SlideError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SlideError::Unsupported("path with a NUL byte".into()))
}

/// The vendor OpenSlide recognises the file as (`hamamatsu`, `mirax`, `leica`, `ventana`,
/// `philips`, `aperio`, `generic-tiff`, ...), or None (not a slide it reads, or no OpenSlide).
pub fn detect_vendor(path: &Path) -> Option<String> {
    let api = api().ok()?;
    let c = c_path(path).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; the result is a static string or null.
    unsafe { cstr((api.detect_vendor)(c.as_ptr())) }
}

/// An open OpenSlide slide.
pub struct OpenSlide {
    api: &'static Api,
    osr: Osr,
}

// SAFETY: OpenSlide documents an openslide_t as usable from several threads at once.
unsafe impl Send for OpenSlide {}
// SAFETY: as above.
unsafe impl Sync for OpenSlide {}

impl Drop for OpenSlide {
    fn drop(&mut self) {
        // SAFETY: `osr` came from openslide_open, is non-null and is closed once, here.
        unsafe { (self.api.close)(self.osr) }
    }
}

impl OpenSlide {
    /// Open `path` and describe it; `limits` bound the level sizes as for native slides.
    pub fn open(path: &Path, limits: &crate::limits::Limits) -> Result<(OpenSlide, SlideHeader), SlideError> {
        let api = api()?;
        let c = c_path(path)?;
        // SAFETY: `c` is a valid NUL-terminated path.
        let vendor = unsafe { cstr((api.detect_vendor)(c.as_ptr())) }
            .ok_or_else(|| SlideError::Unsupported("not a slide format OpenSlide reads".into()))?;
        // SAFETY: as above; the handle is owned by the returned value and closed on drop.
        let osr = unsafe { (api.open)(c.as_ptr()) };
        if osr.is_null() {
            return Err(SlideError::Unsupported(format!("OpenSlide cannot open this {vendor} slide")));
        }
        let slide = OpenSlide { api, osr };
        slide.check()?;
        // SAFETY: `osr` is open and valid for every call below.
        let count = unsafe { (api.level_count)(osr) };
        let mut levels = Vec::new();
        for level in 0..count.max(0) {
            let (mut w, mut h) = (0i64, 0i64);
            // SAFETY: valid handle, level in range, out-pointers to live locals.
            unsafe { (api.level_dimensions)(osr, level, &mut w, &mut h) };
            // SAFETY: valid handle and level.
            let downsample = unsafe { (api.level_downsample)(osr, level) };
            let (w, h) = (u64::try_from(w).unwrap_or(0), u64::try_from(h).unwrap_or(0));
            for (what, v) in [("slide width", w), ("slide height", h)] {
                if v > limits.max_slide_dimension {
                    return Err(SlideError::OverLimit { what, value: v, limit: limits.max_slide_dimension });
                }
            }
            let tile = |name: &str| slide.property(&format!("openslide.level[{level}].{name}"));
            let tw = tile("tile-width").and_then(|v| v.parse().ok()).unwrap_or(256);
            let th = tile("tile-height").and_then(|v| v.parse().ok()).unwrap_or(256);
            levels.push(SlideLevel {
                width: w,
                height: h,
                tile_width: tw,
                tile_height: th,
                tiles: w.div_ceil(u64::from(tw.max(1))) * h.div_ceil(u64::from(th.max(1))),
                compression: 0,
                downsample,
            });
        }
        slide.check()?;
        if levels.is_empty() || levels.iter().any(|l| l.width == 0 || l.height == 0) {
            return Err(SlideError::NoPyramid);
        }
        let mut associated = Vec::new();
        // SAFETY: valid handle; the result is a null-terminated array of static strings.
        let names = unsafe { (api.associated_names)(osr) };
        if !names.is_null() {
            for i in 0..64 {
                // SAFETY: the array is null-terminated; we stop at the terminator (or 64).
                let p = unsafe { *names.add(i) };
                // SAFETY: each entry is a NUL-terminated string owned by the handle.
                match unsafe { cstr(p) } {
                    Some(n) => associated.push(n),
                    None => break,
                }
            }
        }
        let num = |name: &str| slide.property(name).and_then(|v| v.parse::<f64>().ok());
        let header = SlideHeader {
            format: SlideFormat::OpenSlide,
            big_tiff: false,
            levels,
            associated,
            microns_per_pixel: num("openslide.mpp-x").filter(|m| m.is_finite() && *m > 0.01 && *m < 100.0),
            objective_power: num("openslide.objective-power"),
            scanner: Some(vendor),
            dicom_series: None,
            members: Vec::new(),
        };
        Ok((slide, header))
    }

    fn property(&self, name: &str) -> Option<String> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid handle and NUL-terminated name; the value is owned by the handle.
        unsafe { cstr((self.api.property_value)(self.osr, c.as_ptr())) }
    }

    /// OpenSlide's sticky error, if the handle is in error.
    fn check(&self) -> Result<(), SlideError> {
        // SAFETY: valid handle; the message is owned by the handle.
        match unsafe { cstr((self.api.get_error)(self.osr)) } {
            Some(e) => Err(SlideError::Unsupported(format!("OpenSlide: {e}"))),
            None => Ok(()),
        }
    }

    /// RGB of a `w` x `h` region at `level`, (x, y) in level-0 pixels, composited on white.
    pub fn read_region(&self, level: usize, x: i64, y: i64, w: u32, h: u32) -> Result<Vec<u8>, SlideError> {
        let n = w as usize * h as usize;
        let mut argb = vec![0u32; n];
        let level = i32::try_from(level).map_err(|_| SlideError::Broken("level out of range".into()))?;
        // SAFETY: valid handle; `argb` holds exactly w x h pixels, as OpenSlide writes.
        unsafe { (self.api.read_region)(self.osr, argb.as_mut_ptr(), x, y, level, i64::from(w), i64::from(h)) };
        self.check()?;
        let mut rgb = Vec::with_capacity(n * 3);
        for p in argb {
            // Premultiplied ARGB over white: c + (255 - a).
            let a = (p >> 24) as u8;
            for shift in [16, 8, 0] {
                let c = (p >> shift) as u8;
                rgb.push(c.saturating_add(255 - a));
            }
        }
        Ok(rgb)
    }
}

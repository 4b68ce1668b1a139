//! Board health readings for the heartbeat: disk free, load, temperature and (on a Jetson) GPU
//! load. Each is `None` where the board does not expose it; none of them fails the caller.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes available to this process on the file system holding `path`.
pub fn disk_free_bytes(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid statvfs (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs for the call.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The 1-minute load average.
pub fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// The hottest thermal zone in degrees Celsius (`/sys/class/thermal/thermal_zone*/temp`, in
/// millidegrees), read from `root` (`/sys/class/thermal` on a board).
pub fn max_temperature_celsius(root: &Path) -> Option<f64> {
    let mut hottest: Option<f64> = None;
    for e in std::fs::read_dir(root).ok()?.flatten() {
        if !e.file_name().to_string_lossy().starts_with("thermal_zone") {
            continue;
        }
        let Some(milli) =
            std::fs::read_to_string(e.path().join("temp")).ok().and_then(|t| t.trim().parse::<f64>().ok())
        else {
            continue;
        };
        // Disabled zones on some boards read as large negatives.
        if milli > -40_000.0 {
            let c = milli / 1000.0;
            hottest = Some(hottest.map_or(c, |h| h.max(c)));
        }
    }
    hottest
}

/// GPU load as a fraction 0..1 on a Jetson (`/sys/devices/.../gpu.0/load`, per mille).
pub fn jetson_gpu_load() -> Option<f64> {
    ["/sys/devices/platform/gpu.0/load", "/sys/devices/gpu.0/load", "/sys/devices/platform/17000000.gpu/load"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map(|permille| permille / 1000.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hottest_zone_is_reported_in_celsius() {
        let d = tempfile::tempdir().unwrap();
        for (zone, milli) in
            [("thermal_zone0", "41500\n"), ("thermal_zone1", "57250\n"), ("thermal_zone2", "-273000\n")]
        {
            std::fs::create_dir(d.path().join(zone)).unwrap();
            std::fs::write(d.path().join(zone).join("temp"), milli).unwrap();
        }
        std::fs::create_dir(d.path().join("cooling_device0")).unwrap();
        assert_eq!(super::max_temperature_celsius(d.path()), Some(57.25));
        assert_eq!(super::max_temperature_celsius(&d.path().join("none")), None);
    }

    #[test]
    fn disk_free_is_reported_for_an_existing_path_only() {
        assert!(super::disk_free_bytes(std::path::Path::new("/")).is_some_and(|b| b > 0));
        assert!(super::disk_free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}

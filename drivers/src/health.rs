//! Board health readings (disk now; CPU/GPU load and temperature join with the heartbeat).

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

#[cfg(test)]
mod tests {
    #[test]
    fn disk_free_is_reported_for_an_existing_path_only() {
        assert!(super::disk_free_bytes(std::path::Path::new("/")).is_some_and(|b| b > 0));
        assert!(super::disk_free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}

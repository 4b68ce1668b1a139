//! A per-thread cap on single allocations: the backstop for third-party parsers (dicom-rs) that
//! size a buffer from a length the file declares before reading it.
//!
//! The DICOM guard (`dicom::guard`) walks every file first and refuses lengths beyond the data,
//! so dicom-rs should never see one. But the guard predicts how dicom-rs parses, and fuzzing
//! found places where the two read the same bytes differently (unknown VRs, values that look
//! like sequences); there dicom-rs asked for 0.8 to 1.3 GB to read a file of a few hundred
//! bytes. dicom-rs allocates those buffers with `try_reserve_exact`, which returns an error when
//! the allocator refuses. So around each dicom-rs read the caller sets a cap with
//! [`with_allocation_cap`]; [`CappedAllocator`], installed as the process's global allocator by
//! the `crlm` binary (and the fuzz targets), refuses any single allocation above it on that
//! thread, and the read fails with dicom-rs's own error instead of taking the memory.
//!
//! Without the allocator installed (a library user, the unit tests) the cap does nothing and the
//! guard alone stands. An infallible allocation over the cap still aborts, as it would have
//! without the cap when the memory ran out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The floor of every read cap: far above any real element outside Pixel Data (a large
/// RTSTRUCT's contour data is a few MB) and the element lists of a small file, far below what a
/// hostile length asks for.
pub const MIN_READ_CAP: usize = 16 << 20;

/// The cap for parsing `bytes` of data: no value read from them can be longer than they are;
/// twice that leaves room for a growing buffer, and [`MIN_READ_CAP`] for the parser's own lists.
pub fn read_cap(bytes: u64) -> usize {
    usize::try_from(bytes.saturating_mul(2)).unwrap_or(usize::MAX).max(MIN_READ_CAP)
}

/// Run `f` with single allocations on this thread capped at `cap` bytes (the tightest cap wins
/// when calls nest). The previous cap is restored afterwards, also when `f` panics.
pub fn with_allocation_cap<T>(cap: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CAP.try_with(|c| c.set(self.0));
        }
    }
    let previous = CAP.try_with(Cell::get).unwrap_or(usize::MAX);
    let _restore = Restore(previous);
    let _ = CAP.try_with(|c| c.set(previous.min(cap)));
    f()
}

/// Whether an allocation of `size` bytes is over this thread's cap.
pub fn over_cap(size: usize) -> bool {
    CAP.try_with(|c| size > c.get()).unwrap_or(false)
}

/// The system allocator, refusing (null) any allocation over the calling thread's cap. The
/// `crlm` binary installs [`CappedAllocator::new`]; a test or fuzz binary may add a hook that
/// sees the size of every allocation the cap lets through (to record it, or to abort on its own
/// limit) with [`CappedAllocator::with_hook`], so there is one allocator to trust.
pub struct CappedAllocator {
    hook: Option<fn(usize)>,
}

impl CappedAllocator {
    pub const fn new() -> CappedAllocator {
        CappedAllocator { hook: None }
    }

    /// `hook` runs before each allocation the cap lets through, with its size. It must not
    /// allocate.
    pub const fn with_hook(hook: fn(usize)) -> CappedAllocator {
        CappedAllocator { hook: Some(hook) }
    }

    /// Whether an allocation of `size` bytes goes ahead (the hook, if any, has seen it).
    fn admit(&self, size: usize) -> bool {
        if over_cap(size) {
            return false;
        }
        if let Some(hook) = self.hook {
            hook(size);
        }
        true
    }
}

impl Default for CappedAllocator {
    fn default() -> Self {
        CappedAllocator::new()
    }
}

// SAFETY: every allocation is either refused with a null pointer, which `GlobalAlloc` allows, or
// forwarded unchanged to `System` under the contract it was made with. The cap is read from a
// const-initialised thread-local `Cell`, which does not allocate, and hooks must not allocate.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's obligations for `layout` pass through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_nest_and_are_restored() {
        assert!(!over_cap(usize::MAX - 1));
        with_allocation_cap(100, || {
            assert!(over_cap(101));
            assert!(!over_cap(100));
            with_allocation_cap(1000, || assert!(over_cap(101), "the tighter cap wins"));
            with_allocation_cap(10, || assert!(over_cap(11)));
            assert!(!over_cap(100));
        });
        assert!(!over_cap(1 << 40));
        let r = std::panic::catch_unwind(|| with_allocation_cap(5, || panic!("in f")));
        assert!(r.is_err());
        assert!(!over_cap(6), "restored after a panic");
    }
}

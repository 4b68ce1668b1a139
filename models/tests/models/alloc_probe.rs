//! The test binary's allocator: the box's (crlm_models::memory: allocations over a thread's
//! read cap are refused) that also remembers, per thread, the largest single allocation it made
//! since [`reset`]. Tests of "limits are checked before allocating"
//! read it, so a reader that allocates from a hostile length fails them even when the machine
//! has the memory and the read goes on to fail for another reason.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

/// Forget what this thread allocated so far.
pub fn reset() {
    let _ = LARGEST.try_with(|l| l.set(0));
}

/// The largest single allocation this thread made since [`reset`].
pub fn largest() -> usize {
    LARGEST.try_with(Cell::get).unwrap_or(0)
}

struct Probe;

// SAFETY: every call is refused with a null pointer (allowed by `GlobalAlloc`) or forwarded
// unchanged to `System` under the contract it was made with; the probe only records sizes in a
// const-initialised thread-local cell, which does not allocate.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if crlm_models::memory::over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        note(layout.size());
        // SAFETY: the caller's obligations for `layout` pass through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if crlm_models::memory::over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if crlm_models::memory::over_cap(new_size) {
            return std::ptr::null_mut();
        }
        note(new_size);
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static PROBE: Probe = Probe;

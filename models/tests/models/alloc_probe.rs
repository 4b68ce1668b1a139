//! The test binary's allocator: the box's (crlm_models::memory: allocations over a thread's
//! read cap are refused) with a hook that remembers, per thread, the largest single allocation
//! it let through since [`reset`]. Tests of "limits are checked before allocating"
//! read it, so a reader that allocates from a hostile length fails them even when the machine
//! has the memory and the read goes on to fail for another reason.

use std::cell::Cell;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The hook: a const-initialised thread-local `Cell`, which does not allocate.
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

#[global_allocator]
static PROBE: crlm_models::memory::CappedAllocator = crlm_models::memory::CappedAllocator::with_hook(note);

//! A counting global allocator: allocations made by the current thread (for "allocations per
//! hit") and live heap bytes of the whole process (for the L1 memory row).

// Implementing GlobalAlloc is unsafe by definition; this one only forwards to System.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Forwards to [`System`], counting allocations per thread and live bytes process-wide.
pub struct Counting;

/// Bytes currently allocated by the process (requested sizes, not the allocator's rounding).
static LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the thread-local may already be gone while a thread is being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn signed(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// SAFETY: every call forwards to the system allocator with the caller's arguments unchanged; the
// only additions are a thread-local counter bump and a relaxed atomic add, neither of which
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout is valid for System as it is for us.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_one();
            LIVE.fetch_add(signed(layout.size()), Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_one();
            LIVE.fetch_add(signed(layout.size()), Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by System (through us) with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(signed(layout.size()), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by System with `layout`; the caller vouches for new_size.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count_one();
            LIVE.fetch_add(signed(new_size) - signed(layout.size()), Relaxed);
        }
        new
    }
}

/// Allocations (including reallocations) made by the calling thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Heap bytes the process holds right now.
pub fn live_bytes() -> i64 {
    LIVE.load(Relaxed)
}

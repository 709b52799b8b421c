//! A counting global allocator: allocations made by the current thread (for "allocations per
//! hit"), by every thread while asked (for "allocations per write") and live heap bytes of the
//! whole process (for the L1 memory row).

// Implementing GlobalAlloc is unsafe by definition; this one only forwards to System.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Forwards to [`System`], counting allocations per thread and live bytes process-wide.
pub struct Counting;

/// Bytes currently allocated by the process (requested sizes, not the allocator's rounding).
static LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Whether allocations are also counted across threads, in [`ALL_THREADS`]: only inside
/// [`counting_all_threads`], so the timed loops pay no shared counter.
static COUNT_ALL_THREADS: AtomicBool = AtomicBool::new(false);

/// Allocations made by every thread while [`COUNT_ALL_THREADS`] was set.
static ALL_THREADS: AtomicU64 = AtomicU64::new(0);

fn count_one() {
    // `try_with`: the thread-local may already be gone while a thread is being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    if COUNT_ALL_THREADS.load(Relaxed) {
        ALL_THREADS.fetch_add(1, Relaxed);
    }
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

/// Runs `work` and returns its output with the allocations every thread of the process made
/// meanwhile: the caller's, the runtime's workers', the connection drivers' and listeners'.
/// Not for timed loops (each allocation then adds to one shared counter), nor for two at once.
pub async fn counting_all_threads<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = ALL_THREADS.load(Relaxed);
    COUNT_ALL_THREADS.store(true, Relaxed);
    let output = work.await;
    COUNT_ALL_THREADS.store(false, Relaxed);
    (output, ALL_THREADS.load(Relaxed) - before)
}

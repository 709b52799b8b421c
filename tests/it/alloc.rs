//! The L1 hit path allocates nothing: checked with a counting allocator, not by timing.

// Implementing GlobalAlloc is unsafe by definition; this one only forwards to System.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Backends;

/// Counts allocations made by the current thread, so tests running in parallel on other
/// threads do not disturb the count.
pub(crate) struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call forwards to the system allocator with the caller's arguments unchanged;
// the only addition is bumping a thread-local counter, which does not allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[derive(Serialize, Deserialize)]
struct Offer {
    gpu_id: String,
    price_cents: u64,
    region: String,
    tags: Vec<String>,
}

#[test]
fn an_l1_hit_makes_no_heap_allocation() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backends = Backends::new();
        let node = backends.builder("alloc").build().await.unwrap();
        let key = node.key("gpu_pricing", &json!({"gpu_id": "g-42"})).unwrap();
        let offer = Offer {
            gpu_id: "g-42".into(),
            price_cents: 250,
            region: "eu".into(),
            tags: vec!["a".into()],
        };
        node.set_key(&key, &offer, Default::default())
            .await
            .unwrap();
        // Warm up: the first hit may size thread-locals or the runtime's structures.
        for _ in 0..10 {
            node.get_key::<Offer>(&key).await.unwrap().unwrap();
        }
        let hits_before = node.stats().l1_hits;
        let before = allocations();
        for _ in 0..1_000 {
            let hit = node.get_key::<Offer>(&key).await.unwrap().unwrap();
            assert_eq!(hit.price_cents, 250);
        }
        let made = allocations() - before;
        assert_eq!(
            node.stats().l1_hits - hits_before,
            1_000,
            "every read was an L1 hit"
        );
        assert_eq!(made, 0, "{made} allocations in 1,000 L1 hits");
        node.shutdown().await;
    });
}

//! Where the time of key derivation goes, one step at a time: SHA-256 of the canonical bytes
//! alone, then `Digest::of_params` with a small struct and with a `serde_json::Value`.
//!
//! ```sh
//! cargo run --release -p edge-cache-bench --example derive_cost
//! ```

use std::hint::black_box;
use std::time::Instant;

use cache_core::Digest;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

const N: usize = 2_000_000;

fn n() -> usize {
    std::env::var("DERIVE_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(N)
}

#[derive(Serialize)]
struct GpuParams<'a> {
    gpu_id: &'a str,
}

fn time(name: &str, mut f: impl FnMut(usize)) {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..n() {
            f(i);
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e9 / n() as f64);
    }
    println!("  {name:<44} {best:>6.1} ns");
}

fn main() {
    let ids: Vec<String> = (0..1000).map(|i| format!("g-{i:06}")).collect();
    let values: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({ "gpu_id": id }))
        .collect();
    let texts: Vec<String> = ids
        .iter()
        .map(|id| format!("{{\"gpu_id\": \"{id}\"}}"))
        .collect();
    println!("best of 5 runs of {N} derivations, per derivation:");
    time("SHA-256 of the canonical bytes", |i| {
        black_box(Sha256::digest(texts[i % 1000].as_bytes()));
    });
    let blocks: Vec<[u8; 64]> = texts
        .iter()
        .map(|t| {
            let mut block = [0u8; 64];
            block[..t.len()].copy_from_slice(t.as_bytes());
            block[t.len()] = 0x80;
            block[56..].copy_from_slice(&(t.len() as u64 * 8).to_be_bytes());
            block
        })
        .collect();
    time("SHA-256 block function alone (the floor)", |i| {
        let mut state = [
            0x6a09_e667_u32,
            0xbb67_ae85,
            0x3c6e_f372,
            0xa54f_f53a,
            0x510e_527f,
            0x9b05_688c,
            0x1f83_d9ab,
            0x5be0_cd19,
        ];
        sha2::block_api::compress256(&mut state, std::slice::from_ref(&blocks[i % 1000]));
        black_box(state);
    });
    let mut chained = [
        0x6a09_e667_u32,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    time("SHA-256 block function, each waiting on the last", |i| {
        sha2::block_api::compress256(&mut chained, std::slice::from_ref(&blocks[i % 1000]));
    });
    black_box(chained);
    time("Digest::of_params, struct", |i| {
        black_box(
            Digest::of_params(&GpuParams {
                gpu_id: &ids[i % 1000],
            })
            .ok(),
        );
    });
    time("Digest::of_params, serde_json::Value", |i| {
        black_box(Digest::of_params(&values[i % 1000]).ok());
    });
}

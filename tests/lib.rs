//! Cross-crate integration suites of edge-cache live in `it/`. This library holds what the
//! suites share with `cargo xtask`: [`sim`], the deterministic fleet simulation.

pub mod sim;

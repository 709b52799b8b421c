//! Cross-crate integration suites of edge-cache live in `it/`; this library is empty.

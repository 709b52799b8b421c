//! Integration tests of cache-memory: one binary, one module per area.

mod bus;
mod clock;
mod l1;
mod l2;
mod log;

//! Behaviour of `EdgeCache` on the in-process backends (and mockall doubles where a fault or an
//! interleaving must be forced).

mod support;

mod breaker;
mod dashboard;
mod events;
mod failsafe;
mod faults;
mod health;
mod invalidation;
mod lease;
mod limits;
mod load;
mod read_write;
mod refresh;
mod signed;
mod timeouts;
mod typed;

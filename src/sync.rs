//! Synchronisation primitives: `std` normally, loom's under `--cfg loom`.
//!
//! The shared offset tracker's lock comes from here, so that the loom model checks in
//! `tests/loom_tracker.rs` explore the same code the pipeline runs. Locks that loom does not
//! model (the pipeline's task plumbing, the in-memory ports, the adapters) use `std` directly.

#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

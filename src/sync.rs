//! Synchronisation primitives: `std` normally, loom's under `--cfg loom`.
//!
//! Every lock and shared pointer in the crate comes from here, so that the loom model checks in
//! `tests/loom_tracker.rs` explore the same code the pipeline runs.

#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

/// Atomics, from the same world as the locks.
#[allow(unused_imports)] // not every build uses every atomic
pub(crate) mod atomic {
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
}

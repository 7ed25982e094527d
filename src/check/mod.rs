//! The history checker, one implementation for every world: the simulator records each run's
//! history and judges it here, and so can a real run that records its own.
//!
//! - [`history`]: the steps of a history (sends, polls, store outcomes, rebalances, commits,
//!   faults, dead letters) and their rendering.
//! - [`checker`]: the invariants judged over a history and the final state, named in Jepsen's
//!   vocabulary where it applies, with `crate::verify`'s reference model as the judge of the
//!   effects.
//! - [`record`]: the wrappers that record what a process's ports did, into a sink.
//! - [`file`](mod@file): a real run's history, written by each process to a file of its own.

pub mod checker;
pub mod file;
pub mod history;
pub mod record;

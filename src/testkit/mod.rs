//! The test kit: what tests, benchmarks and the simulator swap into the pipeline, and the
//! reference models they compare it with. Built only with the `testkit` feature (and for the
//! crate's own unit tests); nothing in the production library depends on it.
//!
//! - [`planted`]: deliberate defects of the kind the seed warns about, each a component that
//!   replaces a sound one (a log, a store, a schema, a commit policy), never a switch inside
//!   production code.
//! - [`policies`]: commit policies other than the watermark, measured against it.
//! - [`SortedSetTracker`]: the seed's own tracker design, the reference model for property
//!   tests and the baseline for benchmarks.

pub mod planted;
pub mod policies;
mod sorted_set;

pub use sorted_set::{CommitRule, SortedSetTracker};

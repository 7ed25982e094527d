//! holdfast-sim: the seeded simulated cluster that drives holdfast's pipeline under madsim.
//!
//! `world` holds the models of Kafka, Redis and PostgreSQL running as madsim nodes and the
//! port implementations the pipeline uses to reach them; `runner` drives the very pipeline of
//! the `holdfast` crate through them from a seed; `checker` (the library's) judges each run's history.
//!
//! Everything that touches madsim needs `--cfg madsim` (`cargo sim`, `cargo stest`); without
//! it only the pure parts (scenarios, parameters) are built, so the normal
//! workspace build, tests and lints keep working.

/// The checker and its history live in the library, shared with real runs.
pub use holdfast::check::{checker, history};
pub mod cli;
#[cfg(madsim)]
pub mod explorer_page;
#[cfg(madsim)]
pub mod observe;
pub mod params;
pub mod reach;
#[cfg(madsim)]
pub mod report;
#[cfg(madsim)]
pub mod runner;
pub mod scenario;
#[cfg(madsim)]
pub mod sweep;
pub mod timeline;
#[cfg(madsim)]
pub mod world;

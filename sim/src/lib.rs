//! holdfast's simulated world: models of Kafka, Redis and PostgreSQL running as madsim nodes,
//! and the port implementations the pipeline uses to reach them.
//!
//! Everything here needs `--cfg madsim` (`cargo sim`, `cargo stest`); without it the crate is
//! empty so that the normal workspace build and lints keep working.

#[cfg(madsim)]
pub mod world;

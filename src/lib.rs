//! holdfast: Kafka order-event processing that loses nothing and applies nothing twice.
//!
//! The core is pure and synchronous where it can be: offset tracking ([`offsets`]), the
//! wide-table merge ([`widetable`]), the idempotency protocol ([`idempotency`]), the
//! partitioner ([`partition`]) and the event types ([`event`]). The outside world is reached
//! only through the traits in [`ports`]; the pipeline ([`pipeline`]) is written once, generic
//! over them, and runs against real Kafka, Redis and PostgreSQL or inside the seeded simulator.
//! [`check`] judges a run's history (the simulator's, so far) against every invariant.

#[cfg(not(any(madsim, loom)))]
pub mod adapters;
pub mod check;
pub mod event;
pub mod idempotency;
pub mod memlog;
pub mod offsets;
pub mod partition;
pub mod pipeline;
pub mod ports;
pub mod reach;
pub mod rng;
pub(crate) mod sync;
// Built only for tests, benchmarks and the simulator (the `testkit` feature).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod verify;
pub mod widetable;
pub mod workload;

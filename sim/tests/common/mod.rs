//! Helpers shared by the simulated world's test binaries (`world_models.rs`,
//! `world_pins.rs`, `transport.rs`). Each binary compiles this module on its own and uses
//! only part of it, hence the allowance.
#![allow(dead_code)]

use holdfast_sim::world::{NodeId, World};
use madsim::time::sleep;
use std::future::Future;
use std::time::Duration;

/// Runs one scenario in a fresh simulation (each world needs its own network), seeded.
pub fn simulate<F: Future + 'static>(seed: u64, scenario: F) -> F::Output {
    madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default())
        .block_on(scenario)
}

/// Waits until every partition is served again, then a second more for followers to catch
/// up, before the logs are judged.
pub async fn settle(world: &World) {
    assert!(world.wait_ready(Duration::from_secs(5)).await);
    sleep(Duration::from_secs(1)).await;
}

/// Cuts (or restores) both directions between two nodes.
pub fn cut(world: &World, one: NodeId, other: NodeId, on: bool) {
    world.clog_link(one, other, on);
    world.clog_link(other, one, on);
}

//! Pins of defects the simulated world's Kafka model once had. Each was found by a seed of
//! the simulation suite (`tests/suite.rs`), but a seed's history moves whenever the models
//! change, and most of those seeds no longer reach their defect. Each test here builds a
//! small world and scripts the exact faults that trigger one defect, then asserts what the
//! fix restored; each was shown to fail with its fix reverted.
#![cfg(madsim)]

use holdfast::ports::{Delivery, OutboundMessage, PortError, Publisher};
use holdfast_sim::world::{ServiceNode, World, WorldConfig};
use madsim::time::sleep;
use std::future::Future;
use std::time::Duration;

/// What one publish answered.
type Answer = Result<Delivery, PortError>;

fn message(index: usize) -> OutboundMessage {
    OutboundMessage {
        topic: "orders".to_string(),
        key: format!("order-{index}").into_bytes(),
        payload: format!("event-{index}").into(),
        headers: Vec::new(),
    }
}

/// Runs one scenario in a fresh simulation (each world needs its own network), seeded.
fn simulate<F: Future + 'static>(seed: u64, scenario: F) -> F::Output {
    madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default())
        .block_on(scenario)
}

/// Publishes messages `indices` one after another from a fresh client node called `name`;
/// returns each result, by index.
async fn produce(
    world: &World,
    name: &str,
    indices: std::ops::Range<usize>,
) -> Vec<(usize, Answer)> {
    let client = world.clone();
    let task = world.client_node(name).spawn(async move {
        let publisher = client.publisher().await;
        let mut results = Vec::new();
        for index in indices {
            results.push((index, publisher.publish(message(index)).await));
        }
        results
    });
    task.await.expect("the producer's node runs to the end")
}

/// The acknowledged messages that the committed log of their partition does not hold.
fn lost_acknowledged(world: &World, results: &[(usize, Answer)]) -> Vec<usize> {
    results
        .iter()
        .filter_map(|(index, answer)| {
            let delivery = answer.as_ref().ok()?;
            let payload = message(*index).payload;
            let log = world.partition_log(delivery.partition);
            (!log.iter().any(|(_, record)| record.payload == payload)).then_some(*index)
        })
        .collect()
}

/// Waits until every partition is served again, then a second more for followers to catch
/// up, before the logs are judged.
async fn settle(world: &World) {
    assert!(world.wait_ready(Duration::from_secs(5)).await);
    sleep(Duration::from_secs(1)).await;
}

/// Seed 586's scenario: the controller is down for 150 ms, long enough for every broker's
/// heartbeat to be sent into the void, where each waits out the request timeout (1 s here,
/// as against the 300 ms broker session) before the next is sent. 550 ms after the restart,
/// when sessions counted from the restart would long be over and no broker has heartbeated
/// again yet, broker 2 restarts with its unflushed log gone: the last broker to be declared
/// dead, so the one an ISR would be left to. Returns the produce results.
async fn controller_restart_then_broker_restart() -> (World, Vec<(usize, Answer)>) {
    let world = World::start(WorldConfig {
        request_timeout: Duration::from_secs(1),
        ..WorldConfig::default()
    })
    .await;
    let results = produce(&world, "producer", 0..20).await;
    world.kill(ServiceNode::Controller);
    sleep(Duration::from_millis(150)).await;
    world.restart(ServiceNode::Controller);
    sleep(Duration::from_millis(550)).await;
    world.restart(ServiceNode::Broker(2));
    settle(&world).await;
    (world, results)
}

/// Seed 586 (fixed in ed67133). Goal: a restarted controller counts each broker's session
/// from when its next heartbeat can arrive, so a short outage declares no live broker dead.
/// Counted from the restart, every broker was dead before it could heartbeat, the partitions
/// went offline with their ISRs kept, and the first broker to register (the one that had
/// lost its log) was elected onto all of them: every acknowledged record lost.
#[test]
fn a_restarted_controller_counts_broker_sessions_from_their_next_heartbeat() {
    for seed in 1..=3 {
        let (world, results) = simulate(seed, controller_restart_then_broker_restart());
        assert!(
            results.iter().all(|(_, answer)| answer.is_ok()),
            "{results:?}"
        );
        let faults = world.faults();
        let lost = lost_acknowledged(&world, &results);
        assert_eq!(
            lost,
            Vec::<usize>::new(),
            "seed {seed}: acknowledged records lost: {faults:#?}"
        );
        let live_declared_dead = faults.iter().filter(|f| {
            f.contains("controller: broker 0 dead") || f.contains("controller: broker 1 dead")
        });
        assert_eq!(live_declared_dead.count(), 0, "seed {seed}: {faults:#?}");
    }
}

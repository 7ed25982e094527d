//! The faults the harness injects and heals, and the crashes probes ask for.

use crate::history::Step;
use crate::observe::Observers;
use crate::params::RunParams;
use crate::scenario::Scenario;
use crate::world::pause_hook::PauseHook;
use crate::world::{ServiceNode, World};
use holdfast::ports::FaultPoint;
use holdfast::rng::SplitMix;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use madsim::time::{sleep, Instant};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Carries out the crashes that probes asked for (a probe freezes its node at its fault point
/// and asks; the supervisor kills and later restarts it).
pub(super) async fn serve_crash_requests(
    requests: &mut mpsc::UnboundedReceiver<(usize, FaultPoint)>,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    while let Ok((consumer, point)) = requests.try_recv() {
        observers.injected.fetch_add(1, Ordering::SeqCst);
        holdfast::reach!("fault.crash_at_point");
        let (node, name) = &consumers[consumer];
        crash_consumer(
            observers,
            *node,
            &format!("{name} crashed at {point:?}"),
            rng,
        )
        .await;
    }
}

pub(super) async fn crash_consumer(
    observers: &Observers,
    node: NodeId,
    what: &str,
    rng: &mut SplitMix,
) {
    holdfast::reach!("fault.consumer_crash");
    observers.history.push(
        observers.at(),
        Step::Fault {
            description: format!("kill {what}"),
        },
    );
    Handle::current().kill(node);
    sleep(Duration::from_millis(rng.between(10, 1500))).await;
    Handle::current().restart(node);
    observers.history.push(
        observers.at(),
        Step::Fault {
            description: format!("restart {what}"),
        },
    );
}

/// Whether the scenario runs the standard mix of faults.
pub(super) fn standard_faults(params: &RunParams) -> bool {
    matches!(
        params.scenario,
        Scenario::Standard | Scenario::LiteralCommitRule
    )
}

/// A fault added after the regression seeds were recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtendedFault {
    /// A member cut off from the coordinator past its session while it still reaches the
    /// brokers and the store: a zombie that keeps writing after its partitions moved.
    ZombieMember,
    /// A member frozen past its session timeout, then resumed.
    MemberPause,
    /// The group rebalances and a member is frozen past its session right after it learned
    /// of its assignment, before acting on it: the others take its partitions over, then it
    /// acts on the stale assignment (claims progress under its old generation).
    MemberPauseAtAssignment,
    /// The dead-letter topic refusing every publish for a while.
    DeadLettersDown,
    /// The group coordinator fails over: every member is forgotten at once and must rejoin.
    CoordinatorFailover,
    /// The controller killed and restarted: no elections, ISR changes or group answers meanwhile.
    ControllerCrash,
    /// The controller cut off from every node: it fences brokers it cannot hear from.
    ControllerCutOff,
    /// A member frozen past its session between a transaction's statements and its commit:
    /// the transaction holds its rows' locks until the database ends it for sitting idle.
    MemberPauseAtCommit,
}

/// The added faults the standard mix injects, each as likely.
pub const EXTENDED_FAULTS: [ExtendedFault; 8] = [
    ExtendedFault::ZombieMember,
    ExtendedFault::MemberPause,
    ExtendedFault::MemberPauseAtAssignment,
    ExtendedFault::DeadLettersDown,
    ExtendedFault::CoordinatorFailover,
    ExtendedFault::ControllerCrash,
    ExtendedFault::ControllerCutOff,
    ExtendedFault::MemberPauseAtCommit,
];

/// One of the added faults, from their own stream.
pub(super) async fn inject_extended_fault(
    world: &World,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    observers.injected.fetch_add(1, Ordering::SeqCst);
    let session_ms = u64::try_from(world.config().session_timeout.as_millis()).unwrap_or(1000);
    let outlast_session = Duration::from_millis(session_ms * 2 + rng.between(0, 1000));
    let (node, name) = &consumers[rng.below(consumers.len())];
    let fault = |description: String| {
        observers
            .history
            .push(observers.at(), Step::Fault { description });
    };
    match EXTENDED_FAULTS[rng.below(EXTENDED_FAULTS.len())] {
        ExtendedFault::ZombieMember => {
            holdfast::reach!("fault.zombie_member");
            let controller = world.id(ServiceNode::Controller);
            fault(format!(
                "cut {name} off from the coordinator for {outlast_session:?}"
            ));
            world.clog_link(*node, controller, true);
            world.clog_link(controller, *node, true);
            sleep(outlast_session).await;
            world.clog_link(*node, controller, false);
            world.clog_link(controller, *node, false);
        }
        ExtendedFault::MemberPause => {
            holdfast::reach!("fault.member_pause");
            fault(format!("pause {name} for {outlast_session:?}"));
            Handle::current().pause(*node);
            sleep(outlast_session).await;
            Handle::current().resume(*node);
            fault(format!("resume {name}"));
        }
        ExtendedFault::MemberPauseAtAssignment => {
            pause_at_assignment(world, observers, (*node, name), outlast_session).await;
        }
        ExtendedFault::MemberPauseAtCommit => {
            pause_at_commit(world, observers, (*node, name), outlast_session).await;
        }
        ExtendedFault::CoordinatorFailover => {
            holdfast::reach!("fault.coordinator_failover");
            world.coordinator_failover();
        }
        ExtendedFault::ControllerCrash => {
            holdfast::reach!("fault.controller_crash");
            let down = Duration::from_millis(rng.between(100, 3000));
            fault(format!("controller down for {down:?}"));
            world.kill(ServiceNode::Controller);
            sleep(down).await;
            world.restart(ServiceNode::Controller);
        }
        ExtendedFault::ControllerCutOff => {
            holdfast::reach!("fault.controller_cut_off");
            fault(format!("controller cut off for {outlast_session:?}"));
            world.clog(ServiceNode::Controller, true);
            sleep(outlast_session).await;
            world.clog(ServiceNode::Controller, false);
        }
        ExtendedFault::DeadLettersDown => {
            holdfast::reach!("fault.dead_letters_down");
            let wait = Duration::from_millis(rng.between(100, 3000));
            fault(format!("dead-letter topic down for {wait:?}"));
            observers.dead_letters.set_down(true);
            sleep(wait).await;
            observers.dead_letters.set_down(false);
        }
    }
}

/// Fails the coordinator over (every member rejoins and is assigned anew) and freezes `node`
/// the moment its member learns of its assignment, for `pause`; gives up if no assignment
/// comes within a session.
async fn pause_at_assignment(
    world: &World,
    observers: &Observers,
    (node, name): (NodeId, &str),
    pause: Duration,
) {
    holdfast::reach!("fault.member_pause_at_assignment");
    let hook = world.assignment_hook();
    let reached = hook.arm(node);
    world.coordinator_failover();
    let what = format!("pause {name} at its assignment for {pause:?}");
    pause_when_reached(world, observers, (hook, reached), node, (pause, what)).await;
}

/// Freezes `node` the next time its store client has run a transaction's statements and is
/// about to commit, for `pause`; gives up if no commit comes within a session.
async fn pause_at_commit(
    world: &World,
    observers: &Observers,
    (node, name): (NodeId, &str),
    pause: Duration,
) {
    holdfast::reach!("fault.member_pause_at_commit");
    let hook = world.commit_hook();
    let reached = hook.arm(node);
    let what = format!("pause {name} before its commit for {pause:?}");
    pause_when_reached(world, observers, (hook, reached), node, (pause, what)).await;
}

/// Waits up to a session for an armed hook's signal, then freezes `node` for `pause` (the
/// history says `what`); disarms the hook if the signal never came.
async fn pause_when_reached(
    world: &World,
    observers: &Observers,
    (hook, reached): (&PauseHook, Arc<Notify>),
    node: NodeId,
    (pause, what): (Duration, String),
) {
    let wait = world.config().session_timeout;
    if madsim::time::timeout(wait, reached.notified())
        .await
        .is_err()
    {
        hook.disarm();
        return;
    }
    observers
        .history
        .push(observers.at(), Step::Fault { description: what });
    Handle::current().pause(node);
    sleep(pause).await;
    Handle::current().resume(node);
}

/// One random fault allowed by the scenario.
pub(super) async fn inject_fault(
    params: &RunParams,
    world: &World,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    let brokers = world.config().brokers;
    observers.injected.fetch_add(1, Ordering::SeqCst);
    match params.scenario.seeded_as() {
        Scenario::AllReplicasCrashUnflushed | Scenario::AllReplicasCrashFlushed => {
            holdfast::reach!("fault.all_brokers_crash");
            for broker in 0..brokers {
                world.kill(ServiceNode::Broker(broker));
            }
            sleep(Duration::from_millis(rng.between(50, 500))).await;
            for broker in 0..brokers {
                world.restart(ServiceNode::Broker(broker));
            }
        }
        Scenario::FireAndForget | Scenario::AcksOneLeaderCrash => {
            let broker = leader_of_busiest(world, params.partitions).unwrap_or(rng.below(brokers));
            holdfast::reach!("fault.broker_crash");
            world.kill(ServiceNode::Broker(broker));
            sleep(Duration::from_millis(rng.between(100, 2000))).await;
            world.restart(ServiceNode::Broker(broker));
        }
        Scenario::AcksAllSingleFailure => {
            let broker = leader_of_busiest(world, params.partitions).unwrap_or(rng.below(brokers));
            single_broker_failure(world, observers, broker, rng).await;
        }
        Scenario::AutoCommit | Scenario::CompensatedAutoCommit => {
            let consumer = rng.below(consumers.len());
            {
                let (node, name) = &consumers[consumer];
                crash_consumer(observers, *node, name, rng).await;
            }
        }
        // A planted bug meets the standard mix: it must be caught by the faults a real bug of
        // its kind would meet (a store failure after an early cache write, say).
        Scenario::Standard
        | Scenario::LiteralCommitRule
        | Scenario::Planted(_)
        | Scenario::Control(_) => standard_fault(world, observers, consumers, rng).await,
    }
}

/// One fault of the standard mix: a consumer crash (twice as likely as the others), a single
/// broker failure, a Redis restart or FLUSHALL, a PostgreSQL crash, or a network cut.
async fn standard_fault(
    world: &World,
    observers: &Observers,
    consumers: &[(NodeId, String)],
    rng: &mut SplitMix,
) {
    let brokers = world.config().brokers;
    match rng.below(6) {
        0 | 1 => {
            let consumer = rng.below(consumers.len());
            {
                let (node, name) = &consumers[consumer];
                crash_consumer(observers, *node, name, rng).await;
            }
        }
        2 => {
            let broker = rng.below(brokers);
            single_broker_failure(world, observers, broker, rng).await;
        }
        3 => {
            if rng.chance(0.5) {
                holdfast::reach!("fault.redis_restart");
                world.restart(ServiceNode::Redis);
            } else {
                holdfast::reach!("fault.redis_flushall");
                world.redis_flushall();
            }
        }
        4 => {
            holdfast::reach!("fault.postgres_crash");
            world.kill(ServiceNode::Postgres);
            sleep(Duration::from_millis(rng.between(50, 1000))).await;
            world.restart(ServiceNode::Postgres);
        }
        _ => {
            let node = match rng.below(3) {
                0 => ServiceNode::Redis,
                1 => ServiceNode::Postgres,
                _ => ServiceNode::Broker(rng.below(brokers)),
            };
            holdfast::reach!("fault.clog");
            world.clog(node, true);
            sleep(Duration::from_millis(rng.between(50, 1500))).await;
            world.clog(node, false);
        }
    }
}

/// Crashes one broker, but only once the previous failure has fully healed: every partition
/// has its whole replica set back in sync. A restarted broker lost its page cache, so until
/// it has caught up it still counts as failed; crashing another broker before that would be a
/// double failure, which acks=all with min.insync.replicas=2 does not promise to survive.
pub(super) async fn single_broker_failure(
    world: &World,
    observers: &Observers,
    broker: usize,
    rng: &mut SplitMix,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fully_replicated(world) {
        if Instant::now() >= deadline {
            observers.history.push(
                observers.at(),
                Step::Fault {
                    description: format!(
                        "skip crash of broker {broker}: replicas still catching up"
                    ),
                },
            );
            // Nothing was injected after all.
            observers.injected.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    holdfast::reach!("fault.broker_crash");
    world.kill(ServiceNode::Broker(broker));
    sleep(Duration::from_millis(rng.between(100, 2000))).await;
    world.restart(ServiceNode::Broker(broker));
}

/// Every partition has a leader and its full replica set in sync.
pub(super) fn fully_replicated(world: &World) -> bool {
    world
        .partition_table()
        .iter()
        .all(|state| state.leader.is_some() && state.isr.len() == state.replicas.len())
}

/// The broker leading the most partitions, the one whose crash hurts most.
pub(super) fn leader_of_busiest(world: &World, partitions: i32) -> Option<usize> {
    let table = world.partition_table();
    let mut counts = vec![0usize; world.config().brokers];
    for state in table.iter().take(partitions.max(0) as usize) {
        if let Some(leader) = state.leader {
            counts[leader] += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .max_by_key(|(_, count)| **count)
        .map(|(broker, _)| broker)
}

/// Ends every fault: unclog every service node. Killed nodes were already restarted by the
/// fault that killed them.
pub(super) fn heal(world: &World, observers: &Observers) {
    for (node, _) in world.nodes() {
        world.clog(node, false);
    }
    observers.history.push(
        observers.at(),
        Step::Fault {
            description: "heal: every fault ended".into(),
        },
    );
}

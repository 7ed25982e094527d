//! Every knob of one run, derived from its seed (as in TigerBeetle's VOPR "swarm" testing:
//! the seed picks the fault rates too, so a sweep covers calm and violent runs alike).

use crate::scenario::Scenario;
use holdfast::pipeline::ProgressMode;
use holdfast::ports::FaultPoint;
use holdfast::rng::SplitMix;
use std::fmt;

/// The parameters of one run. Printed first in every report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunParams {
    pub seed: u64,
    pub scenario: Scenario,
    /// The size distribution the seed was drawn from.
    pub size: Size,
    /// Whether the standard faults include those added after the regression seeds were
    /// recorded (coordinator crashes and cut-offs, zombie members, pauses past the session
    /// timeout, dead-letter outages), drawn from their own stream.
    pub extended_faults: bool,
    /// Orders in the workload (events are about 4 to 9 per order).
    pub orders: usize,
    pub partitions: i32,
    pub consumers: usize,
    pub batch_size: usize,
    pub concurrency: usize,
    /// Faults injected during the safety phase (crashes, restarts, clogs).
    pub faults: usize,
    /// A consumer crash at this named point, on this hit, if any.
    pub crash_at: Option<(FaultPoint, u32)>,
    /// Slow workers: up to this many milliseconds before each store call (0: none).
    pub slow_worker_ms: u64,
    /// Percent of events that the producer sends twice (a retry that duplicates).
    pub duplicate_percent: u32,
    /// Whether a compensator group runs beside the consumers.
    pub compensator: bool,
    /// Redis evicts keys above this many (a small cache forgets; the store still dedups).
    pub redis_keys_max: Option<usize>,
    /// Virtual milliseconds of the safety phase.
    pub safety_ms: u64,
    /// Virtual milliseconds the liveness phase may take to converge.
    pub liveness_ms: u64,
    /// Where the consumers keep their partitions' progress.
    pub progress: ProgressMode,
}

/// What a command line pins of the derived parameters (shrunk replays use them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub orders: Option<usize>,
    pub faults: Option<usize>,
    pub progress: Option<ProgressMode>,
}

impl Overrides {
    /// Pins what is set, and bounds the liveness phase for the result.
    pub fn apply(&self, params: &mut RunParams) {
        params.orders = self.orders.unwrap_or(params.orders);
        params.faults = self.faults.unwrap_or(params.faults);
        params.progress = self.progress.unwrap_or(params.progress);
        params.liveness_ms = params.liveness_bound_ms();
    }
}

/// How large the seeds of a sweep are, and how late a named crash may fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// 10 to 60 orders, a named crash on one of the first four passes of its point: the
    /// distribution the regression seeds were recorded with.
    Recorded,
    /// The default: every size from a single order to several hundred (15% tiny, 55% as
    /// recorded, 25% medium, 5% large), and three named crashes in ten on a late pass.
    Mixed,
    /// 300 to 1,000 orders (about 2,000 to 6,000 messages), late crashes as in `Mixed`.
    Large,
}

impl Size {
    pub const ALL: [Size; 3] = [Size::Recorded, Size::Mixed, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Recorded => "recorded",
            Size::Mixed => "mixed",
            Size::Large => "large",
        }
    }

    pub fn parse(name: &str) -> Option<Size> {
        Size::ALL.into_iter().find(|size| size.name() == name)
    }

    /// Redraws the orders and the crash's pass from the seed's own stream for sizes, so that
    /// every other knob keeps the value the seed gives it under `Recorded`.
    fn apply(self, seed: u64, params: &mut RunParams) {
        let mut rng = SplitMix::new(seed ^ 0x7369_7a65_7331);
        params.extended_faults = self != Size::Recorded;
        let orders = match self {
            Size::Recorded => return,
            Size::Large => rng.between(300, 1_000),
            Size::Mixed => match rng.below(100) {
                0..=14 => rng.between(1, 5),
                15..=69 => params.orders as u64,
                70..=94 => rng.between(60, 200),
                _ => rng.between(200, 600),
            },
        };
        params.orders = orders as usize;
        if let Some((point, hit)) = params.crash_at {
            if rng.chance(0.3) {
                params.crash_at = Some((point, hit * rng.between(5, 10) as u32));
            }
        }
        params.liveness_ms = params.liveness_bound_ms();
    }
}

impl RunParams {
    /// Derives every parameter of `scenario` from `seed`, in the default size mix.
    pub fn derive(seed: u64, scenario: Scenario) -> RunParams {
        RunParams::derive_sized(seed, scenario, Size::Mixed)
    }

    /// Derives every parameter of `scenario` from `seed`, with seeds of `size`.
    pub fn derive_sized(seed: u64, scenario: Scenario, size: Size) -> RunParams {
        let mut params = RunParams::derive_recorded(seed, scenario);
        params.size = size;
        size.apply(seed, &mut params);
        params
    }

    fn derive_recorded(seed: u64, scenario: Scenario) -> RunParams {
        let mut rng = SplitMix::new(seed ^ 0x686f_6c64_6661_7374);
        let crash_at = rng.chance(0.6).then(|| {
            let point = FaultPoint::ALL[rng.below(FaultPoint::ALL.len())];
            (point, rng.between(1, 4) as u32)
        });
        let mut params = RunParams {
            seed,
            scenario,
            size: Size::Recorded,
            extended_faults: false,
            orders: rng.between(10, 60) as usize,
            partitions: rng.between(2, 6) as i32,
            consumers: rng.between(1, 3) as usize,
            batch_size: rng.between(1, 64) as usize,
            concurrency: rng.between(1, 4) as usize,
            faults: rng.between(0, 8) as usize,
            crash_at,
            duplicate_percent: rng.between(0, 10) as u32,
            slow_worker_ms: if rng.chance(0.3) {
                0
            } else {
                rng.between(1, 400)
            },
            compensator: false,
            redis_keys_max: None,
            safety_ms: rng.between(5_000, 20_000),
            liveness_ms: 0,
            // Half the seeds of every scenario keep progress in the store, from a stream of
            // their own so that every older knob keeps its value for a given seed.
            progress: if SplitMix::new(seed ^ 0x7072_6f67_7265_7373).chance(0.5) {
                ProgressMode::Store
            } else {
                ProgressMode::Kafka
            },
        };
        // The explorer's rows pin the dimension they are about (a control run takes its
        // planted scenario's parameters, so that only the bug differs).
        match scenario.seeded_as() {
            Scenario::AutoCommit | Scenario::CompensatedAutoCommit | Scenario::Planted(_) => {
                params.faults = params.faults.max(2);
                // The commit bugs only bite while work is in flight at commit time.
                params.slow_worker_ms = params.slow_worker_ms.max(100);
                params.crash_at = params.crash_at.or(Some((FaultPoint::AfterOffsetCommit, 1)));
                params.compensator = scenario == Scenario::CompensatedAutoCommit;
            }
            Scenario::Standard => {
                // Knobs added after the first regressions were recorded draw from their own
                // stream, so every older knob keeps its value for a given seed.
                let mut later = SplitMix::new(seed ^ 0x6c61_7465_7231);
                params.compensator = later.chance(0.5);
                params.redis_keys_max = later.chance(0.3).then(|| later.between(5, 100) as usize);
            }
            Scenario::LiteralCommitRule => {}
            _ => params.faults = params.faults.max(1),
        }
        params.liveness_ms = params.liveness_bound_ms();
        params
    }

    /// The cap on how long the healed system may take to converge while it still progresses:
    /// a fixed allowance for recovery (sessions expiring, leaders elected, retries backing
    /// off) plus the workload's own work at its slowest (about eight events an order, every
    /// one through a single member's workers, each in a batch of its own, about 25 ms of
    /// round trips to the cache and the store, and as slow as the slowest worker). A run that
    /// stops progressing fails long before, after `runner::STALL_BOUND_MS`.
    pub fn liveness_bound_ms(&self) -> u64 {
        let concurrency = self.concurrency.max(1) as u64;
        let event_ms = 30 + self.slow_worker_ms.div_ceil(concurrency);
        60_000 + 8 * event_ms * self.orders as u64
    }

    /// The command that replays exactly this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo sim --seed {} --scenario {} --size {} --orders {} --faults {} --progress {}",
            self.seed,
            self.scenario,
            self.size.name(),
            self.orders,
            self.faults,
            self.progress
        )
    }
}

impl fmt::Display for RunParams {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let crash_at = match self.crash_at {
            Some((point, hit)) => format!("{point:?}#{hit}"),
            None => "none".into(),
        };
        write!(
            out,
            "seed={} scenario={} size={} progress={} extended_faults={} orders={} partitions={} consumers={} batch={} concurrency={} faults={} crash_at={} slow_workers<={}ms duplicates={}% compensator={} redis_keys_max={} safety={}ms liveness<={}ms",
            self.seed,
            self.scenario,
            self.size.name(),
            self.progress,
            self.extended_faults,
            self.orders,
            self.partitions,
            self.consumers,
            self.batch_size,
            self.concurrency,
            self.faults,
            crash_at,
            self.slow_worker_ms,
            self.duplicate_percent,
            if self.compensator { "on" } else { "off" },
            self.redis_keys_max.map_or("unbounded".to_string(), |n| n.to_string()),
            self.safety_ms,
            self.liveness_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_parameters_and_seeds_differ() {
        let a = RunParams::derive(7, Scenario::Standard);
        assert_eq!(a, RunParams::derive(7, Scenario::Standard));
        let distinct: std::collections::BTreeSet<String> = (0..50)
            .map(|seed| RunParams::derive(seed, Scenario::Standard).to_string())
            .collect();
        assert_eq!(distinct.len(), 50);
        assert!(a
            .replay_command()
            .starts_with("cargo sim --seed 7 --scenario standard"));
    }

    #[test]
    fn parameters_stay_in_their_ranges() {
        for seed in 0..500 {
            let params = RunParams::derive_sized(seed, Scenario::Standard, Size::Recorded);
            assert!((10..=60).contains(&params.orders));
            assert!((1..=3).contains(&params.consumers));
            assert!((1..=64).contains(&params.batch_size));
            assert!(params.safety_ms < params.liveness_ms);
        }
    }

    #[test]
    fn sizes_change_only_orders_and_the_crash_pass() {
        let (mut tiny, mut large, mut late) = (0, 0, 0);
        for seed in 0..1000 {
            let recorded = RunParams::derive_sized(seed, Scenario::Standard, Size::Recorded);
            let mixed = RunParams::derive(seed, Scenario::Standard);
            assert_eq!(mixed.batch_size, recorded.batch_size);
            assert_eq!(mixed.faults, recorded.faults);
            assert!((1..=600).contains(&mixed.orders));
            tiny += usize::from(mixed.orders <= 5);
            large += usize::from(mixed.orders >= 200);
            late += usize::from(mixed.crash_at.is_some_and(|(_, hit)| hit > 4));
            let big = RunParams::derive_sized(seed, Scenario::Standard, Size::Large);
            assert!((300..=1_000).contains(&big.orders));
            assert!(big.safety_ms < big.liveness_ms);
        }
        assert!(
            tiny > 100 && large > 20 && late > 100,
            "{tiny} {large} {late}"
        );
    }
}

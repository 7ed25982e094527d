//! Exponential backoff with deterministic jitter.
//!
//! Jitter comes from a seeded generator, not the OS, so a simulation replays exactly.

use crate::rng::SplitMix;
use std::time::Duration;

/// Delay schedule for one retried operation.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        debug_assert!(initial <= max, "backoff initial delay above its maximum");
        Backoff {
            initial,
            max,
            attempt: 0,
            rng: SplitMix::new(seed),
        }
    }

    /// Attempts made so far (calls to [`Backoff::next_delay`]).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt: `initial * 2^attempt`, capped at `max`, then scaled
    /// by a factor in [0.5, 1.0) so that many retriers do not move in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let base = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        let fraction = 0.5 + self.rng.unit() / 2.0;
        let delay = base.mul_f64(fraction);
        debug_assert!(delay <= self.max, "jittered delay above the maximum");
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_within_bounds() {
        let initial = Duration::from_millis(10);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(initial, max, 7);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        for (attempt, delay) in delays.iter().enumerate() {
            let base = initial.saturating_mul(1 << attempt).min(max);
            assert!(
                *delay >= base / 2,
                "attempt {attempt}: {delay:?} < half of {base:?}"
            );
            assert!(*delay <= base, "attempt {attempt}: {delay:?} > {base:?}");
        }
        assert!(delays[11] >= max / 2);
        assert_eq!(backoff.attempts(), 12);
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let run = |seed| {
            let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), seed);
            (0..8).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}

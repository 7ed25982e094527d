//! A tiny deterministic random generator (SplitMix64).
//!
//! holdfast never asks the OS for randomness in its logic: the workload, the retry jitter and
//! the simulator's fault schedule all come from a seed, so a seed means the same run on every
//! machine.

/// SplitMix64: fast, small, and identical on every platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[0, bound)`; `bound` must be positive.
    pub fn below(&mut self, bound: usize) -> usize {
        debug_assert!(bound > 0, "below(0) has no value to return");
        (self.next_u64() % bound.max(1) as u64) as usize
    }

    /// A value in `[low, high]`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with `probability`.
    pub fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = SplitMix::new(9);
        let mut b = SplitMix::new(9);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let value = a.between(3, 7);
            b.between(3, 7);
            assert!((3..=7).contains(&value));
            assert!(a.below(5) < 5);
            b.below(5);
            let unit = a.unit();
            b.unit();
            assert!((0.0..1.0).contains(&unit));
        }
        assert_ne!(SplitMix::new(1).next_u64(), SplitMix::new(2).next_u64());
    }

    /// Goal: `between` and `below` reach every value of their range, its ends included.
    /// Method: 1,000 draws each.
    #[test]
    fn ranges_are_covered_to_their_ends() {
        let mut rng = SplitMix::new(5);
        let between: std::collections::BTreeSet<u64> =
            (0..1000).map(|_| rng.between(3, 7)).collect();
        assert_eq!(between.into_iter().collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
        let below: std::collections::BTreeSet<usize> = (0..1000).map(|_| rng.below(4)).collect();
        assert_eq!(below.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    /// Goal: the generator is SplitMix64 itself, so that a seed means the same run wherever
    /// it is replayed (the regression seeds rely on it). Method: the first three outputs from
    /// state 0, computed apart from this code from the published algorithm (Vigna's
    /// `splitmix64.c`).
    #[test]
    fn matches_the_published_splitmix64_sequence() {
        let mut rng = SplitMix::new(0);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            first,
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f
            ]
        );
    }
}

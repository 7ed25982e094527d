//! The dedup protocol for one batch: pre-filter with the cache, apply in the store, remember in
//! the cache only after the store committed.
//!
//! The store's unique key is the guarantee; the cache only saves round trips. So every cache
//! failure degrades to store-only dedup (more database work, never a double effect), while a
//! store failure is returned to the caller, who retries the whole batch: a retry is safe because
//! the store reports already-applied keys as duplicates.

use super::IdempotencyKey;
use crate::event::OrderEvent;
use crate::planted::PlantedBug;
use crate::ports::{ApplyOutcome, DedupCache, FaultPoint, OrderStore, PortError, Probe};
use std::collections::HashSet;
use std::time::Duration;

/// How long the cache remembers a key by default: longer than any redelivery window holdfast
/// expects (consumer restarts, rebalances, a day-long outage of a downstream service).
pub const CACHE_TTL_DEFAULT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Settings of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// How long a remembered key stays in the cache.
    pub cache_ttl: Duration,
    /// A deliberate defect, for tests and model checking only
    /// ([`PlantedBug::CacheWrittenBeforeStore`] is the one this module honours).
    pub planted: Option<PlantedBug>,
}

impl Default for ProtocolConfig {
    fn default() -> ProtocolConfig {
        ProtocolConfig {
            cache_ttl: CACHE_TTL_DEFAULT,
            planted: None,
        }
    }
}

/// What happened to one event of a batch. Every verdict means the event is finished: its offset
/// may be acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The store applied it in this batch.
    Applied,
    /// The cache remembered its key; the store was not asked.
    SkippedByCache,
    /// An earlier event of the same batch has the same key.
    DuplicateInBatch,
    /// The store already had its key (a redelivery whose cache entry was missing).
    DuplicateInStore,
}

/// The outcome of [`apply_batch`]: one verdict per input event, in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReport {
    pub verdicts: Vec<Verdict>,
    /// The cache failed at least once for this batch, and store-only dedup was used.
    pub cache_degraded: bool,
}

impl BatchReport {
    /// How many events got `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.verdicts
            .iter()
            .filter(|&&each| each == verdict)
            .count()
    }
}

/// Runs the protocol for one batch of events.
///
/// Steps: compute keys; drop in-batch duplicates (the first occurrence wins); ask the cache
/// (on failure, treat every key as unknown); [`FaultPoint::AfterCacheCheck`]; apply the rest in
/// the store in one transaction (its errors are returned: nothing of the batch committed, the
/// caller retries); [`FaultPoint::AfterStoreCommit`]; remember the keys the store now holds
/// (failures only degrade); [`FaultPoint::AfterCacheWrite`].
pub async fn apply_batch<C: DedupCache, S: OrderStore, P: Probe>(
    cache: &C,
    store: &S,
    probe: &P,
    events: &[OrderEvent],
    config: &ProtocolConfig,
) -> Result<BatchReport, PortError> {
    let keys: Vec<IdempotencyKey> = events.iter().map(IdempotencyKey::of).collect();
    let mut verdicts: Vec<Option<Verdict>> = first_occurrences(&keys);
    let unique: Vec<usize> = (0..events.len())
        .filter(|&index| verdicts[index].is_none())
        .collect();

    let mut cache_degraded = false;
    let known = check_cache(cache, &keys, &unique, &mut cache_degraded).await;
    let mut pending: Vec<usize> = Vec::with_capacity(unique.len());
    for (&index, is_known) in unique.iter().zip(known) {
        if is_known {
            verdicts[index] = Some(Verdict::SkippedByCache);
        } else {
            pending.push(index);
        }
    }
    probe.at(FaultPoint::AfterCacheCheck).await;

    let pending_keys: Vec<IdempotencyKey> =
        pending.iter().map(|&index| keys[index].clone()).collect();
    let planted_early = config.planted == Some(PlantedBug::CacheWrittenBeforeStore);
    if planted_early && !pending_keys.is_empty() {
        // The planted bug: a crash between this write and the store commit loses the events.
        remember(cache, &pending_keys, config.cache_ttl, &mut cache_degraded).await;
    }
    if !pending.is_empty() {
        let batch: Vec<OrderEvent> = pending.iter().map(|&index| events[index].clone()).collect();
        let outcomes = store.apply_batch(&batch).await?;
        if outcomes.len() != batch.len() {
            return Err(PortError::Rejected {
                service: "store",
                detail: format!(
                    "{} outcomes for a batch of {} events",
                    outcomes.len(),
                    batch.len()
                ),
            });
        }
        for (&index, outcome) in pending.iter().zip(outcomes) {
            verdicts[index] = Some(match outcome {
                ApplyOutcome::Applied => Verdict::Applied,
                ApplyOutcome::Duplicate => Verdict::DuplicateInStore,
            });
        }
    }
    probe.at(FaultPoint::AfterStoreCommit).await;

    // Both Applied and DuplicateInStore keys are now in the store: remembering them is true.
    if !planted_early && !pending_keys.is_empty() {
        remember(cache, &pending_keys, config.cache_ttl, &mut cache_degraded).await;
    }
    probe.at(FaultPoint::AfterCacheWrite).await;

    let verdicts: Vec<Verdict> = verdicts.into_iter().flatten().collect();
    debug_assert_eq!(verdicts.len(), events.len(), "every event has a verdict");
    Ok(BatchReport {
        verdicts,
        cache_degraded,
    })
}

/// `Some(DuplicateInBatch)` for every key seen earlier in the batch, `None` for first ones.
fn first_occurrences(keys: &[IdempotencyKey]) -> Vec<Option<Verdict>> {
    let mut seen: HashSet<&IdempotencyKey> = HashSet::with_capacity(keys.len());
    keys.iter()
        .map(|key| (!seen.insert(key)).then_some(Verdict::DuplicateInBatch))
        .collect()
}

/// Asks the cache about the keys at `indexes`. Any failure (including a malformed answer) means
/// "nothing is known": the store will decide.
async fn check_cache<C: DedupCache>(
    cache: &C,
    keys: &[IdempotencyKey],
    indexes: &[usize],
    cache_degraded: &mut bool,
) -> Vec<bool> {
    let unknown = vec![false; indexes.len()];
    if indexes.is_empty() {
        return unknown;
    }
    let asked: Vec<IdempotencyKey> = indexes.iter().map(|&index| keys[index].clone()).collect();
    match cache.contains_batch(&asked).await {
        Ok(known) if known.len() == asked.len() => known,
        Ok(known) => {
            tracing::warn!(
                answers = known.len(),
                keys = asked.len(),
                "dedup cache answered for the wrong number of keys; using store-only dedup"
            );
            *cache_degraded = true;
            unknown
        }
        Err(error) => {
            tracing::warn!(%error, "dedup cache lookup failed; using store-only dedup");
            *cache_degraded = true;
            unknown
        }
    }
}

/// Remembers keys; a failure costs only future round trips, so it is logged, not returned.
async fn remember<C: DedupCache>(
    cache: &C,
    keys: &[IdempotencyKey],
    ttl: Duration,
    cache_degraded: &mut bool,
) {
    if let Err(error) = cache.remember_batch(keys, ttl).await {
        tracing::warn!(%error, keys = keys.len(), "dedup cache write failed; keys stay store-only");
        *cache_degraded = true;
    }
}

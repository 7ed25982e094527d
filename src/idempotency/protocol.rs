//! The dedup protocol for one batch: pre-filter with the cache, apply in the store, remember in
//! the cache only after the store committed.
//!
//! The store's unique key is the guarantee; the cache only saves round trips. So every cache
//! failure degrades to store-only dedup (more database work, never a double effect), while a
//! store failure is returned to the caller, who retries the whole batch: a retry is safe because
//! the store reports already-applied keys as duplicates.

use super::DeliveryKey;
use crate::event::OrderEvent;
use crate::ports::{
    ApplyOutcome, DedupCache, FaultPoint, OrderStore, PortError, Probe, ProgressWrite,
};
use std::borrow::Cow;
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
}

impl Default for ProtocolConfig {
    fn default() -> ProtocolConfig {
        ProtocolConfig {
            cache_ttl: CACHE_TTL_DEFAULT,
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
    /// An earlier event of the same batch is the same delivery (same key and content).
    DuplicateInBatch,
    /// The store already had its key (a redelivery whose cache entry was missing, or a
    /// different event under the same key, which the store joined by the conflict rule).
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
/// Steps: compute delivery keys (the idempotency key and the event's content: the cache may
/// skip only what the store already holds); drop in-batch repeats of a delivery (the first
/// occurrence wins); ask the cache
/// (on failure, treat every key as unknown); [`FaultPoint::AfterCacheCheck`]; apply the rest in
/// the store in one transaction with `progress` (its errors are returned: nothing of the batch committed, the
/// caller retries); [`FaultPoint::AfterStoreCommit`]; remember the keys the store now holds
/// (failures only degrade); [`FaultPoint::AfterCacheWrite`].
pub async fn apply_batch<C: DedupCache, S: OrderStore, P: Probe>(
    cache: &C,
    store: &S,
    probe: &P,
    events: &[OrderEvent],
    progress: &[ProgressWrite],
    config: &ProtocolConfig,
) -> Result<BatchReport, PortError> {
    let keys: Vec<DeliveryKey> = events.iter().map(DeliveryKey::of).collect();
    let mut verdicts: Vec<Option<Verdict>> = first_occurrences(&keys);
    // The first occurrences' keys are moved, not copied, on to the cache and the store.
    let (unique, unique_keys): (Vec<usize>, Vec<DeliveryKey>) = keys
        .into_iter()
        .enumerate()
        .filter(|(index, _)| verdicts[*index].is_none())
        .unzip();

    let mut cache_degraded = false;
    let known = check_cache(cache, &unique_keys, &mut cache_degraded).await;
    let mut pending: Vec<usize> = Vec::with_capacity(unique.len());
    let mut pending_keys: Vec<DeliveryKey> = Vec::with_capacity(unique.len());
    for ((index, key), is_known) in unique.into_iter().zip(unique_keys).zip(known) {
        if is_known {
            verdicts[index] = Some(Verdict::SkippedByCache);
        } else {
            pending.push(index);
            pending_keys.push(key);
        }
    }
    probe.at(FaultPoint::AfterCacheCheck).await;

    if !pending.is_empty() {
        let batch: Cow<'_, [OrderEvent]> = if pending.len() == events.len() {
            Cow::Borrowed(events)
        } else {
            Cow::Owned(pending.iter().map(|&index| events[index].clone()).collect())
        };
        let outcomes = store.apply_batch(&batch, progress).await?;
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

    // Applied and DuplicateInStore deliveries are now in the store (the latter joined into its
    // row): remembering them is true.
    if !pending_keys.is_empty() {
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

/// `Some(DuplicateInBatch)` for every delivery seen earlier in the batch, `None` for first
/// ones.
fn first_occurrences(keys: &[DeliveryKey]) -> Vec<Option<Verdict>> {
    let mut seen: HashSet<&DeliveryKey> = HashSet::with_capacity(keys.len());
    keys.iter()
        .map(|key| (!seen.insert(key)).then_some(Verdict::DuplicateInBatch))
        .collect()
}

/// Asks the cache about `keys`. Any failure (including a malformed answer) means "nothing is
/// known": the store will decide.
async fn check_cache<C: DedupCache>(
    cache: &C,
    keys: &[DeliveryKey],
    cache_degraded: &mut bool,
) -> Vec<bool> {
    let unknown = vec![false; keys.len()];
    if keys.is_empty() {
        return unknown;
    }
    match cache.contains_batch(keys).await {
        Ok(known) if known.len() == keys.len() => known,
        Ok(known) => {
            tracing::warn!(
                answers = known.len(),
                keys = keys.len(),
                "dedup cache answered for the wrong number of keys; using store-only dedup"
            );
            *cache_degraded = true;
            unknown
        }
        Err(error) => {
            crate::reach!("protocol.cache_lookup_failed");
            tracing::warn!(%error, "dedup cache lookup failed; using store-only dedup");
            *cache_degraded = true;
            unknown
        }
    }
}

/// Remembers keys; a failure costs only future round trips, so it is logged, not returned.
async fn remember<C: DedupCache>(
    cache: &C,
    keys: &[DeliveryKey],
    ttl: Duration,
    cache_degraded: &mut bool,
) {
    if let Err(error) = cache.remember_batch(keys, ttl).await {
        crate::reach!("protocol.cache_write_failed");
        tracing::warn!(%error, keys = keys.len(), "dedup cache write failed; keys stay store-only");
        *cache_degraded = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::idempotency::memory::{MemoryCache, MemoryStore};
    use crate::ports::NoProbe;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    /// Runs a future whose every await is ready (the in-memory ports never wait).
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("in-memory ports never wait"),
        }
    }

    /// Records the fault points passed and, at one of them, runs a hook (a "crash" flips a
    /// failure switch or snapshots state).
    #[derive(Default)]
    struct RecordingProbe {
        passed: Mutex<Vec<FaultPoint>>,
    }

    impl Probe for RecordingProbe {
        async fn at(&self, point: FaultPoint) {
            self.passed.lock().unwrap().push(point);
        }
    }

    fn event(event_id: &str, order_id: &str, kind: EventKind) -> OrderEvent {
        OrderEvent {
            event_id: event_id.into(),
            order_id: order_id.into(),
            user_id: "u".into(),
            kind,
            amount_minor: kind.carries_amount().then_some(100),
            event_time_ms: 1,
            payload: bytes::Bytes::new(),
        }
    }

    fn batch() -> Vec<OrderEvent> {
        vec![
            event("e1", "o1", EventKind::Created),
            event("e2", "o1", EventKind::Paid),
            event("e3", "o2", EventKind::Created),
        ]
    }

    fn run(
        cache: &MemoryCache,
        store: &MemoryStore,
        events: &[OrderEvent],
        config: &ProtocolConfig,
    ) -> Result<BatchReport, PortError> {
        block_on(apply_batch(cache, store, &NoProbe, events, &[], config))
    }

    fn assert_applied_once(store: &MemoryStore) {
        assert!(store.applications().values().all(|&count| count == 1));
    }

    /// Goal: the happy path and the probe order. Method: one fresh batch, then the same batch
    /// again (all skipped by the cache, the store not asked).
    #[test]
    fn fresh_batch_is_applied_then_skipped_by_cache() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let probe = RecordingProbe::default();
        let config = ProtocolConfig::default();
        let report = block_on(apply_batch(&cache, &store, &probe, &batch(), &[], &config)).unwrap();
        assert_eq!(report.verdicts, vec![Verdict::Applied; 3]);
        assert!(!report.cache_degraded);
        assert_eq!(
            *probe.passed.lock().unwrap(),
            vec![
                FaultPoint::AfterCacheCheck,
                FaultPoint::AfterStoreCommit,
                FaultPoint::AfterCacheWrite
            ]
        );
        assert_eq!(cache.len(), 3);
        let again = run(&cache, &store, &batch(), &config).unwrap();
        assert_eq!(again.verdicts, vec![Verdict::SkippedByCache; 3]);
        assert_eq!(store.applied_events().len(), 3);
        assert_applied_once(&store);
    }

    /// Goal: an in-batch repeat of a delivery is dropped, first occurrence wins; a rival
    /// under the same key goes to the store, which joins it by the rule; repeating kinds with
    /// different event ids are not duplicates. Method: a batch with a verbatim repeat, a
    /// rival payment, and two refunds.
    #[test]
    fn in_batch_repeats_keep_the_first_and_rivals_reach_the_store() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let mut events = batch();
        events.push(events[1].clone());
        let mut rival = events[1].clone();
        rival.event_id = "e2-rival".into();
        rival.event_time_ms -= 1;
        events.push(rival);
        events.push(event("r1", "o1", EventKind::Refunded));
        events.push(event("r2", "o1", EventKind::Refunded));
        let report = run(&cache, &store, &events, &ProtocolConfig::default()).unwrap();
        use Verdict::*;
        assert_eq!(
            report.verdicts,
            vec![
                Applied,
                Applied,
                Applied,
                DuplicateInBatch,
                DuplicateInStore,
                Applied,
                Applied
            ]
        );
        assert_eq!(report.count(Applied), 5);
        // The rival is earlier: the rule gives it the column although it came second.
        assert_eq!(
            store.rows()["o1"].paid.as_ref().unwrap().event_id,
            "e2-rival"
        );
        assert_eq!(store.rows()["o1"].refunds.len(), 2);
    }

    /// Goal: rivals converge to the rule whatever the order and batching, cache or no cache.
    /// Method: two payments and a refund id reused with another amount, delivered in every
    /// order, one per batch and all in one batch, each permutation twice (the second time the
    /// cache remembers); the row must equal the fold of the events.
    #[test]
    fn rivals_converge_whatever_the_arrival_order() {
        let paid = event("p1", "o1", EventKind::Paid);
        let mut rival = paid.clone();
        rival.event_id = "p0".into();
        rival.event_time_ms += 5;
        let refund = event("r1", "o1", EventKind::Refunded);
        let mut reused = refund.clone();
        reused.amount_minor = Some(7);
        let all = [paid, rival, refund, reused];
        let expected = crate::widetable::OrderRow::fold(&all).remove(0);
        let orders = [[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0], [2, 3, 0, 1]];
        for order in orders {
            let sequence: Vec<OrderEvent> = order.iter().map(|&i| all[i].clone()).collect();
            for one_batch in [false, true] {
                let (cache, store) = (MemoryCache::new(), MemoryStore::new());
                let config = ProtocolConfig::default();
                for _ in 0..2 {
                    if one_batch {
                        run(&cache, &store, &sequence, &config).unwrap();
                    } else {
                        for each in &sequence {
                            run(&cache, &store, std::slice::from_ref(each), &config).unwrap();
                        }
                    }
                }
                assert_eq!(
                    store.rows()["o1"],
                    expected,
                    "{order:?} one batch {one_batch}"
                );
                assert_eq!(store.applied_events().len(), 2, "one application per key");
            }
        }
    }

    /// Goal: a cache outage degrades to store-only dedup and still never applies twice.
    /// Method: apply with the cache up, take it down, redeliver plus one new event.
    #[test]
    fn cache_down_uses_store_only_dedup() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let config = ProtocolConfig::default();
        run(&cache, &store, &batch(), &config).unwrap();
        cache.set_failing(true);
        let mut events = batch();
        events.push(event("e4", "o2", EventKind::Paid));
        let report = run(&cache, &store, &events, &config).unwrap();
        assert!(report.cache_degraded);
        assert_eq!(report.count(Verdict::DuplicateInStore), 3);
        assert_eq!(report.verdicts[3], Verdict::Applied);
        assert_applied_once(&store);
        assert_eq!(store.applied_events().len(), 4);
        // Remembering failed too: the cache knows only what it knew before the outage.
        cache.set_failing(false);
        assert_eq!(cache.len(), 3);
    }

    /// Goal: a lost cache (FLUSHALL, restart) costs round trips, not correctness. Method:
    /// clear the cache, redeliver; the store reports duplicates and the cache re-learns them.
    #[test]
    fn cleared_cache_relearns_from_store_duplicates() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let config = ProtocolConfig::default();
        run(&cache, &store, &batch(), &config).unwrap();
        cache.clear();
        let report = run(&cache, &store, &batch(), &config).unwrap();
        assert_eq!(report.verdicts, vec![Verdict::DuplicateInStore; 3]);
        assert!(!report.cache_degraded);
        assert_eq!(cache.len(), 3, "DuplicateInStore keys are remembered");
        assert_applied_once(&store);
    }

    /// Goal: a store outage is an error and nothing is applied or remembered. Method: store
    /// down, apply, check both sides untouched; then recover and retry.
    #[test]
    fn store_down_returns_the_error_and_applies_nothing() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let config = ProtocolConfig::default();
        store.set_failing(true);
        let error = run(&cache, &store, &batch(), &config).unwrap_err();
        assert!(error.is_outage());
        assert!(store.applied_events().is_empty());
        assert!(
            cache.is_empty(),
            "nothing remembered for an uncommitted batch"
        );
        store.set_failing(false);
        let report = run(&cache, &store, &batch(), &config).unwrap();
        assert_eq!(report.verdicts, vec![Verdict::Applied; 3]);
    }

    /// Goal: a cache that answers for the wrong number of keys is not believed: the batch is
    /// deduplicated by the store alone, and nothing is skipped on a misaligned answer.
    /// Method: a cache that says "known" once, whatever it is asked.
    #[test]
    fn a_cache_answering_for_the_wrong_number_of_keys_is_ignored() {
        struct OneAnswer;
        impl DedupCache for OneAnswer {
            async fn contains_batch(&self, _: &[DeliveryKey]) -> Result<Vec<bool>, PortError> {
                Ok(vec![true])
            }
            async fn remember_batch(
                &self,
                _: &[DeliveryKey],
                _: Duration,
            ) -> Result<(), PortError> {
                Ok(())
            }
        }
        let store = MemoryStore::new();
        let config = ProtocolConfig::default();
        let report = block_on(apply_batch(
            &OneAnswer,
            &store,
            &NoProbe,
            &batch(),
            &[],
            &config,
        ));
        let report = report.unwrap();
        assert_eq!(report.verdicts, vec![Verdict::Applied; 3]);
        assert!(report.cache_degraded);
        assert_eq!(store.applied_events().len(), 3);
    }

    /// Goal: the crash window between store commit and cache write is safe. Method: a probe
    /// that takes the cache down at AfterStoreCommit (the crash loses the cache write); the
    /// redelivered batch is all DuplicateInStore.
    #[test]
    fn redelivery_after_store_commit_is_all_duplicate_in_store() {
        struct CrashAfterCommit(MemoryCache);
        impl Probe for CrashAfterCommit {
            async fn at(&self, point: FaultPoint) {
                if point == FaultPoint::AfterStoreCommit {
                    self.0.set_failing(true);
                }
            }
        }
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let config = ProtocolConfig::default();
        let probe = CrashAfterCommit(cache.clone());
        let first = block_on(apply_batch(&cache, &store, &probe, &batch(), &[], &config)).unwrap();
        assert_eq!(first.verdicts, vec![Verdict::Applied; 3]);
        assert!(first.cache_degraded);
        cache.set_failing(false);
        assert!(cache.is_empty());
        let redelivered = run(&cache, &store, &batch(), &config).unwrap();
        assert_eq!(redelivered.verdicts, vec![Verdict::DuplicateInStore; 3]);
        assert_applied_once(&store);
    }

    /// Goal: an expired cache key falls back to the store. Method: remember with a 1 s TTL,
    /// move the clock past it, redeliver.
    #[test]
    fn expired_cache_keys_fall_back_to_the_store() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        let config = ProtocolConfig {
            cache_ttl: Duration::from_secs(1),
        };
        run(&cache, &store, &batch(), &config).unwrap();
        cache.advance_to(999);
        assert_eq!(
            run(&cache, &store, &batch(), &config).unwrap().verdicts,
            vec![Verdict::SkippedByCache; 3]
        );
        cache.advance_to(1000);
        assert_eq!(
            run(&cache, &store, &batch(), &config).unwrap().verdicts,
            vec![Verdict::DuplicateInStore; 3]
        );
    }

    /// Goal: an empty batch touches nothing. Method: apply no events.
    #[test]
    fn empty_batch_is_an_empty_report() {
        let (cache, store) = (MemoryCache::new(), MemoryStore::new());
        store.set_failing(true);
        cache.set_failing(true);
        let report = run(&cache, &store, &[], &ProtocolConfig::default()).unwrap();
        assert!(report.verdicts.is_empty());
        assert!(!report.cache_degraded);
    }

    #[test]
    fn default_ttl_is_seven_days() {
        assert_eq!(
            ProtocolConfig::default().cache_ttl,
            Duration::from_secs(604_800)
        );
    }
}

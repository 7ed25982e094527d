//! In-memory versions of the dedup cache and the order store, for tests and the simulator.
//!
//! The logic lives in two pure, synchronous state machines, [`CacheState`] and [`StoreState`],
//! with time passed in. [`MemoryCache`] and [`MemoryStore`] are thin, cloneable handles over
//! them that add failure switches; the simulator's Redis and PostgreSQL nodes can wrap the same
//! state machines so that every world runs the same dedup logic.

use super::{DeliveryKey, IdempotencyKey};
use crate::event::OrderEvent;
use crate::ports::{
    ApplyOutcome, CommittedOffset, DedupCache, OrderStore, PartitionId, PortError, ProgressWrite,
};
use crate::widetable::OrderRow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How an event joins its order's row; returns whether the row changed.
pub type Merge = fn(&mut OrderRow, &OrderEvent) -> bool;

/// The database schema a [`StoreState`] models. holdfast's ([`Schema::HOLDFAST`]) has a unique
/// key and joins rows by the conflict rule; the test kit models schemas without one or the
/// other, to show what each part guards.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    /// Whether the key table refuses a key it holds (PostgreSQL's primary key).
    pub unique_key: bool,
    /// How an event joins its row.
    pub merge: Merge,
}

impl Schema {
    /// holdfast's schema: a unique key, and [`OrderRow::apply`].
    pub const HOLDFAST: Schema = Schema {
        unique_key: true,
        merge: OrderRow::apply,
    };
}

impl Default for Schema {
    fn default() -> Schema {
        Schema::HOLDFAST
    }
}

/// The order store's state: the unique-key table, the wide rows, and a log of applications.
#[derive(Clone, Debug, Default)]
pub struct StoreState {
    schema: Schema,
    /// How many times each key was applied: 1 under a unique key, more without one.
    applications: BTreeMap<IdempotencyKey, u32>,
    rows: BTreeMap<String, OrderRow>,
    /// Every application, in order.
    applied: Vec<OrderEvent>,
    /// Each partition's progress row (`progress = store`).
    progress: BTreeMap<PartitionId, ProgressRow>,
}

/// One partition's progress row: the generation that claimed it and what it last wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressRow {
    pub owner: i32,
    pub progress: Option<CommittedOffset>,
}

/// A transaction refused because a progress row is claimed by a later generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    pub partition: PartitionId,
    pub owner: i32,
    pub claimed_by: Option<i32>,
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} is claimed by generation {:?}, not {}",
            self.partition, self.claimed_by, self.owner
        )
    }
}

impl Fenced {
    /// The port's form of the refusal.
    pub fn into_port_error(self) -> PortError {
        PortError::Fenced {
            service: "store",
            detail: self.to_string(),
        }
    }
}

impl StoreState {
    /// An empty store with holdfast's schema.
    pub fn new() -> StoreState {
        StoreState::default()
    }

    /// An empty store with `schema`.
    pub fn with_schema(schema: Schema) -> StoreState {
        StoreState {
            schema,
            ..StoreState::default()
        }
    }

    /// One transaction: for each event in order, insert its key (applied if it was new, so a
    /// key met twice in one batch is applied once) and join the event into its row, applied or
    /// not: an exact redelivery changes nothing, and a different event under the same key
    /// takes its column only if the conflict rule says so, whatever arrived first (under
    /// holdfast's [`Schema`]; another schema may apply every event or merge otherwise).
    pub fn apply_batch(&mut self, events: &[OrderEvent]) -> Vec<ApplyOutcome> {
        let Schema { unique_key, merge } = self.schema;
        let outcomes: Vec<ApplyOutcome> = events
            .iter()
            .map(|event| {
                let key = IdempotencyKey::of(event);
                let count = self.applications.entry(key).or_insert(0);
                let outcome = if unique_key && *count > 0 {
                    ApplyOutcome::Duplicate
                } else {
                    *count += 1;
                    self.applied.push(event.clone());
                    ApplyOutcome::Applied
                };
                let row = self
                    .rows
                    .entry(event.order_id.clone())
                    .or_insert_with(|| OrderRow::new(&event.order_id, ""));
                merge(row, event);
                outcome
            })
            .collect();
        debug_assert_eq!(outcomes.len(), events.len());
        outcomes
    }

    /// One transaction of `progress = store`: refused whole if any write's partition is not
    /// claimed by the write's owner; otherwise [`StoreState::apply_batch`], then each write
    /// replaces its row's progress unless the row's point is further along.
    pub fn transaction(
        &mut self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, Fenced> {
        for write in progress {
            let claimed_by = self.progress.get(&write.partition).map(|row| row.owner);
            if claimed_by != Some(write.owner) {
                return Err(Fenced {
                    partition: write.partition,
                    owner: write.owner,
                    claimed_by,
                });
            }
        }
        let outcomes = self.apply_batch(events);
        for write in progress {
            if let Some(row) = self.progress.get_mut(&write.partition) {
                let behind = row
                    .progress
                    .as_ref()
                    .is_some_and(|stored| stored.offset > write.progress.offset);
                if !behind {
                    row.progress = Some(write.progress.clone());
                }
            }
        }
        Ok(outcomes)
    }

    /// Claims `partition`'s progress row for generation `owner` (refused if a later one holds
    /// it) and returns its progress.
    pub fn claim_progress(
        &mut self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, Fenced> {
        let row = self.progress.entry(partition).or_insert(ProgressRow {
            owner,
            progress: None,
        });
        if row.owner > owner {
            return Err(Fenced {
                partition,
                owner,
                claimed_by: Some(row.owner),
            });
        }
        row.owner = owner;
        Ok(row.progress.clone())
    }

    /// Each partition's progress row.
    pub fn progress_rows(&self) -> &BTreeMap<PartitionId, ProgressRow> {
        &self.progress
    }

    /// Whether the store holds `key`.
    pub fn contains(&self, key: &IdempotencyKey) -> bool {
        self.applications.contains_key(key)
    }

    /// The wide row of one order.
    pub fn row(&self, order_id: &str) -> Option<&OrderRow> {
        self.rows.get(order_id)
    }

    /// How many times each key was applied.
    pub fn applications(&self) -> &BTreeMap<IdempotencyKey, u32> {
        &self.applications
    }

    /// Every wide row, by order id.
    pub fn rows(&self) -> &BTreeMap<String, OrderRow> {
        &self.rows
    }

    /// Every applied event, in application order.
    pub fn applied_events(&self) -> &[OrderEvent] {
        &self.applied
    }
}

/// The dedup cache's state: keys with expiry times, and the current time as last told.
#[derive(Clone, Debug, Default)]
pub struct CacheState {
    expires_at_ms: BTreeMap<DeliveryKey, u64>,
    now_ms: u64,
}

impl CacheState {
    /// An empty cache at time zero.
    pub fn new() -> CacheState {
        CacheState::default()
    }

    /// The current time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Moves time forward to `now_ms` and drops expired keys. Time never goes back: an earlier
    /// `now_ms` is ignored.
    pub fn advance_to(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        self.expires_at_ms
            .retain(|_, expires_at_ms| *expires_at_ms > now_ms);
    }

    /// Whether `key` is remembered and not expired.
    pub fn contains(&self, key: &DeliveryKey) -> bool {
        self.expires_at_ms
            .get(key)
            .is_some_and(|&expires_at_ms| expires_at_ms > self.now_ms)
    }

    /// Remembers `key` for `ttl` from now (like Redis `SET ... PX`, a repeat refreshes it).
    pub fn remember(&mut self, key: DeliveryKey, ttl: Duration) {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.expires_at_ms
            .insert(key, self.now_ms.saturating_add(ttl_ms));
    }

    /// Forgets one key (an eviction).
    pub fn forget(&mut self, key: &DeliveryKey) -> bool {
        self.expires_at_ms.remove(key).is_some()
    }

    /// Forgets everything (Redis `FLUSHALL`, or a restart without persistence).
    pub fn clear(&mut self) {
        self.expires_at_ms.clear();
    }

    /// How many keys are remembered and not expired.
    pub fn len(&self) -> usize {
        self.expires_at_ms
            .values()
            .filter(|&&expires_at_ms| expires_at_ms > self.now_ms)
            .count()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Locks shared state. A panic while holding one of these locks cannot leave the state half
/// changed (every mutation is a single call on a pure state machine), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct CacheShared {
    state: CacheState,
    failing: bool,
}

/// An in-memory [`DedupCache`] with a failure switch. Clones share one cache.
#[derive(Clone, Debug, Default)]
pub struct MemoryCache {
    shared: Arc<Mutex<CacheShared>>,
}

impl MemoryCache {
    /// An empty, healthy cache at time zero.
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }

    /// While `failing`, every port call returns [`PortError::Unavailable`].
    pub fn set_failing(&self, failing: bool) {
        lock(&self.shared).failing = failing;
    }

    /// Forgets every key (Redis `FLUSHALL` or a restart).
    pub fn clear(&self) {
        lock(&self.shared).state.clear();
    }

    /// Forgets one key (an eviction); returns whether it was there.
    pub fn forget(&self, key: &DeliveryKey) -> bool {
        lock(&self.shared).state.forget(key)
    }

    /// How many keys are remembered and not expired.
    pub fn len(&self) -> usize {
        lock(&self.shared).state.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is remembered, bypassing the failure switch (for checkers).
    pub fn contains(&self, key: &DeliveryKey) -> bool {
        lock(&self.shared).state.contains(key)
    }

    /// Sets the cache's clock; keys expire against it. Time never goes back.
    pub fn set_now_ms(&self, now_ms: u64) {
        lock(&self.shared).state.advance_to(now_ms);
    }

    /// Same as [`MemoryCache::set_now_ms`].
    pub fn advance_to(&self, now_ms: u64) {
        self.set_now_ms(now_ms);
    }

    fn unavailable() -> PortError {
        PortError::Unavailable {
            service: "cache",
            detail: "the in-memory cache is switched to failing".to_owned(),
        }
    }
}

impl DedupCache for MemoryCache {
    async fn contains_batch(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, PortError> {
        let shared = lock(&self.shared);
        if shared.failing {
            return Err(MemoryCache::unavailable());
        }
        Ok(keys.iter().map(|key| shared.state.contains(key)).collect())
    }

    async fn remember_batch(&self, keys: &[DeliveryKey], ttl: Duration) -> Result<(), PortError> {
        let mut shared = lock(&self.shared);
        if shared.failing {
            return Err(MemoryCache::unavailable());
        }
        for key in keys {
            shared.state.remember(key.clone(), ttl);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct StoreShared {
    state: StoreState,
    failing: bool,
}

/// An in-memory [`OrderStore`] with a failure switch. Clones share one store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    shared: Arc<Mutex<StoreShared>>,
}

impl MemoryStore {
    /// An empty, healthy store with a unique key.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store with `schema` (see [`Schema`]).
    pub fn with_schema(schema: Schema) -> MemoryStore {
        let store = MemoryStore::new();
        lock(&store.shared).state = StoreState::with_schema(schema);
        store
    }

    /// While `failing`, every port call returns [`PortError::Unavailable`] and changes nothing.
    pub fn set_failing(&self, failing: bool) {
        lock(&self.shared).failing = failing;
    }

    /// How many times each key was applied (more than 1 only without a unique key).
    pub fn applications(&self) -> BTreeMap<IdempotencyKey, u32> {
        lock(&self.shared).state.applications().clone()
    }

    /// Every wide row, by order id.
    pub fn rows(&self) -> BTreeMap<String, OrderRow> {
        lock(&self.shared).state.rows().clone()
    }

    /// Every applied event, in application order.
    pub fn applied_events(&self) -> Vec<OrderEvent> {
        lock(&self.shared).state.applied_events().to_vec()
    }

    /// A copy of the whole state (for checkers and snapshots).
    pub fn state(&self) -> StoreState {
        lock(&self.shared).state.clone()
    }

    fn unavailable() -> PortError {
        PortError::Unavailable {
            service: "store",
            detail: "the in-memory store is switched to failing".to_owned(),
        }
    }
}

impl OrderStore for MemoryStore {
    async fn apply_batch(
        &self,
        events: &[OrderEvent],
        progress: &[ProgressWrite],
    ) -> Result<Vec<ApplyOutcome>, PortError> {
        let mut shared = lock(&self.shared);
        if shared.failing {
            return Err(MemoryStore::unavailable());
        }
        shared
            .state
            .transaction(events, progress)
            .map_err(Fenced::into_port_error)
    }

    async fn claim_progress(
        &self,
        partition: PartitionId,
        owner: i32,
    ) -> Result<Option<CommittedOffset>, PortError> {
        let mut shared = lock(&self.shared);
        if shared.failing {
            return Err(MemoryStore::unavailable());
        }
        shared
            .state
            .claim_progress(partition, owner)
            .map_err(Fenced::into_port_error)
    }

    async fn load_rows(
        &self,
        order_ids: &[String],
    ) -> Result<BTreeMap<String, OrderRow>, PortError> {
        let shared = lock(&self.shared);
        if shared.failing {
            return Err(MemoryStore::unavailable());
        }
        Ok(order_ids
            .iter()
            .filter_map(|id| shared.state.row(id).map(|row| (id.clone(), row.clone())))
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::EventKind;

    /// An event of order o1 (shared with other modules' tests).
    pub(crate) fn event(event_id: &str, kind: EventKind) -> OrderEvent {
        OrderEvent {
            event_id: event_id.into(),
            order_id: "o1".into(),
            user_id: "u1".into(),
            kind,
            amount_minor: kind.carries_amount().then_some(5),
            event_time_ms: 0,
            payload: bytes::Bytes::new(),
        }
    }

    /// Goal: the unique key makes a store batch idempotent, also within one batch. Method:
    /// apply a batch containing a repeated key, then the batch again.
    #[test]
    fn store_applies_each_key_once() {
        let mut state = StoreState::new();
        let created = event("e1", EventKind::Created);
        assert!(!state.contains(&IdempotencyKey::of(&created)));
        let outcomes = state.apply_batch(&[created.clone(), created.clone()]);
        assert_eq!(
            outcomes,
            vec![ApplyOutcome::Applied, ApplyOutcome::Duplicate]
        );
        assert_eq!(
            state.apply_batch(std::slice::from_ref(&created)),
            vec![ApplyOutcome::Duplicate]
        );
        assert_eq!(state.applications()[&IdempotencyKey::of(&created)], 1);
        assert_eq!(state.applied_events(), std::slice::from_ref(&created));
        assert!(state.contains(&IdempotencyKey::of(&created)));
        assert_eq!(state.row("o1").unwrap().status(), Some(EventKind::Created));
        assert!(state.row("o2").is_none());
    }

    /// Goal: a schema without a unique key really applies again. Method: apply three times,
    /// count.
    #[test]
    fn store_without_unique_key_applies_again() {
        let mut state = StoreState::with_schema(Schema {
            unique_key: false,
            ..Schema::HOLDFAST
        });
        let paid = event("e1", EventKind::Paid);
        for _ in 0..3 {
            assert_eq!(
                state.apply_batch(std::slice::from_ref(&paid)),
                vec![ApplyOutcome::Applied]
            );
        }
        assert_eq!(state.applications()[&IdempotencyKey::of(&paid)], 3);
        assert_eq!(state.applied_events().len(), 3);
    }

    /// Goal: TTL expiry is driven by the injected clock only. Method: remember, move time.
    #[test]
    fn cache_expires_by_injected_clock() {
        let mut state = CacheState::new();
        let key = DeliveryKey::of(&event("e1", EventKind::Created));
        state.advance_to(100);
        state.remember(key.clone(), Duration::from_millis(50));
        assert!(state.contains(&key));
        state.advance_to(149);
        assert!(state.contains(&key));
        assert_eq!(state.len(), 1);
        state.advance_to(10); // time never goes back
        assert_eq!(state.now_ms(), 149);
        state.advance_to(150);
        assert!(!state.contains(&key));
        assert!(state.is_empty());
        state.remember(key.clone(), Duration::MAX);
        assert!(state.contains(&key));
        assert!(!state.is_empty());
        assert!(state.forget(&key));
        assert!(!state.forget(&key));
        // A key that expires now is gone, before any clock move prunes it (Redis `PX 0`).
        state.remember(key.clone(), Duration::ZERO);
        assert!(!state.contains(&key));
        assert_eq!(state.len(), 0);
    }

    /// Goal: the failure switches and shared clones. Method: flip each switch, call every port
    /// method, check the error and that nothing changed.
    #[test]
    fn failure_switches_refuse_every_call_and_change_nothing() {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        macro_rules! now {
            ($future:expr) => {
                match std::pin::pin!($future).poll(&mut context) {
                    std::task::Poll::Ready(output) => output,
                    std::task::Poll::Pending => unreachable!("in-memory ports never wait"),
                }
            };
        }
        use std::future::Future;
        let cache = MemoryCache::new();
        let shared_cache = cache.clone();
        let key = DeliveryKey::of(&event("e1", EventKind::Created));
        cache.set_failing(true);
        let keys = std::slice::from_ref(&key);
        assert!(now!(shared_cache.remember_batch(keys, Duration::from_secs(1))).is_err());
        assert!(now!(shared_cache.contains_batch(keys))
            .unwrap_err()
            .is_outage());
        cache.set_failing(false);
        assert_eq!(now!(shared_cache.contains_batch(keys)), Ok(vec![false]));
        now!(shared_cache.remember_batch(keys, Duration::from_secs(1))).unwrap();
        assert!(cache.contains(&key));
        cache.set_now_ms(1000);
        assert!(!cache.contains(&key));
        now!(shared_cache.remember_batch(keys, Duration::from_secs(1))).unwrap();
        assert!(cache.forget(&key));
        assert!(!cache.forget(&key), "a forgotten key was forgotten again");
        now!(shared_cache.remember_batch(keys, Duration::from_secs(1))).unwrap();
        assert!(!cache.is_empty());
        cache.clear();
        assert!(cache.is_empty());

        let store = MemoryStore::new();
        let shared_store = store.clone();
        let created = event("e1", EventKind::Created);
        store.set_failing(true);
        let events = std::slice::from_ref(&created);
        assert!(now!(shared_store.apply_batch(events, &[]))
            .unwrap_err()
            .is_outage());
        let asked = ["o1".to_string(), "o2".to_string()];
        assert!(now!(shared_store.load_rows(&asked)).is_err());
        assert!(store.applied_events().is_empty());
        store.set_failing(false);
        assert_eq!(
            now!(shared_store.apply_batch(events, &[])),
            Ok(vec![ApplyOutcome::Applied])
        );
        assert!(store.state().contains(&key.key));
        assert_eq!(store.applications()[&key.key], 1);
        let rows = now!(shared_store.load_rows(&asked)).unwrap();
        assert_eq!(rows.len(), 1, "an order without events has no row");
        let row = rows["o1"].clone();
        assert_eq!(store.rows()["o1"], row);
        assert_eq!(store.state().applied_events().len(), 1);
    }

    /// Goal: a transaction whose progress row another generation holds (or nobody claimed) is
    /// refused whole, naming the partition and both generations. Method: claims by
    /// generations 3 and then 2 (refused), writes as 2 and to an unclaimed partition.
    #[test]
    fn a_transaction_for_a_row_claimed_by_another_generation_is_fenced() {
        let mut state = StoreState::new();
        assert_eq!(state.claim_progress(4, 3), Ok(None));
        let refused = state.claim_progress(4, 2).unwrap_err();
        assert_eq!(refused.claimed_by, Some(3));
        let write = |partition, owner| ProgressWrite {
            partition,
            owner,
            progress: CommittedOffset {
                offset: 7,
                metadata: None,
            },
        };
        let created = event("e1", EventKind::Created);
        let fenced = state
            .transaction(std::slice::from_ref(&created), &[write(4, 2)])
            .unwrap_err();
        let detail = "partition 4 is claimed by generation Some(3), not 2";
        assert_eq!(fenced.to_string(), detail);
        let unclaimed = state.transaction(&[], &[write(5, 3)]).unwrap_err();
        assert_eq!(
            unclaimed.to_string(),
            "partition 5 is claimed by generation None, not 3"
        );
        assert!(
            state.applied_events().is_empty(),
            "a fenced transaction applied"
        );
        assert_eq!(state.progress_rows()[&4].progress, None);
        assert!(matches!(
            fenced.into_port_error(),
            PortError::Fenced { detail: text, .. } if text == detail
        ));
    }

    /// Goal: a progress write replaces the stored point unless that point is further along; a
    /// write at the same offset replaces the metadata, as the PostgreSQL store's `<=` does.
    /// Method: writes at 10, then 5 (behind), 10 with other metadata, 12.
    #[test]
    fn a_progress_write_keeps_a_stored_point_further_along() {
        let mut state = StoreState::new();
        assert_eq!(state.claim_progress(0, 1), Ok(None));
        let mut stored = |offset: i64, metadata: &str| {
            let write = ProgressWrite {
                partition: 0,
                owner: 1,
                progress: CommittedOffset {
                    offset,
                    metadata: Some(metadata.to_owned()),
                },
            };
            state.transaction(&[], &[write]).unwrap();
            let progress = state.progress_rows()[&0].progress.clone().unwrap();
            (progress.offset, progress.metadata.unwrap())
        };
        assert_eq!(stored(10, "a"), (10, "a".to_owned()));
        assert_eq!(stored(5, "b"), (10, "a".to_owned()), "a write behind won");
        assert_eq!(stored(10, "c"), (10, "c".to_owned()), "an equal write lost");
        assert_eq!(stored(12, "d"), (12, "d".to_owned()));
    }
}

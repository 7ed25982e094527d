//! The PostgreSQL model's open transactions and their row locks.
//!
//! A transaction's statements lock the rows they write: its partitions' progress rows and its
//! orders' rows (an order's keys and its wide row, which PostgreSQL locks by the order's row).
//! It keeps them until its client commits, until the client is known gone (it gave up
//! waiting and closed its connection), or until the server ends it for sitting idle
//! (`idle_in_transaction_session_timeout`, set by the real adapter). A progress claim waits
//! for its row's lock, as PostgreSQL's `INSERT … ON CONFLICT DO UPDATE` does. All of this
//! lives in the server's memory: a crash ends every open transaction.
//!
//! The idle limit is applied when it matters, without a timer per transaction: a request
//! waiting for a lock ends the holders whose limit passed (and wakes for the earliest one
//! still to pass), and a late commit finds its transaction ended.

use crate::world::lock::lock;
use holdfast::event::OrderEvent;
use holdfast::ports::{PartitionId, ProgressWrite};
use madsim::time::Instant;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::Notify;

/// A transaction's id, chosen by its client so that the client can name it when it gives up.
pub type TransactionId = u64;

/// What an open transaction will commit.
#[derive(Debug)]
pub struct Open {
    pub events: Vec<OrderEvent>,
    pub progress: Vec<ProgressWrite>,
    /// When the server ends it, once its statements have answered (none while they run).
    idle_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<TransactionId, Open>,
    progress_locks: HashMap<PartitionId, TransactionId>,
    order_locks: HashMap<String, TransactionId>,
    /// Transactions waiting for their locks.
    waiting: HashSet<TransactionId>,
    /// Waiting transactions whose client closed its connection.
    abandoned: HashSet<TransactionId>,
}

impl State {
    /// The open transactions holding a lock on any of these rows.
    fn holders<'a>(
        &self,
        partitions: impl Iterator<Item = PartitionId>,
        order_ids: impl Iterator<Item = &'a str>,
    ) -> BTreeSet<TransactionId> {
        let progress = partitions.filter_map(|p| self.progress_locks.get(&p));
        let orders = order_ids.filter_map(|id| self.order_locks.get(id));
        progress.chain(orders).copied().collect()
    }

    fn end(&mut self, id: TransactionId) -> Option<Open> {
        let open = self.open.remove(&id)?;
        for write in &open.progress {
            self.progress_locks.remove(&write.partition);
        }
        for event in &open.events {
            self.order_locks.remove(&event.order_id);
        }
        Some(open)
    }

    /// Ends those of `holders` whose idle limit has passed. Returns whether any ended, and
    /// the earliest limit still to come.
    fn end_idle(&mut self, holders: &BTreeSet<TransactionId>) -> (bool, Option<Instant>) {
        let now = Instant::now();
        let (mut ended, mut next) = (false, None::<Instant>);
        for id in holders {
            match self.open.get(id).and_then(|open| open.idle_until) {
                Some(until) if until <= now => {
                    self.end(*id);
                    holdfast::reach!("model.store_idle_transaction_ended");
                    ended = true;
                }
                Some(until) => next = Some(next.map_or(until, |next| next.min(until))),
                None => {}
            }
        }
        (ended, next)
    }
}

/// The open transactions of one server incarnation.
#[derive(Debug, Default)]
pub struct Sessions {
    state: Mutex<State>,
    /// Signalled whenever locks are released or a client gives up.
    released: Notify,
}

impl Sessions {
    /// Waits until every row `events` and `progress` write is unlocked, then opens
    /// transaction `id` holding their locks. False if its client gave up first, or if
    /// `deadline` (when the client stops waiting) passes.
    pub async fn open(
        &self,
        id: TransactionId,
        events: Vec<OrderEvent>,
        progress: Vec<ProgressWrite>,
        deadline: Instant,
    ) -> bool {
        lock(&self.state).waiting.insert(id);
        let opened = loop {
            let released = self.released.notified();
            let holders = {
                let mut state = lock(&self.state);
                if state.abandoned.remove(&id) {
                    break false;
                }
                let partitions = progress.iter().map(|write| write.partition);
                let orders = events.iter().map(|event| event.order_id.as_str());
                let holders = state.holders(partitions, orders);
                if holders.is_empty() {
                    for write in &progress {
                        state.progress_locks.insert(write.partition, id);
                    }
                    for event in &events {
                        state.order_locks.insert(event.order_id.clone(), id);
                    }
                    let idle_until = None;
                    let open = Open {
                        events,
                        progress,
                        idle_until,
                    };
                    state.open.insert(id, open);
                    break true;
                }
                holders
            };
            if !self.wait(&holders, released, deadline).await {
                break false;
            }
        };
        let mut state = lock(&self.state);
        state.waiting.remove(&id);
        state.abandoned.remove(&id);
        opened
    }

    /// Waits until `partition`'s progress row is unlocked; false if `deadline` passes first.
    pub async fn progress_row_free(&self, partition: PartitionId, deadline: Instant) -> bool {
        loop {
            let released = self.released.notified();
            let holders = lock(&self.state).holders(std::iter::once(partition), std::iter::empty());
            if holders.is_empty() {
                return true;
            }
            if !self.wait(&holders, released, deadline).await {
                return false;
            }
        }
    }

    /// One wait for `holders`' locks: ends those past their idle limit, else waits for a
    /// release or the next limit. False once `deadline` has passed.
    async fn wait(
        &self,
        holders: &BTreeSet<TransactionId>,
        released: tokio::sync::futures::Notified<'_>,
        deadline: Instant,
    ) -> bool {
        let (ended, next) = lock(&self.state).end_idle(holders);
        if ended {
            self.released.notify_waiters();
            return true;
        }
        let wake = next.map_or(deadline, |next| next.min(deadline));
        crate::world::rpc::within(wake, released).await;
        Instant::now() < deadline
    }

    /// The statements of `id` have answered: from now on it is idle until `until`.
    pub fn idle(&self, id: TransactionId, until: Instant) {
        if let Some(open) = lock(&self.state).open.get_mut(&id) {
            open.idle_until = Some(until);
        }
    }

    /// Ends transaction `id` for its commit and releases its locks; what it commits, unless
    /// it was ended before (idle past its limit, abandoned, or unknown to this incarnation).
    /// The caller commits it before its next await, so nothing runs between the two.
    pub fn commit(&self, id: TransactionId) -> Option<Open> {
        let mut state = lock(&self.state);
        let idle_until = state.open.get(&id)?.idle_until;
        let open = state.end(id)?;
        drop(state);
        self.released.notify_waiters();
        if idle_until.is_some_and(|until| until <= Instant::now()) {
            holdfast::reach!("model.store_idle_transaction_ended");
            return None;
        }
        Some(open)
    }

    /// The client of `id` closed its connection: end it, or, if it is still waiting for its
    /// locks, stop it from taking them.
    pub fn abandon(&self, id: TransactionId) {
        let mut state = lock(&self.state);
        let waiting = state.waiting.contains(&id);
        if state.end(id).is_none() && waiting {
            state.abandoned.insert(id);
        }
        drop(state);
        self.released.notify_waiters();
    }
}

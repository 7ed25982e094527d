//! The PostgreSQL model's open transactions and their row locks.
//!
//! A transaction's statements lock the rows they write: its partitions' progress rows and its
//! orders' rows (an order's keys and its wide row, which PostgreSQL locks by the order's row).
//! It keeps them until its client commits, until the client is known gone (it gave up
//! waiting and closed its connection), or until the server ends it for sitting idle
//! (`idle_in_transaction_session_timeout`, set by the real adapter). A progress claim waits
//! for its row's lock, as PostgreSQL's `INSERT … ON CONFLICT DO UPDATE` does. All of this
//! lives in the server's memory: a crash ends every open transaction.

use crate::world::lock::lock;
use holdfast::event::OrderEvent;
use holdfast::ports::{PartitionId, ProgressWrite};
use madsim::time::Instant;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::Notify;

/// A transaction's id, chosen by its client so that the client can name it when it gives up.
pub type TransactionId = u64;

/// What an open transaction will commit.
#[derive(Debug)]
pub struct Open {
    pub events: Vec<OrderEvent>,
    pub progress: Vec<ProgressWrite>,
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
    fn free(&self, events: &[OrderEvent], progress: &[ProgressWrite]) -> bool {
        progress
            .iter()
            .all(|write| !self.progress_locks.contains_key(&write.partition))
            && events
                .iter()
                .all(|event| !self.order_locks.contains_key(&event.order_id))
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
            {
                let mut state = lock(&self.state);
                if state.abandoned.remove(&id) {
                    break false;
                }
                if state.free(&events, &progress) {
                    for write in &progress {
                        state.progress_locks.insert(write.partition, id);
                    }
                    for event in &events {
                        state.order_locks.insert(event.order_id.clone(), id);
                    }
                    state.open.insert(id, Open { events, progress });
                    break true;
                }
            }
            if crate::world::rpc::within(deadline, released)
                .await
                .is_none()
            {
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
            if !lock(&self.state).progress_locks.contains_key(&partition) {
                return true;
            }
            if crate::world::rpc::within(deadline, released)
                .await
                .is_none()
            {
                return false;
            }
        }
    }

    /// Ends transaction `id` and releases its locks; what it would commit, if it was open.
    /// The caller commits it before its next await, so nothing runs between the two.
    pub fn end(&self, id: TransactionId) -> Option<Open> {
        let open = {
            let mut state = lock(&self.state);
            let open = state.open.remove(&id)?;
            for write in &open.progress {
                state.progress_locks.remove(&write.partition);
            }
            for event in &open.events {
                state.order_locks.remove(&event.order_id);
            }
            open
        };
        self.released.notify_waiters();
        Some(open)
    }

    /// The client of `id` closed its connection: end it, or, if it is still waiting for its
    /// locks, stop it from taking them.
    pub fn abandon(&self, id: TransactionId) {
        if self.end(id).is_none() {
            let mut state = lock(&self.state);
            if state.waiting.contains(&id) {
                state.abandoned.insert(id);
                drop(state);
                self.released.notify_waiters();
            }
        }
    }
}

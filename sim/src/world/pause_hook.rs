//! A point in a client's code where the fault injector may stop the client's node: the
//! moments that make zombies (a member that learned of an assignment but has not acted on it;
//! a member whose transaction ran its statements but has not committed). Shared by every
//! client of a world.

use crate::world::lock::lock;
use madsim::task::NodeId;
use madsim::time::sleep;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// One such point; see the module comment.
#[derive(Clone, Debug, Default)]
pub struct PauseHook {
    armed: Arc<Mutex<Option<Armed>>>,
}

/// The node whose next passage is awaited, and the signal to give then.
type Armed = (NodeId, Arc<Notify>);

impl PauseHook {
    /// Arms the hook for `node`'s next passage; the returned signal fires when it comes.
    pub fn arm(&self, node: NodeId) -> Arc<Notify> {
        let reached = Arc::new(Notify::new());
        *lock(&self.armed) = Some((node, reached.clone()));
        reached
    }

    /// Disarms the hook (the node did not pass in time).
    pub fn disarm(&self) {
        *lock(&self.armed) = None;
    }

    /// Called by a client at the point: if armed for this node, signals the injector and
    /// gives it a moment (no simulated work happens meanwhile) to stop the node.
    pub async fn reached(&self) {
        let node = madsim::plugin::node();
        let reached = {
            let mut armed = lock(&self.armed);
            match armed.as_ref() {
                Some((armed_node, _)) if *armed_node == node => armed.take().map(|(_, n)| n),
                _ => None,
            }
        };
        if let Some(reached) = reached {
            reached.notify_one();
            sleep(Duration::from_millis(1)).await;
        }
    }
}

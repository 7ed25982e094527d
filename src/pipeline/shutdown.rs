//! Asking a running member (consumer or compensator) to stop: stop polling, drain, commit.

use std::sync::Arc;
use tokio::sync::watch;

/// Asks a running consumer to stop: stop polling, drain, commit.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(Arc<watch::Sender<bool>>);

/// The consumer's side of a [`ShutdownTrigger`].
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger(Arc::new(sender)), Shutdown(receiver))
    }
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// True once shutdown was requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a trigger, or any clone of it, is seen by every clone of the consumer's side,
    /// and nothing is requested before. Method: a pair, cloned on both sides.
    #[test]
    fn a_trigger_reaches_every_clone() {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let other = shutdown.clone();
        assert!(!shutdown.requested());
        assert!(!other.requested());
        trigger.clone().trigger();
        assert!(shutdown.requested());
        assert!(other.requested());
    }
}

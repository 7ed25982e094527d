//! The one lock helper of the simulated world's models and the harness's observers.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a model's state. The simulation is single-threaded and never holds a lock across an
/// await, so a poisoned lock only follows a panic that already failed the run.
pub fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

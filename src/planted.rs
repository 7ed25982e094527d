//! Deliberate bugs, for proving that the simulator and the tests catch what they claim to.
//!
//! Each component that can misbehave checks for its bug by value. Nothing in the command line or
//! the configuration files can set one: only tests and the simulator's model-checking runs do.

/// One deliberate defect of the kind the seed warns about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlantedBug {
    /// The consumer commits a batch's offsets before processing it.
    CommitBeforeProcessing,
    /// The idempotency protocol writes the cache key before the store commits.
    CacheWrittenBeforeStore,
    /// The store has no unique key: a redelivered event is applied again.
    NoUniqueKey,
    /// The consumer commits the highest polled offset on a timer, finished or not.
    AutoCommit,
    /// The offset tracker commits the most recently acked offset plus one.
    CommitAckedPlusOne,
    /// The wide-table merge lets the last-arriving event win a column.
    MergeByArrival,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 6] = [
        PlantedBug::CommitBeforeProcessing,
        PlantedBug::CacheWrittenBeforeStore,
        PlantedBug::NoUniqueKey,
        PlantedBug::AutoCommit,
        PlantedBug::CommitAckedPlusOne,
        PlantedBug::MergeByArrival,
    ];
}

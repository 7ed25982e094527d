//! Offset tracking: commit only up to the lowest unfinished record. (Being written.)

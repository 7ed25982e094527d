//! Synchronisation primitives: `std` normally, loom's under `--cfg loom`. (Being written.)

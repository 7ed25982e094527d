//! Property tests of holdfast's core live in `tests/`.

//! Unit tests of the wide-table merge.

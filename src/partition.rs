//! The Java client's default partitioner, byte for byte. (Being written.)

//! The consumer pipeline, generic over the ports. (Being written.)

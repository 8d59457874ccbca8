//! # Quorum coordination (not built yet)
//!
//! The coordinator sends a write to the N replicas of a key's preference list and answers after
//! W acknowledgements; a read asks the replicas, answers after R replies, merges their versions
//! into siblings and repairs stale replicas (Dynamo §4.5). The replication issue fills this crate;
//! until then `kvnode` is a cluster of one (N = R = W = 1) and coordinates its writes locally.
//!
//! This crate exports nothing yet, so nothing can depend on behaviour it does not have.

//! # Merkle trees for anti-entropy (not built yet)
//!
//! Dynamo §4.7 detects divergent replicas with one Merkle tree per key range: leaves hash the
//! records of a bucket of key hashes, parents hash their children, and two replicas compare
//! roots first and descend only into subtrees that differ, so that synchronising costs in
//! proportion to the difference rather than to the data.
//!
//! This crate is a placeholder in the workspace layout: the anti-entropy issue fills it. It
//! exports nothing yet, so nothing can depend on behaviour it does not have.

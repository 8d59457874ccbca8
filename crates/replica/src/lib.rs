//! # The replica: a storage node's side of every replica call
//!
//! A coordinator ([`kv_coordinator`]) decides which replicas to call and when a quorum is met; a
//! replica decides what it may accept and what it stores. This crate is that second half, over
//! a storage engine ([`kv_storage`]): [`ReplicaCore`] answers replica calls (coordinate, store,
//! read, purge, scan) under the ownership rules, and [`Ownership`] keeps the replica's view of
//! the ranges it owns, fills and drops in step with the cluster's topology.
//!
//! It is one implementation, shared by `kvnode` (behind its internal API) and the model checker
//! (`kv-sim`), so the rules the simulation checks are the rules that run. It knows nothing of
//! HTTP or gossip: calls arrive as [`kv_proto::Call`]s and views as
//! [`kv_coordinator::Topology`]s. The stateless gateway does not link it.
//!
//! The invariants it enforces are stated in [`replica`] and argued in docs/consistency.md.
//!
//! # Layout
//! - [`replica`] — [`ReplicaCore`], [`ReplicaView`], [`ReplicaMetrics`], refusals.
//! - [`ownership`] — [`Ownership`]: the ranges a node serves, fills and drops.
//! - [`trees`] — [`RangeTrees`]: a Merkle tree per ring segment, updated on every write.

pub mod ownership;
pub mod replica;
pub mod trees;

pub use ownership::Ownership;
pub use replica::{ReplicaCore, ReplicaMetrics, ReplicaView};
pub use trees::RangeTrees;

#[cfg(test)]
mod tests;

//! A node's background workers, each a [`kv_worker::Worker`] under the process's supervisor,
//! and their metrics, in one place ([`metrics`]).
//!
//! - [`ownership`] — the replica's ownership view follows every topology.
//! - [`rebalance`] — streaming ranges on join, leave and removal; dropping lost ranges.
//! - [`hints`] — handing kept hints to their nodes once they are back.
//! - [`antientropy`] — Merkle exchanges that repair what replicas lack.
//! - [`gc`] — collecting tombstones every replica holds, after the grace period.

pub mod antientropy;
pub mod gc;
pub mod hints;
pub mod metrics;
pub mod ownership;
pub mod rebalance;

pub use metrics::WorkerMetrics;

//! # Coordination: N replicas, R and W quorums, read repair
//!
//! Every key lives on the N nodes of its preference list ([`kv_ring`]). A [`Coordinator`]
//! (in every kvnode and in the stateless kvgateway) turns a client's request into replica calls
//! (Dynamo §4.5):
//!
//! - **Write:** the first replica of the preference list that answers *coordinates*: under the
//!   key's lock it builds the new version ([`kv_proto::new_version`]: a dot above every counter it
//!   has seen for itself, the client's context) and stores it. The coordinator then sends that
//!   replica's whole sibling set to the other N-1 replicas in parallel and answers after W
//!   acknowledgements in total; the rest complete in the background. Only storage nodes ever
//!   create dots, so a gateway never appears in a clock. Shipping the whole set, not just the new
//!   version, keeps the invariant that dot comparison relies on (see [`kv_vclock`]).
//! - **Read:** ask all N replicas (or only R, then more as some fail), answer after R replies
//!   with their versions merged into siblings, then, in the background, wait for the late
//!   answers and send the merged versions to every replica that answered with less (*read
//!   repair*, counted in `kv_read_repairs_total`).
//! - **Delete:** a tombstone, written like a value. Tombstones are purged only after the grace
//!   period and only when a read heard all N replicas hold exactly the same tombstones; each
//!   replica re-checks under its key lock that nothing newer arrived before it drops the key.
//!
//! A write that misses its quorum (`503 quorum_not_met`, with how many acknowledged) may still be
//! on the replicas that did acknowledge. Retrying is safe: a retry is a new write, and if both
//! were applied the value appears as two siblings until a write with a read's context.
//!
//! Calls to one replica that are in flight at the same time travel together: a
//! [`batch::Batcher`] per peer sends whatever has queued as one request, so the per-call cost
//! of HTTP and fsync is shared by many operations under load, and a lone call is not delayed.
//!
//! The crate knows nothing of HTTP: replicas are reached through the [`ReplicaClient`] trait,
//! which the node implements over its internal API ([`kv_proto`]) and tests implement with slow,
//! failing and lying replicas.
//!
//! # Layout
//! - [`coordinator`] — [`Coordinator`], [`PutOutcome`], [`GetOutcome`].
//! - [`topology`] — [`Topology`], [`Peer`], the [`ReplicaClient`] trait.
//! - [`plan`] — which ranges move on a join, leave or removal, from whom and to whom.
//! - [`fanout`] — one request's calls to a key's replicas, counted until the quorum is met,
//!   the rest completed in the background.
//! - [`batch`] — [`batch::Batcher`]: concurrent calls to one peer coalesced into one request.
//! - [`quorum`] — [`Quorum`]: N, R, W and per-request values.
//! - [`metrics`] — [`CoordinatorMetrics`].
//! - [`error`] — [`Error`], [`ReplicaError`].

pub mod batch;
pub mod coordinator;
pub mod error;
pub mod fanout;
pub mod metrics;
pub mod plan;
pub mod quorum;
pub mod topology;

pub use coordinator::{Clock, Coordinator, GetOutcome, Options, PutOutcome};
pub use error::{Error, ReplicaError};
pub use kv_proto::Write;
pub use metrics::CoordinatorMetrics;
pub use quorum::{Need, Quorum, Tally};
pub use topology::{BoxFuture, CallPeer, Peer, RangeClient, ReplicaClient, Topology};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

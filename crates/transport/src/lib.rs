//! # The peer transport: every node-to-node and gateway-to-node call
//!
//! One place for everything two processes of the cluster say to each other: replica batches,
//! range streams (scans and store batches), gossip exchanges, and later hints and Merkle
//! exchanges. A call is a typed request ([`PeerRequest`]: its path and its reply type) with a
//! postcard body; its failure is a typed [`kv_coordinator::ReplicaError`], which says whether
//! the call may have been applied and whether a retry may help.
//!
//! - **Client** ([`PeerTransport`]): the one HTTP client for peers: pooled keep-alive
//!   connections, a deadline per call, at most `max_in_flight` calls at once (more wait).
//!   This is where TLS will go.
//! - **Signing** ([`Signer`]): the client signs the whole request (method, path and query, body)
//!   and the server checks it in one middleware ([`verify()`]) before any handler runs; a request
//!   whose body changed by one byte is refused `403`. Without a cluster secret (the Security
//!   issue adds one) the key is built in: this catches corruption and processes of another
//!   protocol version, not an attacker.
//! - **Replica client** ([`HttpReplicaClient`]): coordinator calls to one peer are batched
//!   ([`kv_coordinator::batch`]), each peer's batcher a worker under the process's supervisor;
//!   it also implements [`kv_coordinator::RangeClient`] for range streams.
//!
//! # Layout
//! - [`signer`] — [`Signer`] and the header it fills.
//! - [`client`] — [`PeerTransport`], [`PeerRequest`].
//! - [`mod@verify`] — the server-side check, an axum middleware.
//! - [`replica_client`] — [`HttpReplicaClient`].

pub mod client;
pub mod replica_client;
pub mod signer;
pub mod verify;

pub use client::{PeerRequest, PeerTransport, TransportOptions};
pub use replica_client::HttpReplicaClient;
pub use signer::{Signer, SIGNATURE_HEADER};
pub use verify::{verify, VerifyState};

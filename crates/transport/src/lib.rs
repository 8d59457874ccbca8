//! # The peer transport: every node-to-node and gateway-to-node call
//!
//! One place for everything two processes of the cluster say to each other: replica batches,
//! range streams (scans and store batches), gossip exchanges, and later hints and Merkle
//! exchanges. A call is a typed request ([`PeerRequest`]: its path and its reply type) with a
//! postcard body; its failure is a typed [`kv_proto::ReplicaError`], which says whether
//! the call may have been applied and whether a retry may help.
//!
//! - **Client** ([`PeerTransport`]): the one HTTP client for peers: pooled keep-alive
//!   connections, a deadline per call, at most `max_in_flight` calls at once (more wait).
//!   This is where TLS will go.
//! - **Authentication** ([`Signer`], [`Verifier`]): the client signs the whole request
//!   (method, path and query, a digest of the body, its destination, a timestamp and a nonce)
//!   with a key derived from the cluster secret ([`Secrets`]), and the server checks it in one
//!   middleware ([`verify()`]) before any handler runs: a request without a valid signature, with
//!   a body changed by one byte, signed with another secret, too far from the receiver's clock,
//!   replayed ([`replay`]), or meant for another member is refused `401`. Admin requests are
//!   signed the same way (by `kvctl`). With `--insecure` the secret is built in: that still
//!   catches corruption and other protocol versions, not an attacker.
//! - **Replica client** ([`HttpReplicaClient`]): coordinator calls to one peer are batched
//!   ([`kv_coordinator::batch`]), each peer's batcher a worker under the process's supervisor;
//!   it also implements [`kv_coordinator::RangeClient`] for range streams.
//!
//! # Layout
//! - [`secret`] — [`Secrets`]: the cluster secrets, parsed, and keys derived from them.
//! - [`signer`] — [`Signer`], [`Verifier`] and the header they use.
//! - [`replay`] — [`replay::ReplayGuard`]: each signature is accepted once.
//! - [`client`] — [`PeerTransport`], [`PeerRequest`].
//! - [`mod@verify`] — the server-side check, an axum middleware.
//! - [`replica_client`] — [`HttpReplicaClient`].

pub mod client;
pub mod replay;
pub mod replica_client;
pub mod secret;
pub mod signer;
pub mod verify;

pub use client::{Gate, OnNotMember, PeerRequest, PeerTransport, TransportOptions, NOT_A_MEMBER, NOT_SERVING};
pub use replica_client::HttpReplicaClient;
pub use secret::Secrets;
pub use signer::{AuthError, Signer, Verifier, SIGNATURE_HEADER};
pub use verify::{verify, AuthMetrics, BearerCheck, BoundCheck, VerifyState};

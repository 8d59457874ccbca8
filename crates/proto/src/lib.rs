//! # The internal peer protocol
//!
//! Everything two nodes (or a gateway and a node) say to each other about keys, in one crate
//! below the coordinator, the replica and the transport, so that each of them speaks the same
//! types and none owns them:
//!
//! - [`messages`] — the calls ([`Call`]) and replies ([`Reply`]) of a batch, scans, range
//!   hand-offs and Merkle exchanges, their paths, limits and postcard encoding.
//! - [`refusal`] — why a call was not done, typed ([`Refusal`]), and what its caller saw
//!   ([`ReplicaError`]). No HTTP status crosses the protocol.
//! - [`versions`] — how a client's write becomes a version, and how replica answers merge.

pub mod messages;
pub mod refusal;
pub mod versions;

pub use messages::*;
pub use refusal::{Refusal, ReplicaError};
pub use versions::*;

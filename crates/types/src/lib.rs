//! # Shared types: a version of a value, and a key's record
//!
//! A key's state everywhere in the store (on disk, in replica calls, in a coordinator's merge,
//! in a range stream) is a [`Record`]: the [`kv_vclock::Siblings`] of its live [`Version`]s. This
//! crate holds only those types, so that the parts that never store anything (the coordinator,
//! the stateless gateway, the wire protocol) use them without linking a storage engine. How a
//! record is laid out on disk belongs to `kv-storage`; how it travels, to `kv-coordinator::wire`.
//!
//! # Layout
//! - [`Version`] and [`Record`], both in this file.

use kv_vclock::{Dot, Siblings, VClock, Versioned};
use serde::{Deserialize, Serialize};

/// A version of a key's value (or a tombstone) with its causal identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The write that created this version.
    pub dot: Dot,
    /// What its writer had read; see [`kv_vclock`] for why this is kept apart from the dot.
    pub context: VClock,
    /// The value bytes; empty for a tombstone. Shared, not copied, as the version moves from
    /// the client's request to the replicas' stores.
    pub value: bytes::Bytes,
    /// The Content-Type the client sent, echoed on reads.
    pub content_type: String,
    /// Whether this version records a delete.
    pub tombstone: bool,
    /// Wall-clock ms when the coordinator created the version (for tombstone grace periods).
    pub written_at: u64,
    /// The client write this version was created for, unique per client request (chosen by
    /// the front that received it); 0 when unknown (records written before write ids). A front
    /// that retries a write on another replica uses the same id, so the replicas can tell two
    /// versions of one write apart from two writes.
    pub write_id: u128,
}

impl Versioned for Version {
    fn dot(&self) -> &Dot {
        &self.dot
    }
    fn context(&self) -> &VClock {
        &self.context
    }
}

/// A key's live versions.
pub type Record = Siblings<Version>;

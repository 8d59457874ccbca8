//! Why a replica call failed, typed: what the replica refused (a [`Refusal`], sent in a
//! [`crate::Reply::Refused`]) and what the caller saw ([`ReplicaError`]).
//!
//! No HTTP status crosses the peer protocol: a refusal is one of these variants, and the caller
//! matches on it. HTTP appears only at the edges: the transport maps the status of a whole
//! refused request (its signature, its size) to a [`Refusal`] in one place, and the API maps
//! its errors to HTTP in one place.

use serde::{Deserialize, Serialize};

/// What a replica answers instead of doing a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The key's range is not this replica's in its view (it lags behind the caller's or leads
    /// it), or the replica may not coordinate now: ask another. Never counts toward a quorum.
    #[error("not an owner of the key: {0}")]
    NotOwner(String),
    /// The call's deadline passed before the replica could apply it: the caller has given up
    /// on it. Certainly not applied.
    #[error("too late: {0}")]
    TooLate(String),
    /// A coordinate call whose context names an event of this replica's actor that never
    /// happened (a counter above all it has issued): a forged or corrupted context.
    #[error("{0}")]
    ImpossibleContext(String),
    /// A coordinate call refused because a version of the key this replica created is still on
    /// its way to its own copy (rule 15 of docs/consistency.md): certainly nothing was created;
    /// ask again shortly, or ask another replica.
    #[error("a version of this key is outstanding: {0}")]
    Outstanding(String),
    /// A coordinate call from a front in the replica's own process whose store of the new
    /// version failed: the version may be held there, so the front must not create another
    /// elsewhere (rule 6); the client gets an error.
    #[error("the new version's store failed: {0}")]
    StoreFailed(String),
    /// A write refused because the replica would not keep the version it vouches for.
    #[error("not kept: {0}")]
    NotKept(String),
    /// A coordinate call refused because the key already holds `--max-siblings` siblings (or
    /// bytes of them) and the write would add one: certainly not applied; the client must
    /// resolve the siblings (read, then write with the context).
    #[error("{0}")]
    TooManySiblings(String),
    /// A hint refused because the receiver keeps no more hints for its target: the write is
    /// not held for that owner here.
    #[error("hints full: {0}")]
    HintsFull(String),
    /// The call itself is wrong (a bad key, a malformed or oversized request, another protocol
    /// version): retrying it anywhere will not help.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The peer refused the caller's signature (another cluster secret, or a clock too far
    /// from its own; the body then says the peer's clock).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The replica could not do the call now (storage I/O, overload, starting or stopping).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The replica failed in a way that will not pass by itself (a storage error, a bug).
    #[error("failed: {0}")]
    Failed(String),
}

impl Refusal {
    /// Whether the same call may succeed later or on another replica: everything but a call
    /// that is wrong in itself.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Refusal::Malformed(_)
                | Refusal::Unauthenticated(_)
                | Refusal::ImpossibleContext(_)
                | Refusal::TooManySiblings(_)
        )
    }

    /// A short name, for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotOwner(_) => "misdirected",
            Refusal::TooLate(_) => "too_late",
            Refusal::ImpossibleContext(_) => "impossible_context",
            Refusal::Outstanding(_) => "outstanding",
            Refusal::StoreFailed(_) => "store_failed",
            Refusal::NotKept(_) => "not_kept",
            Refusal::TooManySiblings(_) => "too_many_siblings",
            Refusal::HintsFull(_) => "hints_full",
            Refusal::Malformed(_) => "malformed",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Failed(_) => "failed",
        }
    }

    /// What the replica said.
    pub fn message(&self) -> &str {
        match self {
            Refusal::NotOwner(m)
            | Refusal::TooLate(m)
            | Refusal::ImpossibleContext(m)
            | Refusal::Outstanding(m)
            | Refusal::StoreFailed(m)
            | Refusal::NotKept(m)
            | Refusal::TooManySiblings(m)
            | Refusal::HintsFull(m)
            | Refusal::Malformed(m)
            | Refusal::Unauthenticated(m)
            | Refusal::Unavailable(m)
            | Refusal::Failed(m) => m,
        }
    }
}

/// Why one call to one replica failed, as its caller saw it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// The connection broke or the call timed out: the replica may be down, and the call may or
    /// may not have been applied.
    #[error("replica unreachable: {0}")]
    Unreachable(String),
    /// The call never reached the replica (no connection could be made, or it was shed before
    /// anything read it): it was not applied.
    #[error("replica not reached: {0}")]
    NotSent(String),
    /// The replica answered, refusing the call.
    #[error("replica refused: {0}")]
    Refused(Refusal),
    /// The answer did not decode.
    #[error("bad answer from replica: {0}")]
    Decode(String),
}

impl ReplicaError {
    /// Whether the same call may succeed later or on another replica: everything but a refusal
    /// of the call itself and an undecodable answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicaError::Refused(refusal) => refusal.is_retryable(),
            ReplicaError::Decode(_) => false,
            ReplicaError::Unreachable(_) | ReplicaError::NotSent(_) => true,
        }
    }
}

impl From<Refusal> for ReplicaError {
    fn from(refusal: Refusal) -> ReplicaError {
        ReplicaError::Refused(refusal)
    }
}

impl From<Refusal> for crate::Reply {
    fn from(refusal: Refusal) -> crate::Reply {
        crate::Reply::Refused(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_typed() {
        let refusals = [
            Refusal::NotOwner("a".into()),
            Refusal::Outstanding("b".into()),
            Refusal::TooManySiblings("c".into()),
            Refusal::Unauthenticated("{\"now_ms\":5}".into()),
        ];
        for refusal in refusals {
            let reply = crate::Reply::Refused(refusal.clone());
            let back: crate::Reply = crate::decode(&crate::encode(&reply)).unwrap();
            assert!(matches!(back, crate::Reply::Refused(r) if r == refusal));
        }
        assert!(!ReplicaError::Refused(Refusal::Malformed(String::new())).is_retryable());
        assert!(ReplicaError::Refused(Refusal::Outstanding(String::new())).is_retryable());
        assert_eq!(
            ReplicaError::from(Refusal::NotOwner(String::new())),
            ReplicaError::Refused(Refusal::NotOwner(String::new()))
        );
    }
}

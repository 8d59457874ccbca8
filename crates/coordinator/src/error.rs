//! Coordinator errors.

pub use kv_proto::ReplicaError;

/// Why a coordinated operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Fewer replicas answered than the operation needed. For a write, the replicas that did
    /// acknowledge keep the new version (a retry is safe; if both attempts were applied, the
    /// value appears as two siblings until the next write with a read's context).
    #[error("{op}: {acks} of {required} required replicas answered ({replicas} asked)")]
    QuorumNotMet {
        /// `put`, `delete` or `get`.
        op: &'static str,
        /// R or W.
        required: usize,
        /// How many answered successfully.
        acks: usize,
        /// Replicas in the preference list.
        replicas: usize,
    },
    /// The key has fewer replicas than the operation must hear from: the ring has fewer
    /// members than N. A quorum is never cut down to the replicas that exist.
    #[error(
        "{op}: {required} replicas required but the key has only {replicas} (the ring has fewer members than N = {n})"
    )]
    InsufficientReplicas {
        /// `put`, `delete` or `get`.
        op: &'static str,
        /// R or W.
        required: usize,
        /// Replicas in the key's preference list.
        replicas: usize,
        /// The configured N.
        n: usize,
    },
    /// The client's context names an event that never happened (a counter a replica never
    /// issued): forged or corrupted.
    #[error("{0}")]
    BadContext(String),
    /// The key holds as many siblings as a replica allows (`--max-siblings`) and the write would
    /// add one: certainly not applied. Resolve the siblings first.
    #[error("{0}")]
    TooManySiblings(String),
    /// An `r` or `w` parameter is not 1..=N, `one`, `quorum` or `all`.
    #[error("{0}")]
    BadQuorum(String),
    /// The ring has no members yet.
    #[error("the cluster has no members yet")]
    NoMembers,
    /// A replica refused the request as malformed (a bug or a version mismatch).
    #[error("replica {node} refused the request: {message}")]
    Refused {
        /// The replica.
        node: String,
        /// What it said.
        message: String,
    },
}

impl Error {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::QuorumNotMet { .. } | Error::NoMembers | Error::InsufficientReplicas { .. })
    }
}

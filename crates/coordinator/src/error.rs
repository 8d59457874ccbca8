//! Coordinator errors.

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

/// Why one call to one replica failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// The connection broke or the call timed out: the replica may be down, and the call may or
    /// may not have been applied.
    #[error("replica unreachable: {0}")]
    Unreachable(String),
    /// The call never reached the replica (no connection could be made): it was not applied.
    #[error("replica not reached: {0}")]
    NotSent(String),
    /// The replica answered with an error status (storage failure, overload).
    #[error("replica failed ({status}): {message}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The replica rejected the request itself (4xx): retrying elsewhere will not help.
    #[error("replica refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The answer did not decode.
    #[error("bad answer from replica: {0}")]
    Decode(String),
    /// The replica is not (or no longer, or not yet) a replica of the key's range in its own
    /// view, or may not coordinate: ask another. Its answer never counts toward a quorum.
    #[error("replica is not an owner of the key ({0})")]
    NotOwner(String),
}

impl ReplicaError {
    /// Whether the same call may succeed later or on another replica: everything but a refusal
    /// of the request itself (a bug or a version mismatch) and an undecodable answer.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ReplicaError::Refused { .. } | ReplicaError::Decode(_))
    }

    /// The error for a replica's answer with HTTP-style `status` (a whole request's, or one
    /// call's inside a batch).
    pub fn from_status(status: u16, message: String) -> ReplicaError {
        match status {
            crate::wire::MISDIRECTED => ReplicaError::NotOwner(message),
            400..=499 => ReplicaError::Refused { status, message },
            _ => ReplicaError::Failed { status, message },
        }
    }
}

//! Coordinator errors.

/// Why a coordinated operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Fewer replicas answered than the operation needed. For a write, the replicas that did
    /// acknowledge keep the new version (a retry with the same context and value is safe: the
    /// coordinating replica reuses an identical version instead of making a sibling).
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
        matches!(self, Error::QuorumNotMet { .. } | Error::NoMembers)
    }
}

/// Why one call to one replica failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// Could not connect, the connection broke, or the call timed out: the replica may be down.
    #[error("replica unreachable: {0}")]
    Unreachable(String),
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
}

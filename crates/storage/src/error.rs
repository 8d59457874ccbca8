//! Storage errors, grouped by what the caller can do about them.

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The engine could not be opened (bad path, locked by another process, incompatible
    /// files). Start-up stops with this message.
    #[error("cannot open {engine} storage at {path}: {reason}")]
    Open {
        /// Engine name.
        engine: &'static str,
        /// Data directory.
        path: String,
        /// What the engine said.
        reason: String,
    },
    /// The engine reported an I/O error on a read or write. May succeed if retried.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A stored record does not decode: disk corruption or a bug. Not retryable; the record
    /// must be repaired from another replica.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// An fsync failed earlier. After a failed fsync the kernel may have dropped dirty pages,
    /// so nothing written since can be acknowledged as durable: the store refuses all writes
    /// until the process restarts and recovers from its log.
    #[error("storage is read-only after a failed fsync: {0}; restart the node")]
    SyncFailed(String),
}

impl Error {
    /// Whether the same call may succeed later without operator action.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io(_))
    }
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, Error>;

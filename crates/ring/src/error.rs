//! Errors of ring construction.

/// Why a ring could not be built. None of these is retryable: the member list is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Two members share an id.
    #[error("duplicate node id {0:?}")]
    DuplicateNode(String),
    /// A member has weight zero, so it would own nothing.
    #[error("node {0:?} has weight 0; weights must be at least 1")]
    ZeroWeight(String),
    /// A member has an empty id.
    #[error("node id must not be empty")]
    EmptyId,
    /// `vnodes_per_weight` was zero.
    #[error("vnodes per weight must be at least 1")]
    ZeroVnodes,
}

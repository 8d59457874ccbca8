//! Errors of decoding clocks and tokens.

/// Why a clock or context token could not be decoded. Never retryable: the input is bad.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The token is not base64url.
    #[error("context token is not base64url")]
    Base64,
    /// The token is longer than [`crate::MAX_TOKEN_BYTES`].
    #[error("context token is longer than {0} bytes")]
    TooLong(usize),
    /// Empty input, or an unknown format version byte.
    #[error("unknown clock encoding version {0}")]
    UnknownVersion(u8),
    /// The bytes do not decode to a clock.
    #[error("malformed clock: {0}")]
    Malformed(String),
}

//! The one place where internal requests are signed and checked.
//!
//! Today a request carries the protocol version in [`INTERNAL_HEADER`], so that nodes of
//! incompatible versions refuse each other clearly. The security issue turns this into an HMAC
//! of method, path and body under the cluster secret; callers already pass all three, so only
//! this file changes.

/// Header carrying the internal request's signature.
pub const INTERNAL_HEADER: &str = "x-kv-internal";

/// Current protocol version string.
const PROTOCOL: &str = "v1";

/// Signs and checks internal requests.
#[derive(Debug, Clone, Default)]
pub struct InternalAuth;

impl InternalAuth {
    /// The header value for a request.
    pub fn sign(&self, _method: &str, _path: &str, _body: &[u8]) -> String {
        PROTOCOL.to_owned()
    }

    /// Checks a request's header value; the error is safe to return to the caller.
    pub fn verify(&self, header: Option<&str>, _method: &str, _path: &str, _body: &[u8]) -> Result<(), String> {
        match header {
            Some(PROTOCOL) => Ok(()),
            Some(other) => Err(format!("internal protocol {other:?} not supported; this node speaks {PROTOCOL}")),
            None => Err(format!("missing {INTERNAL_HEADER} header")),
        }
    }
}

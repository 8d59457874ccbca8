//! [`Signer`]: the one place internal requests are signed and checked.
//!
//! The signature is an HMAC-SHA256 of the method, the path with its query, and the whole body,
//! sent as `v2 <hex>` in [`SIGNATURE_HEADER`]. The `v2` names the protocol, so processes of
//! incompatible versions refuse each other clearly.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the internal request's signature.
pub const SIGNATURE_HEADER: &str = "x-kv-internal";

/// Protocol version written before the signature: `v2` since requests are signed whole and
/// members gossip their peer listener's address (a `v1` process is refused with a clear
/// message, not misread).
const PROTOCOL: &str = "v2";

/// The key used until the cluster has a secret of its own (the Security issue): it detects
/// corrupted and cross-version requests, it does not authenticate.
const BUILT_IN_KEY: &[u8] = b"kv-internal-protocol-v2";

/// Signs and checks internal requests. Cheap to clone.
#[derive(Clone)]
pub struct Signer {
    key: Hmac<Sha256>,
}

impl Default for Signer {
    fn default() -> Self {
        Signer::new(BUILT_IN_KEY)
    }
}

impl Signer {
    /// A signer keyed by `key`.
    pub fn new(key: &[u8]) -> Signer {
        // HMAC takes keys of any length.
        Signer { key: Hmac::new_from_slice(key).expect("invariant: HMAC accepts any key length") }
    }

    fn mac(&self, method: &str, path: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        mac.update(method.as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// The header value for a request.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> String {
        let tag = self.mac(method, path, body).finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(PROTOCOL.len() + 1 + 64);
        out.push_str(PROTOCOL);
        out.push(' ');
        for byte in tag {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }

    /// Checks a request's header value (in constant time); the error is safe to return to the
    /// caller.
    pub fn verify(&self, header: Option<&str>, method: &str, path: &str, body: &[u8]) -> Result<(), String> {
        let header = header.ok_or_else(|| format!("missing {SIGNATURE_HEADER} header"))?;
        let (protocol, hex) = header.split_once(' ').unwrap_or((header, ""));
        if protocol != PROTOCOL {
            return Err(format!(
                "internal protocol {protocol:?} not supported; this node speaks {PROTOCOL} (all processes of a cluster \
                 must run the same release)"
            ));
        }
        let tag = from_hex(hex).ok_or("malformed signature")?;
        self.mac(method, path, body)
            .verify_slice(&tag)
            .map_err(|_| "bad signature: the request was altered or signed with another key".to_owned())
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_method_path_and_every_body_byte() {
        let signer = Signer::default();
        let body = b"some body bytes".to_vec();
        let header = signer.sign("POST", "/internal/v1/batch", &body);
        assert!(signer.verify(Some(&header), "POST", "/internal/v1/batch", &body).is_ok());
        for i in 0..body.len() {
            let mut tampered = body.clone();
            tampered[i] ^= 1;
            assert!(signer.verify(Some(&header), "POST", "/internal/v1/batch", &tampered).is_err(), "byte {i}");
        }
        assert!(signer.verify(Some(&header), "PUT", "/internal/v1/batch", &body).is_err());
        assert!(signer.verify(Some(&header), "POST", "/internal/v1/scan", &body).is_err());
        assert!(signer.verify(None, "POST", "/internal/v1/batch", &body).unwrap_err().contains("missing"));
        assert!(signer.verify(Some("v0 00"), "POST", "/", &body).unwrap_err().contains("protocol"));
        assert!(Signer::new(b"other").verify(Some(&header), "POST", "/internal/v1/batch", &body).is_err());
    }
}

//! [`ContextSealer`]: context tokens a client cannot forge.
//!
//! A context says which versions its holder has read; a write with it supersedes exactly those.
//! A client that could write any context could claim to have read versions it never saw, and its
//! write would silently delete them (concurrent writes it should have met as siblings). So the
//! token a client gets carries a MAC under a key derived from the cluster secret, and any token
//! whose MAC does not check is refused `400 bad_context` before anything reads it.
//!
//! A token is also bound to the key it was read from: the MAC covers the key, so a token of one
//! key is refused on another. (Dot counters are store-wide, so a fresh clock of any key names
//! counters above those of older versions of every other key: without the binding, a client
//! could read its own key and use that context to supersede another key's versions it never
//! read.)
//!
//! Format (opaque to clients, versioned): base64url without padding of
//!
//! ```text
//! 0x01 | key id (4 bytes) | the clock's bytes (kv_vclock) | HMAC-SHA256 truncated to 16 bytes
//! ```
//!
//! The MAC covers the version byte, the key id, the clock and the data key (which the token
//! does not carry: the request names it). Size cost: 21 bytes before
//! base64, so a token grows by 28 characters (a one-entry clock: from about 30 to about 58
//! characters; ten entries, the pruning bound: from about 290 to about 320). Truncating the MAC
//! to 128 bits keeps forgery as hard as guessing a 128-bit key. Tokens made with any secret the
//! process holds are accepted (rotation); new tokens use the first.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use kv_transport::Secrets;
use kv_vclock::VClock;
use parking_lot::RwLock;
use sha2::Sha256;

/// Token format version.
const VERSION: u8 = 1;

/// Bytes of MAC kept.
const MAC_BYTES: usize = 16;

/// Purpose the context key is derived for (distinct from the request-signing key).
const PURPOSE: &str = "context-tokens-v1";

/// Purpose the ticket key is derived for (`POST /admin/restore/begin`): a ticket is never a
/// context, nor a context a ticket.
const TICKET_PURPOSE: &str = "admin-tickets-v1";

/// Longest ticket accepted, in characters.
const MAX_TICKET_CHARS: usize = 256;

/// Longest token accepted, in characters.
pub const MAX_TOKEN_CHARS: usize = kv_vclock::MAX_TOKEN_BYTES + 64;

struct Keys {
    sign: ([u8; 4], Hmac<Sha256>),
    all: Vec<([u8; 4], Hmac<Sha256>)>,
    /// The same, derived for tickets.
    tickets: Vec<([u8; 4], Hmac<Sha256>)>,
}

/// Seals clocks into tokens and opens tokens back into clocks. Reloadable (rotation).
pub struct ContextSealer {
    keys: RwLock<Arc<Keys>>,
}

impl ContextSealer {
    /// A sealer with `secrets` (the first seals).
    pub fn new(secrets: &Secrets) -> ContextSealer {
        ContextSealer { keys: RwLock::new(Arc::new(keys(secrets))) }
    }

    /// Replaces the secrets.
    pub fn reload(&self, secrets: &Secrets) {
        *self.keys.write() = Arc::new(keys(secrets));
    }

    /// The token for `clock`, read from `key` (empty for an empty clock).
    pub fn seal(&self, key: &[u8], clock: &VClock) -> String {
        if clock.is_empty() {
            return String::new();
        }
        let keys = self.keys.read().clone();
        sealed(&keys.sign, &clock.encode(), key)
    }

    /// The clock of a token this cluster made for `key`; surrounding whitespace is ignored, an
    /// empty token is an empty clock.
    pub fn open(&self, key: &[u8], token: &str) -> Result<VClock, String> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(VClock::new());
        }
        if token.len() > MAX_TOKEN_CHARS {
            return Err(format!("longer than {MAX_TOKEN_CHARS} characters"));
        }
        let keys = self.keys.read().clone();
        let payload = unseal(&keys.all, token.trim_end_matches('='), key).map_err(|e| match e {
            Unsealed::NotBase64 => "context token is not base64url".to_owned(),
            Unsealed::TooShort => "too short to be a context token".to_owned(),
            Unsealed::Version(v) => format!("token version {v} not supported (this cluster makes version {VERSION})"),
            Unsealed::OtherSecret => "not a context of this cluster (made with another cluster secret)".to_owned(),
            Unsealed::BadMac => "altered, forged, or read from another key: its MAC does not match (send the \
                                 context a read of this key returned, as it was)"
                .to_owned(),
        })?;
        VClock::decode(&payload).map_err(|e| e.to_string())
    }

    /// A ticket that any process of this cluster opens: `payload`, for the purpose `what`, under
    /// a MAC (the same format as a context token, under a key derived for tickets).
    pub fn seal_ticket(&self, what: &str, payload: &[u8]) -> String {
        let keys = self.keys.read().clone();
        sealed(&keys.tickets[0], payload, what.as_bytes())
    }

    /// The payload of a ticket this cluster sealed for `what`.
    pub fn open_ticket(&self, what: &str, ticket: &str) -> Result<Vec<u8>, String> {
        let ticket = ticket.trim();
        if ticket.len() > MAX_TICKET_CHARS {
            return Err(format!("longer than {MAX_TICKET_CHARS} characters"));
        }
        let keys = self.keys.read().clone();
        unseal(&keys.tickets, ticket, what.as_bytes()).map_err(|e| match e {
            Unsealed::NotBase64 => "not base64url".to_owned(),
            Unsealed::TooShort | Unsealed::Version(_) => "not a ticket of this release".to_owned(),
            Unsealed::OtherSecret => "not a ticket of this cluster (made with another cluster secret)".to_owned(),
            Unsealed::BadMac => format!("altered, forged, or not a {what} ticket: its MAC does not match"),
        })
    }
}

fn keys(secrets: &Secrets) -> Keys {
    let all = derived(secrets, PURPOSE);
    Keys { sign: all[0].clone(), all, tickets: derived(secrets, TICKET_PURPOSE) }
}

fn derived(secrets: &Secrets, purpose: &str) -> Vec<([u8; 4], Hmac<Sha256>)> {
    secrets
        .derive(purpose)
        .into_iter()
        .map(|k| {
            let mut id = [0u8; 4];
            for (i, byte) in id.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&k.id[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            (id, Hmac::new_from_slice(&k.key).expect("invariant: HMAC accepts any key length"))
        })
        .collect()
}

/// `VERSION | key id | payload | MAC` in base64url, the MAC over all of it and `binding` (the
/// data key of a context, the purpose of a ticket).
fn sealed((id, mac_key): &([u8; 4], Hmac<Sha256>), payload: &[u8], binding: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(5 + payload.len() + MAC_BYTES);
    bytes.push(VERSION);
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(payload);
    let tag = mac(mac_key, &bytes, binding);
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Why [`unseal`] refused a text.
enum Unsealed {
    NotBase64,
    TooShort,
    Version(u8),
    OtherSecret,
    BadMac,
}

/// The payload of what [`sealed`] made with one of `keys` for `binding`.
fn unseal(keys: &[([u8; 4], Hmac<Sha256>)], text: &str, binding: &[u8]) -> Result<Vec<u8>, Unsealed> {
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| Unsealed::NotBase64)?;
    if bytes.len() < 1 + 4 + MAC_BYTES {
        return Err(Unsealed::TooShort);
    }
    if bytes[0] != VERSION {
        return Err(Unsealed::Version(bytes[0]));
    }
    let (body, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
    let id: [u8; 4] = body[1..5].try_into().map_err(|_| Unsealed::TooShort)?;
    let Some((_, mac_key)) = keys.iter().find(|(k, _)| *k == id) else { return Err(Unsealed::OtherSecret) };
    let expected = mac(mac_key, body, binding);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag)) {
        return Err(Unsealed::BadMac);
    }
    Ok(body[5..].to_vec())
}

fn mac(mac_key: &Hmac<Sha256>, bytes: &[u8], key: &[u8]) -> [u8; MAC_BYTES] {
    let mut mac = mac_key.clone();
    mac.update(bytes);
    // The data key last, after its length, so that no split of one input reads as another.
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&full[..MAC_BYTES]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealer(c: char) -> ContextSealer {
        ContextSealer::new(&Secrets::parse(&c.to_string().repeat(32)).unwrap())
    }

    fn clock() -> VClock {
        let mut clock = VClock::new();
        clock.set("n1~00000000000000aa", 42, 7);
        clock.set("n2~00000000000000bb", 3, 9);
        clock
    }

    #[test]
    fn a_sealed_clock_opens_and_any_changed_byte_is_refused() {
        let (sealer, other) = (sealer('a'), sealer('b'));
        let token = sealer.seal(b"k", &clock());
        assert_eq!(sealer.open(b"k", &token).unwrap(), clock());
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            assert!(sealer.open(b"k", &URL_SAFE_NO_PAD.encode(&changed)).is_err(), "byte {i} changed, token accepted");
        }
        assert!(other.open(b"k", &token).unwrap_err().contains("another cluster"));
        assert!(sealer.open(b"k2", &token).unwrap_err().contains("another key"), "a token of one key on another");
        assert_eq!(sealer.seal(b"k", &VClock::new()), "");
        assert!(sealer.open(b"k", "").unwrap().is_empty());
        // The unsealed token of the releases before: refused, with a reason.
        assert!(sealer.open(b"k", &clock().to_token()).is_err());
    }

    #[test]
    fn a_ticket_opens_for_its_purpose_only_and_is_never_a_context() {
        let (sealer, other) = (sealer('a'), sealer('b'));
        let ticket = sealer.seal_ticket("restore", b"payload");
        assert_eq!(sealer.open_ticket("restore", &ticket).unwrap(), b"payload");
        let bytes = URL_SAFE_NO_PAD.decode(&ticket).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            assert!(sealer.open_ticket("restore", &URL_SAFE_NO_PAD.encode(&changed)).is_err(), "byte {i} changed");
        }
        assert!(sealer.open_ticket("other", &ticket).is_err(), "a ticket of one purpose for another");
        assert!(other.open_ticket("restore", &ticket).unwrap_err().contains("another cluster secret"));
        // A context sealed over the same bytes is not a ticket, nor a ticket a context.
        let context = sealer.seal(b"restore", &clock());
        assert!(sealer.open_ticket("restore", &context).is_err());
        assert!(sealer.open(b"restore", &ticket).is_err());
    }

    #[test]
    fn rotation_opens_tokens_of_every_listed_secret() {
        let old = sealer('a');
        let token = old.seal(b"k", &clock());
        let both = Secrets::parse(&format!("{}\n{}", "b".repeat(32), "a".repeat(32))).unwrap();
        let new = ContextSealer::new(&both);
        assert_eq!(new.open(b"k", &token).unwrap(), clock());
        assert_eq!(
            old.open(b"k", &new.seal(b"k", &clock())).unwrap_err(),
            "not a context of this cluster (made with another cluster secret)"
        );
    }

    proptest! {
        /// No input makes `open` panic, and what it accepts is only what `seal` made.
        #[test]
        fn open_never_panics(text in ".{0,400}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let sealer = sealer('a');
            let _ = sealer.open(b"k", &text);
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            prop_assert!(sealer.open(b"k", &token).is_err() || bytes.is_empty());
        }
    }
}

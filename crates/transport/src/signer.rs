//! [`Signer`] and [`Verifier`]: the one place peer and admin requests are signed and checked.
//!
//! A signature proves that the sender holds the cluster secret, binds the whole request, and
//! is accepted once. It is sent in [`SIGNATURE_HEADER`] as
//!
//! ```text
//! v3 <key id> <timestamp ms> <sender>.<seq> <to> <from> <hmac>
//! ```
//!
//! where the HMAC-SHA256, under a key derived from the cluster secret ([`crate::Secrets`]),
//! covers the protocol, key id, timestamp, sender and sequence number, the destination `to`
//! (the peer address dialed, or a node id), `from` (the sending member as `<node id>~<storage
//! incarnation in hex>`, or `-` for a gateway or kvctl: receivers refuse members that left or
//! were removed), the method, the path with its query and the SHA-256 of the whole body. The receiver ([`Verifier::verify`]) refuses, in this order: a
//! missing or malformed header or another protocol version; a key id it does not hold (the
//! secrets differ); a MAC that does not match (the request was altered, or signed with another
//! secret); a timestamp further than the allowed clock skew from its own clock; a
//! (sender, sequence number) pair it accepted before ([`crate::replay::ReplayGuard`]). The caller
//! then checks `to` where it matters (a request replayed to another member names the wrong one).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use sha2::{Digest as _, Sha256};

use crate::replay::{Replay, ReplayGuard};
use crate::secret::Secrets;

/// Header carrying a request's signature.
pub const SIGNATURE_HEADER: &str = "x-kv-internal";

/// Protocol version written first: `v3` since signatures authenticate (cluster secret,
/// timestamp, nonce, destination). Processes of other versions are refused with a clear message.
const PROTOCOL: &str = "v3";

/// The purpose the signing key is derived for.
const PURPOSE: &str = "requests-v3";

/// Longest `to` field.
const MAX_TO: usize = 256;

struct Keys {
    /// Signs: the first secret's key.
    sign: (String, Hmac<Sha256>),
    /// Every key accepted, by id.
    all: Vec<(String, Hmac<Sha256>)>,
}

impl Keys {
    fn new(secrets: &Secrets) -> Keys {
        let all: Vec<(String, Hmac<Sha256>)> = secrets
            .derive(PURPOSE)
            .into_iter()
            .map(|k| (k.id, Hmac::new_from_slice(&k.key).expect("invariant: HMAC accepts any key length")))
            .collect();
        Keys { sign: all[0].clone(), all }
    }
}

/// Signs requests. Cheap to clone; clones share the keys (reloaded together), the sender id and
/// the sequence numbers.
#[derive(Clone)]
pub struct Signer {
    keys: Arc<RwLock<Arc<Keys>>>,
    /// Random per process start: who sends, for the receivers' replay windows.
    sender: u64,
    /// The last sequence number per destination: each receiver's window follows one
    /// destination's numbers, so requests to other destinations never push it past one that is
    /// still in flight (a busy sender signs thousands of requests a second).
    seqs: Arc<parking_lot::Mutex<std::collections::HashMap<String, u64>>>,
    /// The member this process is (`<node id>~<incarnation hex>`), once its store is open;
    /// `-` until then and in gateways and kvctl.
    member: Arc<std::sync::OnceLock<String>>,
}

impl Signer {
    /// A signer with `secrets` (the first signs) and a new random sender id.
    pub fn new(secrets: &Secrets) -> Signer {
        // Without OS randomness the clock still makes two senders' ids differ.
        let sender = getrandom::u64().unwrap_or_else(|_| now_ms().rotate_left(17) ^ u64::from(std::process::id()));
        Signer {
            keys: Arc::new(RwLock::new(Arc::new(Keys::new(secrets)))),
            sender,
            seqs: Arc::default(),
            member: Arc::default(),
        }
    }

    /// Names the member this process is, in every request signed from now on (by every clone):
    /// `id` and its storage `incarnation`. Set once; later calls change nothing.
    pub fn set_member(&self, id: &str, incarnation: u64) {
        let _ = self.member.set(member_name(id, incarnation));
    }

    /// Replaces the secrets (a reload after rotation): every clone and every [`Verifier`] made
    /// from it use the new ones from the next request.
    pub fn reload(&self, secrets: &Secrets) {
        *self.keys.write() = Arc::new(Keys::new(secrets));
    }

    /// The header value for a request to `to` (the address dialed, or the node id: no
    /// whitespace, at most 256 bytes), now.
    pub fn sign(&self, method: &str, path: &str, to: &str, body: &[u8]) -> String {
        self.sign_at(method, path, to, body, now_ms())
    }

    /// [`Signer::sign`] at a given time.
    pub fn sign_at(&self, method: &str, path: &str, to: &str, body: &[u8], now_ms: u64) -> String {
        let keys = self.keys.read().clone();
        let seq = {
            let mut seqs = self.seqs.lock();
            match seqs.get_mut(to) {
                Some(seq) => {
                    *seq += 1;
                    *seq
                }
                None => {
                    seqs.insert(to.to_owned(), 1);
                    1
                }
            }
        };
        let nonce = format!("{:016x}.{seq}", self.sender);
        let from = self.member.get().map_or("-", String::as_str);
        let (id, key) = &keys.sign;
        let tag = mac(key, id, now_ms, &nonce, to, from, method, path, body);
        format!("{PROTOCOL} {id} {now_ms} {nonce} {to} {from} {}", hex(&tag))
    }
}

/// How a member names itself in a signature: `<node id>~<incarnation, 16 hex digits>`.
pub fn member_name(id: &str, incarnation: u64) -> String {
    format!("{id}~{incarnation:016x}")
}

/// The node id and incarnation of a [`member_name`], if it is one.
pub fn parse_member(name: &str) -> Option<(&str, u64)> {
    let (id, incarnation) = name.rsplit_once('~')?;
    if id.is_empty() || incarnation.len() != 16 {
        return None;
    }
    Some((id, u64::from_str_radix(incarnation, 16).ok()?))
}

/// What a checked signature said: its MAC and time are right; [`Verifier::accept_once`] is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The destination the sender named.
    pub to: String,
    /// The member that signed it (node id, incarnation); `None` for a gateway or kvctl.
    pub from: Option<(String, u64)>,
    /// The time it was signed at, by the sender's clock (ms since the epoch).
    pub signed_ms: u64,
    sender: u64,
    seq: u64,
}

/// Why a request was refused; safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// Short reason, the metric label: `missing`, `protocol`, `malformed`, `unknown_key`,
    /// `bad_signature`, `expired`, `replayed`, `wrong_destination`.
    pub reason: &'static str,
    /// What to tell the caller.
    pub message: String,
}

impl AuthError {
    /// A refusal for `reason`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> AuthError {
        AuthError { reason, message: message.into() }
    }
}

/// Checks signatures with a [`Signer`]'s keys (reloaded with it), the allowed clock skew and a
/// replay guard.
pub struct Verifier {
    keys: Arc<RwLock<Arc<Keys>>>,
    max_skew_ms: u64,
    guard: ReplayGuard,
}

impl Verifier {
    /// A verifier sharing `signer`'s keys, accepting timestamps within `max_skew` of its clock.
    pub fn new(signer: &Signer, max_skew: std::time::Duration) -> Verifier {
        let max_skew_ms = max_skew.as_millis() as u64;
        Verifier { keys: signer.keys.clone(), max_skew_ms, guard: ReplayGuard::new(max_skew_ms * 2) }
    }

    /// The whole check of a request's signature header at `now_ms`: [`Verifier::check`], then
    /// [`Verifier::accept_once`]. (A receiver that checks the destination does so between them.)
    pub fn verify(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Signed, AuthError> {
        let signed = self.check(header, method, path, body, now_ms)?;
        self.accept_once(&signed, now_ms)?;
        Ok(signed)
    }

    /// What can be checked before the body is read, cheaply: the header is well-formed, of this
    /// protocol, signed with a key this process holds, and within the clock skew. A request
    /// that fails it is refused before its body is read (an unauthenticated client cannot make
    /// a node buffer bodies).
    pub fn precheck(&self, header: Option<&str>, now_ms: u64) -> Result<(), AuthError> {
        let parsed = parse(header)?;
        let keys = self.keys.read().clone();
        if !keys.all.iter().any(|(k, _)| k == parsed.id) {
            return Err(unknown_key(parsed.id));
        }
        self.within_skew(parsed.ts, now_ms)
    }

    /// Checks the signature's MAC over this request and its time; does not yet record it as
    /// seen.
    pub fn check(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Signed, AuthError> {
        let Parsed { id, ts, nonce, sender, seq, to, from, tag } = parse(header)?;
        let keys = self.keys.read().clone();
        let Some((_, key)) = keys.all.iter().find(|(k, _)| k == id) else { return Err(unknown_key(id)) };
        let expected = mac(key, id, ts, nonce, to, from, method, path, body);
        if !constant_time_eq(&expected, &tag) {
            return Err(AuthError::new(
                "bad_signature",
                "bad signature: the request was altered after signing, or signed with another secret",
            ));
        }
        self.within_skew(ts, now_ms)?;
        let from = parse_member(from).map(|(id, incarnation)| (id.to_owned(), incarnation));
        Ok(Signed { to: to.to_owned(), from, signed_ms: ts, sender, seq })
    }

    /// Records a checked signature as seen; refused if it was seen before (a replay).
    pub fn accept_once(&self, signed: &Signed, now_ms: u64) -> Result<(), AuthError> {
        match self.guard.check(signed.sender, &signed.to, signed.seq, now_ms) {
            Ok(()) => Ok(()),
            Err(Replay::Seen | Replay::TooOld) => {
                Err(AuthError::new("replayed", "replayed request: this signature was accepted before"))
            }
            Err(Replay::Full) => Err(AuthError::new("replayed", "too many senders at once; retry shortly")),
        }
    }

    fn within_skew(&self, ts: u64, now_ms: u64) -> Result<(), AuthError> {
        let skew = now_ms.abs_diff(ts);
        if skew > self.max_skew_ms {
            return Err(AuthError::new(
                "expired",
                format!(
                    "signed {skew} ms from this process's clock; at most {} ms allowed (--auth-max-skew): a delayed \
                     or replayed request, or clocks that disagree",
                    self.max_skew_ms
                ),
            ));
        }
        Ok(())
    }
}

/// The fields of a signature header.
struct Parsed<'a> {
    id: &'a str,
    ts: u64,
    nonce: &'a str,
    sender: u64,
    seq: u64,
    to: &'a str,
    from: &'a str,
    tag: Vec<u8>,
}

fn unknown_key(id: &str) -> AuthError {
    AuthError::new(
        "unknown_key",
        format!(
            "signed with key {:?}, which this process does not hold: its cluster secret differs",
            id.chars().take(16).collect::<String>()
        ),
    )
}

fn parse(header: Option<&str>) -> Result<Parsed<'_>, AuthError> {
    {
        let header = header.ok_or_else(|| {
            AuthError::new(
                "missing",
                format!("missing {SIGNATURE_HEADER} header: requests must be signed with the cluster secret"),
            )
        })?;
        let fields: Vec<&str> = header.split(' ').collect();
        if fields.first() != Some(&PROTOCOL) {
            let theirs = fields.first().copied().unwrap_or("");
            return Err(AuthError::new(
                "protocol",
                format!(
                    "request protocol {:?} not supported; this process speaks {PROTOCOL} (all processes of a cluster \
                     must run the same release)",
                    theirs.chars().take(16).collect::<String>()
                ),
            ));
        }
        let malformed = || AuthError::new("malformed", "malformed signature header");
        let [_, id, ts, nonce, to, from, tag] = fields.as_slice() else { return Err(malformed()) };
        let ts: u64 = ts.parse().map_err(|_| malformed())?;
        let (sender, seq) = nonce.split_once('.').ok_or_else(malformed)?;
        let sender =
            (sender.len() == 16).then(|| u64::from_str_radix(sender, 16).ok()).flatten().ok_or_else(malformed)?;
        let seq: u64 = seq.parse().ok().filter(|s| *s > 0).ok_or_else(malformed)?;
        if to.is_empty() || to.len() > MAX_TO {
            return Err(malformed());
        }
        if *from != "-" && parse_member(from).is_none() {
            return Err(malformed());
        }
        let tag = from_hex(tag).ok_or_else(malformed)?;
        Ok(Parsed { id, ts, nonce, sender, seq, to, from, tag })
    }
}

#[allow(clippy::too_many_arguments)]
fn mac(
    key: &Hmac<Sha256>,
    id: &str,
    ts: u64,
    nonce: &str,
    to: &str,
    from: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> [u8; 32] {
    let mut mac = key.clone();
    for field in [PROTOCOL, id, &ts.to_string(), nonce, to, from, method, path] {
        mac.update(field.as_bytes());
        mac.update(b"\n");
    }
    mac.update(&Sha256::digest(body));
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secrets(c: char) -> Secrets {
        Secrets::parse(&c.to_string().repeat(32)).unwrap()
    }

    #[test]
    fn a_signature_covers_every_field_and_every_body_byte() {
        let signer = Signer::new(&secrets('a'));
        let verifier = Verifier::new(&signer, Duration::from_secs(30));
        let body = b"some body bytes".to_vec();
        let sign = || signer.sign_at("POST", "/internal/v1/batch", "n1:7100", &body, 1000);
        let ok = verifier.verify(Some(&sign()), "POST", "/internal/v1/batch", &body, 1000).unwrap();
        assert_eq!(ok.to, "n1:7100");
        for i in 0..body.len() {
            let mut tampered = body.clone();
            tampered[i] ^= 1;
            let refused = verifier.verify(Some(&sign()), "POST", "/internal/v1/batch", &tampered, 1000).unwrap_err();
            assert_eq!(refused.reason, "bad_signature", "byte {i}");
        }
        for (method, path) in [("PUT", "/internal/v1/batch"), ("POST", "/internal/v1/scan")] {
            assert_eq!(verifier.verify(Some(&sign()), method, path, &body, 1000).unwrap_err().reason, "bad_signature");
        }
        // Every field of the header is covered: change one and the MAC no longer matches.
        let header = sign();
        let fields: Vec<&str> = header.split(' ').collect();
        for (i, changed) in [(2, "1001"), (3, "00000000000000ff.1"), (4, "n2:7100"), (5, "n9~00000000000000ff")] {
            let mut f = fields.clone();
            f[i] = changed;
            let refused = verifier.verify(Some(&f.join(" ")), "POST", "/internal/v1/batch", &body, 1000).unwrap_err();
            assert_eq!(refused.reason, "bad_signature", "field {i}");
        }
        let missing = verifier.verify(None, "POST", "/", &body, 1000).unwrap_err();
        assert_eq!(missing.reason, "missing");
        let old = verifier.verify(Some("v2 00"), "POST", "/", &body, 1000).unwrap_err();
        assert!(old.message.contains("protocol"), "{old:?}");
        let other = Signer::new(&secrets('b')).sign_at("POST", "/x", "*", &body, 1000);
        assert_eq!(verifier.verify(Some(&other), "POST", "/x", &body, 1000).unwrap_err().reason, "unknown_key");
    }

    #[test]
    fn a_signature_is_accepted_once_and_only_within_the_skew() {
        let signer = Signer::new(&secrets('a'));
        let verifier = Verifier::new(&signer, Duration::from_secs(30));
        let header = signer.sign_at("POST", "/admin/leave", "n1", b"", 100_000);
        assert!(verifier.verify(Some(&header), "POST", "/admin/leave", b"", 100_000).is_ok());
        let again = verifier.verify(Some(&header), "POST", "/admin/leave", b"", 100_001).unwrap_err();
        assert_eq!(again.reason, "replayed");
        let late = signer.sign_at("POST", "/admin/leave", "n1", b"", 100_000);
        assert_eq!(verifier.verify(Some(&late), "POST", "/admin/leave", b"", 130_001).unwrap_err().reason, "expired");
        let early = signer.sign_at("POST", "/admin/leave", "n1", b"", 200_000);
        assert_eq!(verifier.verify(Some(&early), "POST", "/admin/leave", b"", 169_999).unwrap_err().reason, "expired");
    }

    #[test]
    fn a_request_overtaken_by_thousands_to_other_destinations_is_not_a_replay() {
        let signer = Signer::new(&secrets('a'));
        let at_a = Verifier::new(&signer, Duration::from_secs(30));
        let early = signer.sign_at("POST", "/x", "a:1", b"", 5);
        for _ in 0..5000 {
            signer.sign_at("POST", "/x", "b:1", b"", 5);
        }
        let late = signer.sign_at("POST", "/x", "a:1", b"", 5);
        assert!(at_a.verify(Some(&late), "POST", "/x", b"", 5).is_ok());
        assert!(at_a.verify(Some(&early), "POST", "/x", b"", 5).is_ok(), "the delayed request is still accepted");
        // A checked signature is recorded only once accepted: checking alone moves nothing.
        let other = signer.sign_at("POST", "/x", "a:1", b"", 5);
        let signed = at_a.check(Some(&other), "POST", "/x", b"", 5).unwrap();
        assert!(at_a.accept_once(&signed, 5).is_ok());
        assert_eq!(at_a.accept_once(&signed, 5).unwrap_err().reason, "replayed");
    }

    #[test]
    fn rotation_signs_with_the_first_secret_and_accepts_every_listed_one() {
        let old = secrets('a');
        let both = Secrets::parse(&format!("{}\n{}", "b".repeat(32), "a".repeat(32))).unwrap();
        let old_signer = Signer::new(&old);
        let new_signer = Signer::new(&both);
        let verifier = Verifier::new(&old_signer, Duration::from_secs(30));
        let by_new = new_signer.sign_at("POST", "/x", "*", b"", 5);
        assert_eq!(verifier.verify(Some(&by_new), "POST", "/x", b"", 5).unwrap_err().reason, "unknown_key");
        old_signer.reload(&both);
        assert!(verifier.verify(Some(&by_new), "POST", "/x", b"", 5).is_ok(), "reloaded: the new secret is accepted");
        let by_old = Signer::new(&old).sign_at("POST", "/x", "*", b"", 5);
        assert!(verifier.verify(Some(&by_old), "POST", "/x", b"", 5).is_ok(), "and the old one still");
    }
}

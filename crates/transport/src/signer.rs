//! [`Signer`] and [`Verifier`]: the one place peer and admin requests are signed and checked.
//!
//! A signature proves that the sender holds the cluster secret, binds the whole request, and
//! is accepted once. It is sent in [`SIGNATURE_HEADER`] as
//!
//! ```text
//! v7 <key id> <timestamp ms> <sender>.<seq> <to> <from> <body sha-256> <hmac>
//! ```
//!
//! where the HMAC-SHA256, under a key derived from the cluster secret ([`crate::Secrets`]),
//! covers the protocol, key id, timestamp, sender and sequence number, the destination `to`
//! (the peer address dialed, or a node id), `from` (the sending member as `<node id>~<storage
//! incarnation in hex>`, or `-` for a gateway or kvctl: receivers refuse members that left or
//! were removed), the method, the path with its query and the SHA-256 of the whole body, which
//! the header declares in hex.
//!
//! **The head is authenticated before the body is read** ([`Verifier::check_head`]): the MAC
//! covers every field of the head, the declared body digest included, so a receiver proves the
//! sender holds the secret, that the request is meant for it, fresh and not a replay, before it
//! reads or buffers a byte of the body; only then is the body read, and its digest compared
//! with the declared one ([`Verifier::check_body`]). (Before v4 the MAC covered the body itself,
//! so a head with the right key id and time and a MAC of zeros passed the head's checks and made
//! a node buffer up to 16 MiB per request before the MAC could be checked.) The receiver refuses,
//! in this order: a missing or malformed header or another protocol version; a key id it does
//! not hold (the secrets differ); a MAC that does not match (the head was altered, or signed
//! with another secret); a timestamp further than the allowed clock skew from its own clock, or
//! earlier than the process started (a request captured before a restart is never accepted
//! again: the replay windows live in memory); a (sender, sequence number) pair it accepted
//! before ([`crate::replay::ReplayGuard`]); and, once the body is in, a body whose digest is not
//! the declared one. The caller checks `to` where it matters (a request replayed to another
//! member names the wrong one).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use sha2::{Digest as _, Sha256};

use crate::replay::{Replay, ReplayGuard};
use crate::secret::Secrets;

/// Header carrying a request's signature.
pub const SIGNATURE_HEADER: &str = "x-kv-internal";

// The protocol version is written first (`v7`): the version the body is in, one of those this
// release speaks (`kv_proto::PROTOCOL_MIN` to `kv_proto::PROTOCOL`; their history is there).
// Requests in other versions are refused with a clear message.
use kv_proto::{spoken_version, PROTOCOL, PROTOCOL_MIN};

/// The purpose the signing key is derived for.
const PURPOSE: &str = "requests-v4";

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
    ///
    /// In the oldest protocol this release speaks: admin and client requests carry no body
    /// whose shape changed, so kvctl of this release also talks to processes of the previous.
    pub fn sign(&self, method: &str, path: &str, to: &str, body: &[u8]) -> String {
        self.sign_at(method, path, to, body, now_ms())
    }

    /// [`Signer::sign`] of a body in peer protocol `version`.
    pub fn sign_as(&self, version: u32, method: &str, path: &str, to: &str, body: &[u8]) -> String {
        self.sign_full(version, method, path, to, body, now_ms())
    }

    /// [`Signer::sign`] at a given time.
    pub fn sign_at(&self, method: &str, path: &str, to: &str, body: &[u8], now_ms: u64) -> String {
        self.sign_full(PROTOCOL_MIN, method, path, to, body, now_ms)
    }

    fn sign_full(&self, version: u32, method: &str, path: &str, to: &str, body: &[u8], now_ms: u64) -> String {
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
        let digest = hex(&Sha256::digest(body));
        let version = format!("v{version}");
        let head = Head { version: &version, id, ts: now_ms, nonce: &nonce, to, from, digest: &digest };
        let tag = mac(key, &head, method, path);
        format!("{version} {id} {now_ms} {nonce} {to} {from} {digest} {}", hex(&tag))
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
    /// The peer protocol version its body is in (and its answer must be in).
    pub version: u32,
    /// The SHA-256 of the body the head declared (and its MAC covers).
    digest: [u8; 32],
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
    /// When this process started (ms since the epoch): a signature made before is refused.
    started_ms: u64,
}

impl Verifier {
    /// A verifier sharing `signer`'s keys, accepting timestamps within `max_skew` of its clock
    /// and not earlier than now (the process's start).
    pub fn new(signer: &Signer, max_skew: std::time::Duration) -> Verifier {
        Verifier::started_at(signer, max_skew, now_ms())
    }

    /// [`Verifier::new`] for a process that started at `started_ms`.
    pub fn started_at(signer: &Signer, max_skew: std::time::Duration, started_ms: u64) -> Verifier {
        let max_skew_ms = max_skew.as_millis() as u64;
        Verifier { keys: signer.keys.clone(), max_skew_ms, guard: ReplayGuard::new(max_skew_ms * 2), started_ms }
    }

    /// The whole check of a request at `now_ms`: [`Verifier::check_head`],
    /// [`Verifier::accept_once`] and [`Verifier::check_body`]. (A receiver that checks the
    /// destination does so after the head's check.)
    pub fn verify(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Signed, AuthError> {
        let signed = self.check_head(header, method, path, now_ms)?;
        self.accept_once(&signed, now_ms)?;
        Verifier::check_body(&signed, body)?;
        Ok(signed)
    }

    /// Checks the head alone, before a byte of the body is read: the header's form and
    /// protocol, its key, its MAC over the head's fields (the declared body digest included),
    /// and its time (within the skew, not before this process started). Does not yet record it
    /// as seen ([`Verifier::accept_once`]); the body is checked once in
    /// ([`Verifier::check_body`]).
    pub fn check_head(&self, header: Option<&str>, method: &str, path: &str, now_ms: u64) -> Result<Signed, AuthError> {
        let Parsed { version_name, version, id, ts, nonce, sender, seq, to, from, digest, tag } = parse(header)?;
        let keys = self.keys.read().clone();
        let Some((_, key)) = keys.all.iter().find(|(k, _)| k == id) else { return Err(unknown_key(id)) };
        let expected = mac(key, &Head { version: version_name, id, ts, nonce, to, from, digest }, method, path);
        if !constant_time_eq(&expected, &tag) {
            return Err(AuthError::new(
                "bad_signature",
                "bad signature: the request was altered after signing, or signed with another secret",
            ));
        }
        self.within_skew(ts, now_ms)?;
        if ts < self.started_ms {
            return Err(AuthError::new(
                "before_start",
                format!(
                    "signed {} ms before this process started: a request captured before a restart is not accepted \
                     again (or the sender's clock is behind this process's)",
                    self.started_ms - ts
                ),
            ));
        }
        let from = parse_member(from).map(|(id, incarnation)| (id.to_owned(), incarnation));
        let digest = from_hex(digest).ok_or_else(|| AuthError::new("malformed", "malformed signature header"))?;
        Ok(Signed { to: to.to_owned(), from, signed_ms: ts, version, digest, sender, seq })
    }

    /// Checks the body a head declared: its SHA-256 must be the digest the head's MAC covers.
    pub fn check_body(signed: &Signed, body: &[u8]) -> Result<(), AuthError> {
        let digest: [u8; 32] = Sha256::digest(body).into();
        if !constant_time_eq(&digest, &signed.digest) {
            return Err(AuthError::new(
                "bad_signature",
                "bad signature: the body is not the one the request was signed for (altered or cut)",
            ));
        }
        Ok(())
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
    version_name: &'a str,
    version: u32,
    id: &'a str,
    ts: u64,
    nonce: &'a str,
    sender: u64,
    seq: u64,
    to: &'a str,
    from: &'a str,
    digest: &'a str,
    tag: [u8; 32],
}

/// The fields of a head the MAC covers, besides the method and path.
struct Head<'a> {
    /// `v<N>`.
    version: &'a str,
    id: &'a str,
    ts: u64,
    nonce: &'a str,
    to: &'a str,
    from: &'a str,
    /// The body's SHA-256, hex.
    digest: &'a str,
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
        let version_name = fields.first().copied().unwrap_or("");
        let Some(version) = spoken_version(version_name) else {
            return Err(AuthError::new(
                "protocol",
                format!(
                    "request protocol {:?} not supported; this process speaks v{PROTOCOL_MIN} to v{PROTOCOL} (a rolling \
                     upgrade spans one release: upgrade through each release in turn)",
                    version_name.chars().take(16).collect::<String>()
                ),
            ));
        };
        let malformed = || AuthError::new("malformed", "malformed signature header");
        let [_, id, ts, nonce, to, from, digest, tag] = fields.as_slice() else { return Err(malformed()) };
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
        if from_hex(digest).is_none() {
            return Err(malformed());
        }
        let tag = from_hex(tag).ok_or_else(malformed)?;
        Ok(Parsed { version_name, version, id, ts, nonce, sender, seq, to, from, digest, tag })
    }
}

fn mac(key: &Hmac<Sha256>, head: &Head<'_>, method: &str, path: &str) -> [u8; 32] {
    let mut mac = key.clone();
    let ts = head.ts.to_string();
    for field in [head.version, head.id, &ts, head.nonce, head.to, head.from, method, path, head.digest] {
        mac.update(field.as_bytes());
        mac.update(b"\n");
    }
    mac.finalize().into_bytes().into()
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ (`subtle`).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// 32 bytes from 64 hex digits.
fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
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
        let verifier = Verifier::started_at(&signer, Duration::from_secs(30), 0);
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
        let other_digest = hex(&Sha256::digest(b"another body"));
        for (i, changed) in [
            (2, "1001"),
            (3, "00000000000000ff.1"),
            (4, "n2:7100"),
            (5, "n9~00000000000000ff"),
            (6, other_digest.as_str()),
        ] {
            let mut f = fields.clone();
            f[i] = changed;
            let refused = verifier.verify(Some(&f.join(" ")), "POST", "/internal/v1/batch", &body, 1000).unwrap_err();
            assert_eq!(refused.reason, "bad_signature", "field {i}");
        }
        let missing = verifier.verify(None, "POST", "/", &body, 1000).unwrap_err();
        assert_eq!(missing.reason, "missing");
        let old = verifier.verify(Some("v2 00"), "POST", "/", &body, 1000).unwrap_err();
        assert!(old.message.contains("protocol"), "{old:?}");
        // Every version this release speaks is accepted and named; the version is under the MAC.
        for version in [PROTOCOL_MIN, PROTOCOL] {
            let header = signer.sign_full(version, "POST", "/x", "n1:7100", &body, 1000);
            let signed = verifier.verify(Some(&header), "POST", "/x", &body, 1000).unwrap();
            assert_eq!(signed.version, version);
        }
        let newer = signer.sign_full(PROTOCOL + 1, "POST", "/x", "n1:7100", &body, 1000);
        assert_eq!(verifier.verify(Some(&newer), "POST", "/x", &body, 1000).unwrap_err().reason, "protocol");
        let header = signer.sign_full(PROTOCOL, "POST", "/x", "n1:7100", &body, 1000);
        let downgraded = header.replacen(&format!("v{PROTOCOL}"), &format!("v{PROTOCOL_MIN}"), 1);
        assert_eq!(verifier.verify(Some(&downgraded), "POST", "/x", &body, 1000).unwrap_err().reason, "bad_signature");
        let other = Signer::new(&secrets('b')).sign_at("POST", "/x", "*", &body, 1000);
        assert_eq!(verifier.verify(Some(&other), "POST", "/x", &body, 1000).unwrap_err().reason, "unknown_key");
    }

    #[test]
    fn a_signature_is_accepted_once_and_only_within_the_skew() {
        let signer = Signer::new(&secrets('a'));
        let verifier = Verifier::started_at(&signer, Duration::from_secs(30), 0);
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
        let at_a = Verifier::started_at(&signer, Duration::from_secs(30), 0);
        let early = signer.sign_at("POST", "/x", "a:1", b"", 5);
        for _ in 0..5000 {
            signer.sign_at("POST", "/x", "b:1", b"", 5);
        }
        let late = signer.sign_at("POST", "/x", "a:1", b"", 5);
        assert!(at_a.verify(Some(&late), "POST", "/x", b"", 5).is_ok());
        assert!(at_a.verify(Some(&early), "POST", "/x", b"", 5).is_ok(), "the delayed request is still accepted");
        // A checked signature is recorded only once accepted: checking alone moves nothing.
        let other = signer.sign_at("POST", "/x", "a:1", b"", 5);
        let signed = at_a.check_head(Some(&other), "POST", "/x", 5).unwrap();
        assert!(at_a.accept_once(&signed, 5).is_ok());
        assert_eq!(at_a.accept_once(&signed, 5).unwrap_err().reason, "replayed");
    }

    #[test]
    fn rotation_signs_with_the_first_secret_and_accepts_every_listed_one() {
        let old = secrets('a');
        let both = Secrets::parse(&format!("{}\n{}", "b".repeat(32), "a".repeat(32))).unwrap();
        let old_signer = Signer::new(&old);
        let new_signer = Signer::new(&both);
        let verifier = Verifier::started_at(&old_signer, Duration::from_secs(30), 0);
        let by_new = new_signer.sign_at("POST", "/x", "*", b"", 5);
        assert_eq!(verifier.verify(Some(&by_new), "POST", "/x", b"", 5).unwrap_err().reason, "unknown_key");
        old_signer.reload(&both);
        assert!(verifier.verify(Some(&by_new), "POST", "/x", b"", 5).is_ok(), "reloaded: the new secret is accepted");
        let by_old = Signer::new(&old).sign_at("POST", "/x", "*", b"", 5);
        assert!(verifier.verify(Some(&by_old), "POST", "/x", b"", 5).is_ok(), "and the old one still");
    }

    #[test]
    fn the_head_is_authenticated_before_the_body_and_the_body_after() {
        let signer = Signer::new(&secrets('a'));
        let verifier = Verifier::started_at(&signer, Duration::from_secs(30), 0);
        let body = vec![7u8; 1 << 16];
        let header = signer.sign_at("POST", "/internal/v1/batch", "n1:7100", &body, 1000);
        // The head alone proves the secret: a forged MAC (the right key id and time, a MAC of
        // zeros) is refused before any byte of the body.
        let mut fields: Vec<String> = header.split(' ').map(str::to_owned).collect();
        fields[7] = "0".repeat(64);
        let forged = fields.join(" ");
        assert_eq!(
            verifier.check_head(Some(&forged), "POST", "/internal/v1/batch", 1000).unwrap_err().reason,
            "bad_signature"
        );
        // A genuine head passes on its own; then its body must be the one it declared.
        let signed = verifier.check_head(Some(&header), "POST", "/internal/v1/batch", 1000).unwrap();
        assert!(Verifier::check_body(&signed, &body).is_ok());
        assert_eq!(Verifier::check_body(&signed, &body[1..]).unwrap_err().reason, "bad_signature");
    }

    #[test]
    fn a_signature_made_before_the_process_started_is_refused() {
        let signer = Signer::new(&secrets('a'));
        let started = 50_000;
        let verifier = Verifier::started_at(&signer, Duration::from_secs(30), started);
        let before = signer.sign_at("POST", "/admin/repair", "n1", b"", started - 1);
        let refused = verifier.verify(Some(&before), "POST", "/admin/repair", b"", started + 100).unwrap_err();
        assert_eq!(refused.reason, "before_start");
        let after = signer.sign_at("POST", "/admin/repair", "n1", b"", started + 50);
        assert!(verifier.verify(Some(&after), "POST", "/admin/repair", b"", started + 100).is_ok());
    }
}

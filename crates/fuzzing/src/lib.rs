//! # What hostile input may reach, one input at a time
//!
//! Every decoder and parser that takes bytes from outside the process has a function here that
//! feeds it one input and checks what must hold: it never panics, never hangs, and what it
//! accepts is well-formed (decoding what it encodes gives it back; a token it opens was sealed
//! by this cluster). The fuzz targets under `fuzz/` (cargo-fuzz, `make fuzz`) call these
//! functions with libFuzzer's inputs; the property tests in `tests/` (`make test`) call them
//! with proptest's, so the same checks run on every change.
//!
//! The inputs, and where each comes from in a running process:
//!
//! - [`context_token`]: the `X-Context` header of a client request (`kv_api::context`).
//! - [`peer_messages`]: the bodies of peer requests and their answers (`kv_proto`:
//!   batches of replica calls, scans, store batches, Merkle requests).
//! - [`gossip`]: a gossip exchange's body, decoded and merged into a member's view.
//! - [`signature`]: the signature header of a peer or admin request ([`kv_transport::Verifier`]).
//! - [`client_request`]: a whole client request (method, path with the key and the query,
//!   headers, body) through the real client router of a node (`kv_api`), over a coordinator
//!   whose replicas are unreachable.
//! - [`config`]: a TOML config file for kvnode, parsed and validated; and the secret and
//!   client-token files.
//!
//! # Layout
//! Everything is in this file; `tests/properties.rs` holds the property tests.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kv_coordinator::{BoxFuture, CallPeer, Coordinator, CoordinatorMetrics, Peer, Quorum, ReplicaError};
use kv_gossip::{Digest, MemberState, Status};
use kv_membership::Membership;
use kv_proto::{
    decode, encode, Call, MerkleRequest, MerkleResponse, Reply, ScanRequest, ScanResponse, StoreBatchRequest,
};
use kv_transport::{Secrets, Signer, Verifier};
use tower::ServiceExt as _;

/// The secret every target uses (fixed: fuzzing is about inputs, not keys).
fn secrets() -> Secrets {
    Secrets::parse("fuzzing-secret-0123456789abcdef0123456789abcdef").expect("invariant: a valid secret")
}

fn sealer() -> &'static kv_api::context::ContextSealer {
    static SEALER: OnceLock<kv_api::context::ContextSealer> = OnceLock::new();
    SEALER.get_or_init(|| kv_api::context::ContextSealer::new(&secrets()))
}

/// A context token: opening never panics; a token that opens is one this cluster sealed (it
/// re-seals to itself), and the unsealed clock decoder accepts only what it would encode.
pub fn context_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(clock) = sealer().open(b"k", &text) {
        let again = sealer().open(b"k", &sealer().seal(b"k", &clock)).ok();
        assert_eq!(again, Some(clock), "a token opened but does not re-seal");
    }
    if let Ok(clock) = kv_vclock::VClock::decode(data) {
        assert_eq!(kv_vclock::VClock::decode(&clock.encode()).ok(), Some(clock), "decode(encode(c)) != c");
    }
    let _ = kv_vclock::VClock::from_token(&text);
}

/// Decodes `data` as `T`; if it decodes, encoding and decoding again gives the same value.
fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(data) {
        let again: T = decode(&encode(&value)).expect("what decoded encodes and decodes again");
        assert_eq!(format!("{value:?}"), format!("{again:?}"), "decode(encode(x)) != x");
    }
}

/// Every peer message type: the first byte picks one, the rest is its body.
pub fn peer_messages(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 8 {
        0 => round_trip::<Vec<Call>>(body),
        1 => round_trip::<Vec<Reply>>(body),
        2 => round_trip::<ScanRequest>(body),
        3 => round_trip::<ScanResponse>(body),
        4 => round_trip::<StoreBatchRequest>(body),
        5 => round_trip::<MerkleRequest>(body),
        6 => round_trip::<MerkleResponse>(body),
        _ => round_trip::<Digest>(body),
    }
}

fn member(id: &str, status: Status) -> MemberState {
    MemberState {
        id: id.into(),
        address: format!("{id}:7100"),
        zone: "z".into(),
        weight: 1,
        status,
        incarnation: 7,
        lease: 1,
        run: 1,
        generation: 1,
        heartbeat: 1,
        suspects: Vec::new(),
        formed: false,
        release: String::new(),
        protocol: 0,
    }
}

/// A gossip body from a peer: decoded and merged into a member's view, as the peer listener
/// does; the view stays usable (its topology builds).
pub fn gossip(data: &[u8]) {
    let Ok(digest) = decode::<Digest>(data) else { return };
    let (membership, _) = Membership::new(Some(member("n1", Status::Normal)), None, Duration::from_secs(5), None, 1)
        .expect("invariant: a fresh membership");
    membership.merge(digest.clone());
    membership.merge(digest);
    let _ = membership.topology();
    let _ = membership.digest();
}

fn verifier() -> &'static (Signer, Verifier) {
    static VERIFIER: OnceLock<(Signer, Verifier)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let signer = Signer::new(&secrets());
        let verifier = Verifier::new(&signer, Duration::from_secs(30));
        (signer, verifier)
    })
}

/// A signature header (the first line of `data`) over the rest of `data` as body: checking it
/// never panics, a forged head is refused on its own (before any body would be read), and a
/// forged one is refused whole (only our own signatures verify, once).
pub fn signature(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (header, body) = text.split_once('\n').unwrap_or((&text, ""));
    let (signer, verifier) = verifier();
    let now = kv_transport::signer::now_ms();
    assert!(
        verifier.check_head(Some(header), "POST", "/internal/v1/batch", now).is_err(),
        "a head the fuzzer made up was accepted: {header:?}"
    );
    assert!(
        verifier.verify(Some(header), "POST", "/internal/v1/batch", body.as_bytes(), now).is_err(),
        "a signature the fuzzer made up was accepted: {header:?}"
    );
    let genuine = signer.sign("POST", "/internal/v1/batch", "n1:7100", body.as_bytes());
    assert!(verifier.verify(Some(&genuine), "POST", "/internal/v1/batch", body.as_bytes(), now).is_ok());
}

/// Answers every replica call "not reached": the coordinator fails fast, after the request was
/// parsed and checked.
struct Unreachable;

impl CallPeer for Unreachable {
    fn call<'a>(&'a self, _peer: &'a Peer, _call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(async { Err(ReplicaError::NotSent("fuzzing".into())) })
    }
}

struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let router = runtime.block_on(async {
            let (membership, _) =
                Membership::new(Some(member("n1", Status::Normal)), None, Duration::from_secs(5), None, 1)
                    .expect("invariant: a fresh membership");
            let options = kv_coordinator::Options {
                quorum: Quorum::new(3, 2, 2).expect("invariant: a valid quorum"),
                replica_timeout: Duration::from_millis(100),
                read_all: true,
                tombstone_grace: Duration::from_secs(10),
                sloppy_quorum: true,
                hinted_handoff: false,
                zone: "z".into(),
                max_clock_skew: Duration::ZERO,
            };
            let coordinator = Coordinator::new(
                Arc::new(Unreachable),
                membership.subscribe(),
                options,
                CoordinatorMetrics::unregistered(),
            );
            let state = Arc::new(kv_api::ApiState {
                max_value_bytes: 4096,
                coordinator,
                membership,
                contexts: Arc::new(kv_api::context::ContextSealer::new(&secrets())),
                transport: None,
            });
            // With the layers every listener has (fallbacks, limits, deadline), as served.
            let server = kv_server::config::ServerSettings::default()
                .validate("127.0.0.1:1", "127.0.0.1:2")
                .expect("invariant: the default settings are valid");
            let metrics = kv_server::http::HttpMetrics::register(&prometheus::Registry::new())
                .expect("invariant: a fresh registry");
            let options = kv_server::http::ListenerOptions {
                too_large_code: "value_too_large",
                ..kv_server::http::ListenerOptions::bodies(4097)
            };
            kv_server::http::layered(kv_api::client_router(state), "client", &server, &metrics, options)
        });
        Api { runtime, router }
    })
}

/// A whole client request: `data` is `METHOD TARGET` on the first line, then header lines
/// `name: value`, an empty line and the body. Whatever it holds, the router answers (never
/// panics) with a status it documents, and every error is JSON.
pub fn client_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let Some(start) = lines.next() else { return };
    let (method, target) = start.split_once(' ').unwrap_or((start, "/"));
    let Ok(method) = axum::http::Method::from_bytes(method.as_bytes()) else { return };
    let mut request = axum::http::Request::builder().method(method).uri(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            request = request.header(name.trim(), value.trim());
        }
    }
    let Ok(request) = request.body(axum::body::Body::from(body.to_owned())) else { return };
    // The answer to a HEAD has no body, by HTTP's rules.
    let head = request.method() == axum::http::Method::HEAD;
    let api = api();
    let response = api.runtime.block_on(api.router.clone().oneshot(request)).expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(
        [200, 204, 300, 400, 404, 405, 409, 413, 421, 431, 503].contains(&status),
        "undocumented status {status} for {start:?}"
    );
    if status >= 400 && !head {
        let bytes = api.runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).expect("a body");
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
        assert!(json.is_ok_and(|v| v["error"].is_string()), "a {status} without a JSON error body");
    }
}

/// A kvnode config file, and the secret and client-token files: parsing and validating never
/// panics, and a file that validates gives a configuration the node could start with.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(settings) = kv_server::config::settings_text::<kv_node::config::Settings>(&text) {
        // Listener addresses that are names would be resolved by the system's resolver: that
        // is not what is fuzzed here (and it would make each input a network lookup).
        let literal = |a: &Option<String>| a.as_deref().is_none_or(|a| a.parse::<std::net::SocketAddr>().is_ok());
        if literal(&settings.server.listen) && literal(&settings.server.admin_listen) && literal(&settings.peer_listen)
        {
            let _ = settings.validate();
        }
    }
    let _ = Secrets::parse(&text);
    let _ = kv_server::tokens::ClientTokens::parse(&text);
    let _ = kv_server::config::parse_duration(&text);
}

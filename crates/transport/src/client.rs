//! [`PeerTransport`]: the one HTTP client every peer call goes through.

use std::sync::Arc;
use std::time::Duration;

use kv_gossip::Digest;
use kv_proto::{
    decode, encode, Call, MerkleRequest, MerkleResponse, NodeStatus, Reply, ScanRequest, ScanResponse, StatusRequest,
    StoreBatchRequest, BATCH_PATH, GOSSIP_PATH, MERKLE_PATH, PROTOCOL, PROTOCOL_HEADER, PROTOCOL_MIN, SCAN_PATH,
    STATUS_PATH, STORE_BATCH_PATH,
};
use kv_proto::{Refusal, ReplicaError};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::signer::{Signer, SIGNATURE_HEADER};

/// A request one process sends another: where it goes and what comes back.
pub trait PeerRequest: Serialize + Sized {
    /// The internal path it is posted to.
    const PATH: &'static str;
    /// Short name for metric labels.
    const NAME: &'static str;
    /// Whether it waits for one of the transport's in-flight permits. Gossip does not: it is
    /// small, at most a few per round, and must not queue behind range streams and batches (a
    /// node whose gossip stalls is suspected by its peers).
    const BOUNDED: bool = true;
    /// The answer's type.
    type Reply: DeserializeOwned;

    /// The body in peer protocol `version` (a message whose shape changed keeps its old one
    /// for peers that have not upgraded).
    fn encode_as(&self, _version: u32) -> Vec<u8> {
        encode(self)
    }

    /// Decodes the answer, which is in the version the request was sent in.
    fn decode_reply(bytes: &[u8], _version: u32) -> Result<Self::Reply, String> {
        decode(bytes)
    }
}

impl PeerRequest for Vec<Call> {
    const PATH: &'static str = BATCH_PATH;
    const NAME: &'static str = "batch";
    type Reply = Vec<Reply>;
}

impl PeerRequest for ScanRequest {
    const PATH: &'static str = SCAN_PATH;
    const NAME: &'static str = "scan";
    type Reply = ScanResponse;
}

impl PeerRequest for StoreBatchRequest {
    const PATH: &'static str = STORE_BATCH_PATH;
    const NAME: &'static str = "store_batch";
    type Reply = ();
}

impl PeerRequest for MerkleRequest {
    const PATH: &'static str = MERKLE_PATH;
    const NAME: &'static str = "merkle";
    type Reply = MerkleResponse;
}

impl PeerRequest for StatusRequest {
    const PATH: &'static str = STATUS_PATH;
    const NAME: &'static str = "status";
    // Small and rare, and asked of a member whose transfers may hold every permit.
    const BOUNDED: bool = false;
    type Reply = NodeStatus;
}

impl PeerRequest for Digest {
    const PATH: &'static str = GOSSIP_PATH;
    const NAME: &'static str = "gossip";
    const BOUNDED: bool = false;
    type Reply = Digest;

    fn encode_as(&self, version: u32) -> Vec<u8> {
        Digest::encode_as(self, version)
    }

    fn decode_reply(bytes: &[u8], version: u32) -> Result<Digest, String> {
        Digest::decode_as(bytes, version)
    }
}

/// How the transport calls peers.
#[derive(Clone)]
pub struct TransportOptions {
    /// Deadline of one call (connecting included).
    pub timeout: Duration,
    /// Calls in flight at once from this process; more wait.
    pub max_in_flight: usize,
    /// Signs every request.
    pub signer: Signer,
    /// Source address of outgoing connections: the address this process listens on for
    /// peers, so that peers (and firewalls) see one address per process. `None`: the system's
    /// choice.
    pub local_address: Option<std::net::IpAddr>,
    /// TLS to peers (`https`), with this configuration: the cluster's CA as the only roots and
    /// this process's certificate presented. `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long an idle pooled connection is kept: below the peers' `--idle-timeout`, so that
    /// a connection is not reused just as the peer closes it.
    pub pool_idle: Duration,
    /// Asked before every request but gossip: a reason this process must send nothing now (it
    /// is fenced: no longer a member, or its clock is off). Such a request is not sent.
    pub gate: Option<Gate>,
    /// Called when a peer refuses this process as no longer a member of the cluster (`410
    /// not_a_member`: it left or was removed while it could not hear of it).
    pub on_not_member: Option<OnNotMember>,
}

/// See [`TransportOptions::gate`].
pub type Gate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// See [`TransportOptions::on_not_member`].
pub type OnNotMember = Arc<dyn Fn(String) + Send + Sync>;

/// The error code of a peer's refusal of a member that left or was removed (status `410`).
pub const NOT_A_MEMBER: &str = "not_a_member";

/// The error code of a process that does not serve now (status `503`): fenced for its clock, or
/// unable to confirm it is still a member. Nothing was done: the caller tries elsewhere.
pub const NOT_SERVING: &str = "not_serving";

/// `kv_peer_requests_total{request, outcome}` and `kv_peer_bytes_total{request, direction}`.
struct TransportMetrics {
    requests: IntCounterVec,
    bytes: IntCounterVec,
    /// `kv_peer_batch_duration_seconds{peer}`: the time of each replica batch by peer address,
    /// so that a slow replica can be found from its coordinators.
    batch_seconds: prometheus::HistogramVec,
    /// The series of every request kind, looked up once (one request per batch is a hot path).
    kinds: Vec<KindMetrics>,
}

/// The series of one request kind.
struct KindMetrics {
    name: &'static str,
    /// One per [`OUTCOMES`].
    outcomes: [IntCounter; 4],
    sent: IntCounter,
    received: IntCounter,
}

/// Request kinds: every [`PeerRequest::NAME`].
const KINDS: [&str; 6] = [
    <Vec<Call>>::NAME,
    ScanRequest::NAME,
    StoreBatchRequest::NAME,
    MerkleRequest::NAME,
    Digest::NAME,
    StatusRequest::NAME,
];

/// `outcome` labels of `kv_peer_requests_total`.
const OUTCOMES: [&str; 4] = ["ok", "not_sent", "unreachable", "refused"];

impl TransportMetrics {
    fn record(&self, name: &str, result: &Result<Vec<u8>, ReplicaError>, sent: u64) {
        match self.kinds.iter().find(|k| k.name == name) {
            Some(kind) => kind.record(result, sent),
            None => kind_metrics(&self.requests, &self.bytes, "other").record(result, sent),
        }
    }
}

impl KindMetrics {
    fn record(&self, result: &Result<Vec<u8>, ReplicaError>, sent: u64) {
        let outcome = match result {
            Ok(_) => 0,
            Err(ReplicaError::NotSent(_)) => 1,
            Err(ReplicaError::Unreachable(_)) => 2,
            Err(_) => 3,
        };
        self.outcomes[outcome].inc();
        self.sent.inc_by(sent);
        if let Ok(answer) = result {
            self.received.inc_by(answer.len() as u64);
        }
    }
}

fn kind_metrics(requests: &IntCounterVec, bytes: &IntCounterVec, name: &'static str) -> KindMetrics {
    KindMetrics {
        name,
        outcomes: OUTCOMES.map(|outcome| requests.with_label_values(&[name, outcome])),
        sent: bytes.with_label_values(&[name, "sent"]),
        received: bytes.with_label_values(&[name, "received"]),
    }
}

/// The HTTP client for peers: pooled keep-alive connections, signed requests, a deadline per
/// call and a bound on calls in flight. Cheap to clone (clones share all of it).
#[derive(Clone)]
pub struct PeerTransport {
    /// Replaced whole when the TLS certificates are reloaded.
    http: Arc<parking_lot::RwLock<reqwest::Client>>,
    /// `http` or `https`.
    scheme: &'static str,
    options: Arc<TransportOptions>,
    permits: Arc<Semaphore>,
    /// A call's deadline; a call waiting for a permit longer than this is not sent.
    timeout: Duration,
    signer: Signer,
    /// Shared by every clone (the transport is cloned per batch sent).
    metrics: Option<Arc<TransportMetrics>>,
    /// The newest peer protocol each peer (by address) said it speaks in its last answer.
    versions: Arc<parking_lot::RwLock<std::collections::HashMap<String, u32>>>,
}

impl PeerTransport {
    /// The transport, exporting its metrics in `registry` if given. This is the only place a
    /// process builds an HTTP client for its peers (TLS goes here).
    pub fn new(options: TransportOptions, registry: Option<&Registry>) -> Result<PeerTransport, String> {
        let http = build_client(&options, options.tls.clone())?;
        let metrics = registry.map(register).transpose().map_err(|e| format!("transport metrics: {e}"))?.map(Arc::new);
        Ok(PeerTransport {
            http: Arc::new(parking_lot::RwLock::new(http)),
            scheme: if options.tls.is_some() { "https" } else { "http" },
            permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            timeout: options.timeout,
            signer: options.signer.clone(),
            options: Arc::new(options),
            metrics,
            versions: Arc::default(),
        })
    }

    /// Uses `tls` for connections made from now on (renewed certificates); connections already
    /// pooled finish their calls.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) -> Result<(), String> {
        if self.scheme != "https" {
            return Err("the transport was started without TLS".into());
        }
        *self.http.write() = build_client(&self.options, Some(tls))?;
        Ok(())
    }

    /// Sends `request` to the peer at `address` (`host:port` of its peer listener) and decodes
    /// its answer.
    ///
    /// In the newest protocol both speak: the peer's last answer said which ([`PROTOCOL_HEADER`];
    /// none yet, or an answer without it, means [`PROTOCOL_MIN`]).
    pub async fn request<R: PeerRequest>(&self, address: &str, request: &R) -> Result<R::Reply, ReplicaError> {
        let mut version = self.version_of(address);
        loop {
            let sent =
                self.post(address, R::PATH, R::NAME, R::BOUNDED, request.encode_as(version), version, None).await;
            match sent {
                // The peer went back to an older release (a downgrade, a rollback): it refused
                // the newer version before doing anything and its answer said what it speaks.
                Err(ReplicaError::Refused(Refusal::Unauthenticated(_))) if self.version_of(address) < version => {
                    version = self.version_of(address);
                }
                sent => return R::decode_reply(&sent?, version).map_err(ReplicaError::Decode),
            }
        }
    }

    /// The protocol this transport sends the peer at `address` in.
    pub fn version_of(&self, address: &str) -> u32 {
        self.versions.read().get(address).copied().unwrap_or(PROTOCOL_MIN)
    }

    /// Every peer this transport heard from, with the newest protocol it speaks.
    pub fn peer_versions(&self) -> Vec<(String, u32)> {
        let mut versions: Vec<(String, u32)> = self.versions.read().iter().map(|(a, v)| (a.clone(), *v)).collect();
        versions.sort();
        versions
    }

    fn learn(&self, address: &str, headers: &reqwest::header::HeaderMap) {
        let spoken = headers
            .get(PROTOCOL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(PROTOCOL_MIN, |v| v.clamp(PROTOCOL_MIN, PROTOCOL));
        if self.versions.read().get(address) != Some(&spoken) {
            self.versions.write().insert(address.to_owned(), spoken);
        }
    }

    /// Posts a signed body, the one way any request leaves this process for a peer.
    #[allow(clippy::too_many_arguments)]
    async fn post(
        &self,
        address: &str,
        path: &str,
        name: &str,
        bounded: bool,
        body: Vec<u8>,
        version: u32,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ReplicaError> {
        let sent = body.len() as u64;
        let started = std::time::Instant::now();
        let result = self.post_unmetered(address, path, bounded, body, version, timeout).await;
        if let Some(metrics) = &self.metrics {
            metrics.record(name, &result, sent);
            if path == BATCH_PATH && result.is_ok() {
                metrics.batch_seconds.with_label_values(&[address]).observe(started.elapsed().as_secs_f64());
            }
        }
        result
    }

    async fn post_unmetered(
        &self,
        address: &str,
        path: &str,
        bounded: bool,
        body: Vec<u8>,
        version: u32,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ReplicaError> {
        if path != GOSSIP_PATH {
            if let Some(gate) = &self.options.gate {
                gate().map_err(ReplicaError::NotSent)?;
            }
        }
        // The wait for a permit counts against the call's deadline too: a call queued behind
        // others for longer is not sent at all (certainly not applied), rather than sent late.
        let _permit = if bounded {
            let permit = tokio::time::timeout(self.timeout, self.permits.acquire())
                .await
                .map_err(|_| ReplicaError::NotSent(format!("no transport permit within {:?}", self.timeout)))?;
            Some(permit.map_err(|_| ReplicaError::NotSent("transport closed".into()))?)
        } else {
            None
        };
        let signature = self.signer.sign_as(version, "POST", path, address, &body);
        let http = self.http.read().clone();
        let mut post = http.post(format!("{}://{address}{path}", self.scheme));
        if let Some(timeout) = timeout {
            post = post.timeout(timeout);
        }
        let response = post
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // A failed connection sent nothing; any later failure may have been applied.
                if e.is_connect() {
                    ReplicaError::NotSent(e.to_string())
                } else {
                    ReplicaError::Unreachable(e.to_string())
                }
            })?;
        let status = response.status();
        self.learn(address, response.headers());
        let bytes = response.bytes().await.map_err(|e| ReplicaError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            // No such route: certainly not applied. The address is not a peer listener (a seed
            // or a recorded address naming a client or admin port, as before the listeners
            // were split): say so loudly, it is a configuration error.
            tracing::warn!(
                address,
                path,
                "peer answered 404: not a --peer-listen address (check --seeds and --advertise)"
            );
            return Err(ReplicaError::NotSent(format!("{address} is not a peer listener (404 for {path})")));
        }
        let message: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        let code = error_code(&bytes);
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && matches!(code.as_deref(), Some("overloaded")) {
            // Shed by the peer's concurrency limit before anything read the request.
            return Err(ReplicaError::NotSent(format!("{address} is overloaded: {message}")));
        }
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && code.as_deref() == Some(NOT_SERVING) {
            // Refused whole before anything was done (its clock is fenced, or it cannot
            // confirm its membership): like a peer that is down.
            return Err(ReplicaError::NotSent(format!("{address} does not serve now: {message}")));
        }
        if status == reqwest::StatusCode::GONE && code.as_deref() == Some(NOT_A_MEMBER) {
            if let Some(on_not_member) = &self.options.on_not_member {
                on_not_member(format!("{address} refused this node: {message}"));
            }
            return Err(ReplicaError::NotSent(format!("{address} refused this node as no longer a member: {message}")));
        }
        Err(ReplicaError::Refused(refusal_of(status, message)))
    }
}

/// The refusal a peer's answer with HTTP `status` to a whole request stands for: the one place
/// where an HTTP status becomes a protocol refusal (single calls are refused typed, inside a
/// batch's answer).
fn refusal_of(status: reqwest::StatusCode, message: String) -> Refusal {
    match status.as_u16() {
        421 => Refusal::NotOwner(message),
        401 => Refusal::Unauthenticated(message),
        409 => Refusal::TooManySiblings(message),
        504 => Refusal::TooLate(message),
        400..=499 => Refusal::Malformed(message),
        503 => Refusal::Unavailable(message),
        _ => Refusal::Failed(message),
    }
}

/// The `error` code of a JSON error body.
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["error"].as_str().map(str::to_owned)
}

fn build_client(options: &TransportOptions, tls: Option<Arc<rustls::ClientConfig>>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .pool_idle_timeout(options.pool_idle)
        .tcp_nodelay(true)
        .local_address(options.local_address);
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured((*tls).clone()).https_only(true);
    }
    builder.build().map_err(|e| format!("peer HTTP client: {e}"))
}

fn register(registry: &Registry) -> prometheus::Result<TransportMetrics> {
    let requests = IntCounterVec::new(
        Opts::new("kv_peer_requests_total", "Requests to peers by kind and outcome"),
        &["request", "outcome"],
    )?;
    let bytes = IntCounterVec::new(
        Opts::new("kv_peer_bytes_total", "Request and answer body bytes exchanged with peers"),
        &["request", "direction"],
    )?;
    let batch_seconds = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new(
            "kv_peer_batch_duration_seconds",
            "Time of answered replica batches by peer address: a slow replica shows in its coordinators' series",
        )
        .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 14)?),
        &["peer"],
    )?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(bytes.clone()))?;
    registry.register(Box::new(batch_seconds.clone()))?;
    let kinds = KINDS.iter().map(|name| kind_metrics(&requests, &bytes, name)).collect();
    Ok(TransportMetrics { requests, bytes, kinds, batch_seconds })
}

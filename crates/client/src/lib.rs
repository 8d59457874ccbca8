//! # An async client for the store's HTTP API
//!
//! [`Client`] speaks the client API of `kvgateway`s and `kvnode`s: `PUT`, `GET` and `DELETE`
//! on `/kv/{key}` with the `X-Context` causal token. Reads come back as a [`Read`]: one value,
//! siblings to reconcile, or nothing. To resolve siblings, write the value you want with the
//! context of the read that returned them ([`Client::resolve`] does it with a merge function).
//!
//! ```no_run
//! # async fn example() -> Result<(), kv_client::Error> {
//! let client = kv_client::Client::builder(["http://127.0.0.1:8080"]).build()?;
//! client.put("greeting", "hello", "text/plain", None).await?;
//! match client.get("greeting").await? {
//!     kv_client::Read::Value { value, .. } => assert_eq!(value, "hello"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! - **Endpoints and failover**: several gateways or nodes; the first that answers is used
//!   until it fails, then the next ([`ClientBuilder`]).
//! - **Retries**: a failed attempt (no connection, a timeout, a `503`) moves to the next
//!   endpoint at once; once every endpoint failed in a round, the client waits for the server's
//!   `Retry-After` (or an exponential backoff) before the next. A retried write is a new write:
//!   when both attempts were applied a read shows siblings (docs/api.md).
//! - **Security**: a client token ([`ClientBuilder::token`]) and the cluster's CA for `https://`
//!   endpoints ([`ClientBuilder::ca_pem`]).
//! - [`blocking::Client`]: the same calls for programs without an async runtime.
//!
//! # Layout
//! - this file: [`Client`], [`ClientBuilder`], [`Read`], [`Sibling`], [`Error`];
//! - [`blocking`]: the blocking wrapper.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;

pub mod blocking;

/// Header carrying the causal context token.
pub const CONTEXT_HEADER: &str = "x-context";

/// Longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint could be reached, or the connection failed. May succeed if retried.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong, at its root (`connection refused`, `timed out`).
        reason: String,
    },
    /// The server answered with an error (`{"error": code, "message": ...}`).
    #[error("server answered {status}: {code}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Machine-readable error code.
        code: String,
        /// Human-readable message.
        message: String,
    },
    /// The answer did not follow the API, or the client was set up wrong.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether retrying the same call may succeed (network trouble, 503).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Server { status, .. } => *status == 503,
            Error::Protocol(_) => false,
        }
    }

    /// A transport failure calling `url`, said once: the root cause of `e`, not the chain of
    /// wrappers each repeating the one below.
    pub fn transport(url: &str, e: &(dyn std::error::Error + 'static)) -> Error {
        let mut root = e;
        while let Some(next) = root.source() {
            root = next;
        }
        Error::Transport { url: url.to_owned(), reason: root.to_string() }
    }

    /// The error a server's answer of `status` says: its JSON body (`{"error", "message"}`), or
    /// the start of its text.
    pub fn from_answer(status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(body) => Error::Server { status, code: body.error, message: body.message },
            Err(_) => Error::Server {
                status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(body).chars().take(200).collect(),
            },
        }
    }
}

/// One of several concurrent versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The value bytes.
    pub value: Bytes,
    /// Its Content-Type.
    pub content_type: String,
    /// Whether this sibling is a delete.
    pub deleted: bool,
    /// When its version was written (ms since the epoch, by the coordinating node's clock; 0
    /// from a server that does not say): a hint for a resolver, not an order.
    pub written_at_ms: u64,
}

/// The outcome of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Exactly one live version.
    Value {
        /// The value bytes.
        value: Bytes,
        /// Its Content-Type.
        content_type: String,
        /// Context token to send with a write that replaces it.
        context: String,
    },
    /// Concurrent versions: write one value back with `context` to resolve them.
    Siblings {
        /// Context token covering every sibling.
        context: String,
        /// The versions.
        siblings: Vec<Sibling>,
    },
    /// Never written, or deleted (`context` covers the tombstones, if any).
    NotFound {
        /// Context token, when the key has tombstones.
        context: Option<String>,
    },
}

/// What a merge function of [`Client::resolve`] decides for a key's siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Write this value (with this Content-Type) over every sibling.
    Keep(Bytes, String),
    /// Delete the key.
    Delete,
}

/// A ready merge function: keeps the sibling written last by its `written_at_ms` (a delete if
/// that one is a delete). The times come from the coordinating nodes' clocks, which may differ
/// by up to the cluster's `--max-clock-offset`: two writes closer than that may be kept in
/// either order.
pub fn newest_wins(siblings: &[Sibling]) -> Resolution {
    match siblings.iter().max_by_key(|s| (s.written_at_ms, !s.deleted)) {
        Some(s) if !s.deleted => Resolution::Keep(s.value.clone(), s.content_type.clone()),
        _ => Resolution::Delete,
    }
}

#[derive(Deserialize)]
struct SiblingsBody {
    context: String,
    siblings: Vec<SiblingBody>,
}

#[derive(Deserialize)]
struct SiblingBody {
    value: String,
    content_type: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    written_at: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

/// How a [`Client`] is made: [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    r: Option<String>,
    w: Option<String>,
}

impl ClientBuilder {
    /// Sends `token` as `Authorization: Bearer` (a cluster with client tokens on).
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Trusts the CA certificates of this PEM text for `https://` endpoints (the cluster's CA).
    pub fn ca_pem(mut self, pem: Option<Vec<u8>>) -> Self {
        self.ca_pem = pem;
        self
    }

    /// Time allowed for each attempt [default: 10 s]; a connection must open within 2 s (or
    /// this, if shorter).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts after a failed one [default: 3].
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The first wait between two rounds over every endpoint when the server gave no
    /// `Retry-After`, doubled each round up to 2 s [default: 100 ms].
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Quorums for every call: `r` for reads, `w` for writes (`1..=N`, `one`, `quorum`, `all`;
    /// `None` for the cluster's default).
    pub fn quorum(mut self, r: Option<String>, w: Option<String>) -> Self {
        self.r = r;
        self.w = w;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        if self.endpoints.is_empty()
            || !self.endpoints.iter().all(|e| e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(Error::Protocol(format!(
                "endpoints are http(s)://host:port URLs of gateways or nodes, got {:?}",
                self.endpoints
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject as _;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| Error::Protocol(format!("the CA is not PEM certificates: {e}")))?;
                    roots.add(cert).map_err(|e| Error::Protocol(format!("the CA certificate: {e}")))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(self.connect_timeout.min(self.timeout)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let token = match &self.token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| Error::Protocol("a token is visible ASCII".into()))?,
            ),
            None => None,
        };
        Ok(Client { http, token, current: AtomicUsize::new(0), retried: AtomicUsize::new(0), options: self })
    }
}

/// The HTTP client inside: hyper's, over TCP or TLS.
type Http = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of a cluster: cheap to share (`Arc`) across tasks; connections are kept alive.
#[derive(Debug)]
pub struct Client {
    http: Http,
    /// `Authorization: Bearer TOKEN`, if a token was given.
    token: Option<HeaderValue>,
    options: ClientBuilder,
    /// The endpoint in use (an index into the endpoints).
    current: AtomicUsize,
    /// Attempts made after a failed one, over the client's life.
    retried: AtomicUsize,
}

/// An answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    fn error(&self) -> Error {
        Error::from_answer(self.status.as_u16(), &self.body)
    }
}

/// One request, before it is sent to an endpoint.
struct Request {
    method: Method,
    /// `/kv/<key>?...`.
    path: String,
    content_type: Option<String>,
    context: Option<String>,
    body: Bytes,
}

impl Client {
    /// A builder for a client of `endpoints` (`http://host:port` or `https://`, gateways or
    /// nodes).
    pub fn builder<I: IntoIterator<Item = S>, S: AsRef<str>>(endpoints: I) -> ClientBuilder {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(|e| e.as_ref().trim_end_matches('/').to_owned()).collect(),
            token: None,
            ca_pem: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            r: None,
            w: None,
        }
    }

    /// Attempts made after a failed one, over this client's life.
    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::Relaxed)
    }

    /// The endpoint calls go to now.
    pub fn endpoint(&self) -> &str {
        let endpoints = &self.options.endpoints;
        &endpoints[self.current.load(Ordering::Relaxed) % endpoints.len()]
    }

    /// Stores `value`; with `context` (from a read) it replaces exactly what that read saw,
    /// without it is kept beside versions it did not see. Returns the new version's context,
    /// or `None` when the write left siblings (read, then write with the read's context).
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        context: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let request = Request {
            method: Method::PUT,
            path: key_path(key, "w", self.options.w.as_deref()),
            content_type: Some(content_type.to_owned()),
            context: context.map(str::to_owned),
            body: value.into(),
        };
        let answer = self.send(&request).await?;
        if answer.status != StatusCode::NO_CONTENT {
            return Err(answer.error());
        }
        Ok(if answer.headers.contains_key("x-siblings") { None } else { answer.header(CONTEXT_HEADER) })
    }

    /// Reads `key`.
    pub async fn get(&self, key: &str) -> Result<Read, Error> {
        let request = Request {
            method: Method::GET,
            path: key_path(key, "r", self.options.r.as_deref()),
            content_type: None,
            context: None,
            body: Bytes::new(),
        };
        let answer = self.send(&request).await?;
        let context = answer.header(CONTEXT_HEADER);
        match answer.status {
            StatusCode::OK => {
                let content_type = answer.header("content-type").unwrap_or_default();
                Ok(Read::Value { value: answer.body, content_type, context: context.unwrap_or_default() })
            }
            StatusCode::MULTIPLE_CHOICES => {
                let body: SiblingsBody =
                    serde_json::from_slice(&answer.body).map_err(|e| Error::Protocol(format!("siblings body: {e}")))?;
                let mut siblings = Vec::with_capacity(body.siblings.len());
                for s in body.siblings {
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(&s.value)
                        .map_err(|e| Error::Protocol(format!("sibling value is not base64: {e}")))?;
                    siblings.push(Sibling {
                        value: value.into(),
                        content_type: s.content_type,
                        deleted: s.deleted,
                        written_at_ms: s.written_at,
                    });
                }
                Ok(Read::Siblings { context: body.context, siblings })
            }
            StatusCode::NOT_FOUND => match answer.error() {
                Error::Server { code, .. } if code == "not_found" => Ok(Read::NotFound { context }),
                other => Err(other),
            },
            _ => Err(answer.error()),
        }
    }

    /// Deletes `key`: with `context`, exactly what that read saw; without, every version the
    /// coordinating node finds.
    pub async fn delete(&self, key: &str, context: Option<&str>) -> Result<(), Error> {
        let request = Request {
            method: Method::DELETE,
            path: key_path(key, "w", self.options.w.as_deref()),
            content_type: None,
            context: context.map(str::to_owned),
            body: Bytes::new(),
        };
        let answer = self.send(&request).await?;
        if answer.status != StatusCode::NO_CONTENT {
            return Err(answer.error());
        }
        Ok(())
    }

    /// Reads `key` and, when it has siblings, writes `merge(siblings)` with the read's context
    /// (again, up to 5 times, if new siblings appeared meanwhile). Returns the key's read after
    /// it. [`newest_wins`] is a ready merge function.
    pub async fn resolve(&self, key: &str, merge: impl Fn(&[Sibling]) -> Resolution) -> Result<Read, Error> {
        for _ in 0..5 {
            let (context, siblings) = match self.get(key).await? {
                Read::Siblings { context, siblings } => (context, siblings),
                other => return Ok(other),
            };
            match merge(&siblings) {
                Resolution::Delete => {
                    self.delete(key, Some(&context)).await?;
                    return Ok(Read::NotFound { context: None });
                }
                Resolution::Keep(value, content_type) => {
                    if let Some(context) = self.put(key, value.clone(), &content_type, Some(&context)).await? {
                        return Ok(Read::Value { value, content_type, context });
                    }
                }
            }
        }
        Err(Error::Protocol(format!("{key:?}: new siblings kept appearing over 5 resolutions")))
    }

    /// Sends `request` to the endpoint in use, failing over and retrying as the builder says.
    /// Returns the first answer that is not a `502`/`503`/`504`, or the last failure.
    async fn send(&self, request: &Request) -> Result<Answer, Error> {
        let endpoints = &self.options.endpoints;
        let (mut attempt, mut in_round, mut round) = (0u32, 0usize, 0u32);
        loop {
            let url = format!("{}{}", self.endpoint(), request.path);
            let (failure, asked) = match self.attempt(&url, request).await {
                Ok(answer) if !matches!(answer.status.as_u16(), 502..=504) => return Ok(answer),
                Ok(answer) => {
                    let asked = answer
                        .header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                    (answer.error(), asked)
                }
                Err(e) => (e, None),
            };
            if attempt >= self.options.retries {
                return Err(failure);
            }
            attempt += 1;
            self.retried.fetch_add(1, Ordering::Relaxed);
            self.current.fetch_add(1, Ordering::Relaxed);
            in_round += 1;
            if in_round < endpoints.len() {
                continue;
            }
            in_round = 0;
            round += 1;
            let backoff = self.options.backoff.saturating_mul(1 << (round - 1).min(16)).min(self.options.max_backoff);
            tokio::time::sleep(asked.unwrap_or(backoff)).await;
        }
    }

    /// One attempt at `url`, its answer read whole within the timeout.
    async fn attempt(&self, url: &str, request: &Request) -> Result<Answer, Error> {
        let mut builder = hyper::Request::builder().method(request.method.clone()).uri(url);
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, token.clone());
        }
        if let Some(content_type) = &request.content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(context) = &request.context {
            builder = builder.header(CONTEXT_HEADER, context);
        }
        let call = builder
            .body(Full::new(request.body.clone()))
            .map_err(|e| Error::Protocol(format!("a request to {url}: {e}")))?;
        let exchange = async {
            let response = self.http.request(call).await.map_err(|e| Error::transport(url, &e))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| Error::transport(url, &e))?.to_bytes();
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout(self.options.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Transport { url: url.to_owned(), reason: "timed out".into() }),
        }
    }
}

/// `/kv/<key>`, the key percent-encoded (a `/` in a key is `%2F`), with `name=value` if given.
fn key_path(key: &str, name: &str, value: Option<&str>) -> String {
    let mut path = format!("/kv/{}", encode_key(key));
    if let Some(value) = value {
        path.push_str(&format!("?{name}={}", encode_key(value)));
    }
    path
}

/// Every byte of `key` outside RFC 3986's unreserved set percent-encoded, so that any UTF-8
/// key (slashes, spaces, `?`) is one path segment.
pub fn encode_key(key: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(key, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_segment() {
        assert_eq!(encode_key("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
        assert_eq!(encode_key("plain-key_1.~"), "plain-key_1.~");
        assert_eq!(key_path("k", "w", Some("all")), "/kv/k?w=all");
    }

    #[test]
    fn newest_wins_keeps_the_last_write_or_deletes() {
        let sibling = |value: &'static str, at, deleted| Sibling {
            value: Bytes::from_static(value.as_bytes()),
            content_type: "text/plain".into(),
            deleted,
            written_at_ms: at,
        };
        let kept = newest_wins(&[sibling("old", 1, false), sibling("new", 2, false)]);
        assert_eq!(kept, Resolution::Keep(Bytes::from_static(b"new"), "text/plain".into()));
        assert_eq!(newest_wins(&[sibling("old", 1, false), sibling("", 2, true)]), Resolution::Delete);
    }

    #[test]
    fn a_client_needs_http_endpoints() {
        assert!(Client::builder(["127.0.0.1:8080"]).build().is_err());
        assert!(Client::builder(Vec::<String>::new()).build().is_err());
        assert!(Client::builder(["http://127.0.0.1:8080"]).build().is_ok());
    }
}

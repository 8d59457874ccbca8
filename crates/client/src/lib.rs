//! # A typed client for the store's HTTP API
//!
//! [`Client`] speaks the client API of a `kvgateway` or any `kvnode`: `PUT`,
//! `GET` and `DELETE` on `/kv/{key}` with the `X-Context` causal token. Reads come back as a
//! [`Read`]: one value, siblings to reconcile, or nothing. To resolve siblings, write the value
//! you want with the context of the read that returned them.
//!
//! The client is blocking (reqwest's blocking client) because its users, `kvctl` and tests, are
//! sequential; it keeps connections alive between calls.
//!
//! Security (docs/security.md): [`Client::with_token`] sends a client token
//! (`Authorization: Bearer`), [`Client::with_secrets`] signs admin requests (`/admin/*`) with
//! the cluster secret for the node at the admin URL (its id, which `GET /health/live` tells),
//! and [`ClientOptions::ca`] trusts a CA for `https://` URLs.
//!
//! # Layout
//! - [`Client`], [`Read`], [`Sibling`] and [`Error`] are all in this file.

use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde::Deserialize;

/// Header carrying the causal context token.
pub const CONTEXT_HEADER: &str = "x-context";

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached, or the connection failed. May succeed if retried.
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
    /// The answer did not follow the API.
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
}

/// One of several concurrent versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The value bytes.
    pub value: Vec<u8>,
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
        value: Vec<u8>,
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

impl Error {
    /// A transport failure calling `url`, said once: the root cause of `e`, not the chain of
    /// wrappers each repeating the one below.
    fn transport(url: &str, e: reqwest::Error) -> Error {
        let reason = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            let mut root: &dyn std::error::Error = &e;
            while let Some(next) = root.source() {
                root = next;
            }
            root.to_string()
        };
        Error::Transport { url: url.to_owned(), reason }
    }
}

/// A client for one base URL (a node or a gateway), and its admin URL for the cluster commands.
pub struct Client {
    base: String,
    admin: String,
    http: reqwest::blocking::Client,
    r: Option<String>,
    w: Option<String>,
    token: Option<String>,
    signer: Option<kv_transport::Signer>,
    /// An admin token (`--admin-tokens-file` of the processes), sent instead of a signature.
    admin_token: Option<String>,
    /// The id of the process at the admin URL, once asked.
    admin_id: std::sync::OnceLock<String>,
}

/// How a [`Client`] connects.
#[derive(Debug, Default, Clone)]
pub struct ClientOptions {
    /// PEM file of a CA to trust for `https://` URLs (the cluster's own CA).
    pub ca: Option<std::path::PathBuf>,
}

impl Client {
    /// A client for the client API at `base_url` (e.g. `http://127.0.0.1:8080`) with a per-call
    /// `timeout`; the cluster commands go to the same URL until [`Client::with_admin`].
    pub fn new(base_url: &str, timeout: Duration) -> Result<Client, Error> {
        Client::with_options(base_url, timeout, &ClientOptions::default())
    }

    /// [`Client::new`] with connection options.
    pub fn with_options(base_url: &str, timeout: Duration, options: &ClientOptions) -> Result<Client, Error> {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(ca) = &options.ca {
            let pem = std::fs::read(ca).map_err(|e| Error::Protocol(format!("cannot read {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Protocol(format!("{}: not PEM certificates: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| Error::transport(base_url, e))?;
        let base = base_url.trim_end_matches('/').to_owned();
        Ok(Client {
            admin: base.clone(),
            base,
            http,
            r: None,
            w: None,
            token: None,
            signer: None,
            admin_token: None,
            admin_id: std::sync::OnceLock::new(),
        })
    }

    /// Sends `token` as `Authorization: Bearer` with every client API call.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// Signs admin requests with `secrets` (the cluster secret), as a cluster with
    /// authentication requires.
    pub fn with_secrets(mut self, secrets: Option<&kv_transport::Secrets>) -> Client {
        self.signer = secrets.map(kv_transport::Signer::new);
        self
    }

    /// Sends `token` as `Authorization: Bearer` with every admin request instead of signing it
    /// (an admin token of the processes' `--admin-tokens-file`); a signer, if also given, wins.
    pub fn with_admin_token(mut self, token: Option<String>) -> Client {
        self.admin_token = token;
        self
    }

    /// Sends the cluster commands (members, ring, leave, remove) to the admin listener at
    /// `admin_url` (e.g. `http://127.0.0.1:8081`).
    pub fn with_admin(mut self, admin_url: &str) -> Client {
        self.admin = admin_url.trim_end_matches('/').to_owned();
        self
    }

    /// Per-request quorums for every later call: `r` for reads, `w` for writes (`1..=N`, `one`,
    /// `quorum` or `all`; `None` for the cluster default).
    pub fn with_quorum(mut self, r: Option<String>, w: Option<String>) -> Client {
        self.r = r;
        self.w = w;
        self
    }

    fn with_param(url: String, name: &str, value: &Option<String>) -> String {
        match value {
            Some(v) => format!("{url}?{name}={}", encode_key(v)),
            None => url,
        }
    }

    /// `GET /cluster/members` as JSON.
    pub fn members(&self) -> Result<serde_json::Value, Error> {
        self.json(&format!("{}/cluster/members", self.admin))
    }

    /// `GET /cluster/ring` as JSON.
    pub fn ring(&self) -> Result<serde_json::Value, Error> {
        self.json(&format!("{}/cluster/ring", self.admin))
    }

    /// `POST /admin/leave` on the node at the admin URL: it hands off its ranges and exits.
    pub fn leave(&self) -> Result<serde_json::Value, Error> {
        let response = expect_status(self.admin_call("POST", "/admin/leave")?, StatusCode::ACCEPTED)?;
        response.json().map_err(|e| Error::Protocol(e.to_string()))
    }

    /// `POST /admin/repair` on the node at the admin URL: an anti-entropy round now; its report
    /// (or `{"status": "running"}` if it takes longer than the node waits).
    pub fn repair(&self) -> Result<serde_json::Value, Error> {
        let response = self.admin_call("POST", "/admin/repair")?;
        let response =
            if response.status() == StatusCode::ACCEPTED { response } else { expect_status(response, StatusCode::OK)? };
        response.json().map_err(|e| Error::Protocol(e.to_string()))
    }

    /// `POST /admin/remove/{id}`: declare member `id` permanently failed (`force` even if it is
    /// not down).
    pub fn remove(&self, id: &str, force: bool) -> Result<serde_json::Value, Error> {
        let mut path = format!("/admin/remove/{}", encode_key(id));
        if force {
            path.push_str("?force=true");
        }
        let response = expect_status(self.admin_call("POST", &path)?, StatusCode::OK)?;
        response.json().map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Any admin request (`GET` or `POST` on a path under `/admin/`, with its query), signed
    /// when the client has the cluster secret; the answer as JSON on success.
    pub fn admin(&self, method: &str, path: &str) -> Result<serde_json::Value, Error> {
        let response = self.admin_call(method, path)?;
        if !response.status().is_success() {
            return Err(server_error(response));
        }
        response.json().map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Sends an admin request, signed for the process at the admin URL.
    fn admin_call(&self, method: &str, path: &str) -> Result<reqwest::blocking::Response, Error> {
        if !path.starts_with('/') {
            return Err(Error::Protocol(format!("an admin path starts with /, got {path:?}")));
        }
        let url = format!("{}{path}", self.admin);
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::Protocol(format!("not an HTTP method: {method:?}")))?;
        let mut request = self.http.request(method.clone(), &url);
        if let Some(signer) = &self.signer {
            let to = self.admin_id()?;
            request = request.header(kv_transport::SIGNATURE_HEADER, signer.sign(method.as_str(), path, &to, b""));
        } else if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        // Not `send`: the client token is for the client API, and would be taken for an admin
        // token here.
        request.send().map_err(|e| Error::transport(&url, e))
    }

    /// The id of the process at the admin URL (`GET /health/live`), which admin requests are
    /// signed for: a request captured on the way to one node cannot be replayed to another.
    fn admin_id(&self) -> Result<String, Error> {
        if let Some(id) = self.admin_id.get() {
            return Ok(id.clone());
        }
        let body = self.json(&format!("{}/health/live", self.admin))?;
        let id = body["id"].as_str().ok_or_else(|| Error::Protocol("/health/live names no id".into()))?.to_owned();
        Ok(self.admin_id.get_or_init(|| id).clone())
    }

    fn json(&self, url: &str) -> Result<serde_json::Value, Error> {
        let response = expect_status(self.send(url, self.http.get(url))?, StatusCode::OK)?;
        response.json().map_err(|e| Error::Protocol(e.to_string()))
    }

    /// The URL of `key`, percent-encoded.
    pub fn key_url(&self, key: &str) -> String {
        format!("{}/kv/{}", self.base, encode_key(key))
    }

    /// Stores `value`; with `context` it replaces exactly what that read saw. Returns the new
    /// version's context.
    pub fn put(&self, key: &str, value: Vec<u8>, content_type: &str, context: Option<&str>) -> Result<String, Error> {
        let url = Self::with_param(self.key_url(key), "w", &self.w);
        let mut request = self.http.put(&url).header("content-type", content_type).body(value);
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context);
        }
        let response = self.send(&url, request)?;
        expect_status(response, StatusCode::NO_CONTENT).map(|r| header(&r, CONTEXT_HEADER).unwrap_or_default())
    }

    /// Reads `key`.
    pub fn get(&self, key: &str) -> Result<Read, Error> {
        let url = Self::with_param(self.key_url(key), "r", &self.r);
        let response = self.send(&url, self.http.get(&url))?;
        let context = header(&response, CONTEXT_HEADER);
        match response.status() {
            StatusCode::OK => {
                let content_type = header(&response, "content-type").unwrap_or_default();
                let value = response.bytes().map_err(|e| Error::transport(&url, e))?.to_vec();
                Ok(Read::Value { value, content_type, context: context.unwrap_or_default() })
            }
            StatusCode::MULTIPLE_CHOICES => {
                let body: SiblingsBody = response.json().map_err(|e| Error::Protocol(format!("siblings body: {e}")))?;
                let mut siblings = Vec::with_capacity(body.siblings.len());
                for s in body.siblings {
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(&s.value)
                        .map_err(|e| Error::Protocol(format!("sibling value is not base64: {e}")))?;
                    siblings.push(Sibling {
                        value,
                        content_type: s.content_type,
                        deleted: s.deleted,
                        written_at_ms: s.written_at,
                    });
                }
                Ok(Read::Siblings { context: body.context, siblings })
            }
            StatusCode::NOT_FOUND => {
                let status = response.status();
                let body: ErrorBody = response.json().map_err(|e| Error::Protocol(format!("404 body: {e}")))?;
                if body.error == "not_found" {
                    Ok(Read::NotFound { context })
                } else {
                    Err(Error::Server { status: status.as_u16(), code: body.error, message: body.message })
                }
            }
            _ => Err(server_error(response)),
        }
    }

    /// Deletes `key`: with `context`, exactly what that read saw; without, whatever the
    /// coordinating node holds.
    pub fn delete(&self, key: &str, context: Option<&str>) -> Result<(), Error> {
        let url = Self::with_param(self.key_url(key), "w", &self.w);
        let mut request = self.http.delete(&url);
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context);
        }
        let response = self.send(&url, request)?;
        expect_status(response, StatusCode::NO_CONTENT).map(drop)
    }

    fn send(
        &self,
        url: &str,
        mut request: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, Error> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().map_err(|e| Error::transport(url, e))
    }
}

fn header(response: &reqwest::blocking::Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn expect_status(
    response: reqwest::blocking::Response,
    expected: StatusCode,
) -> Result<reqwest::blocking::Response, Error> {
    if response.status() == expected {
        Ok(response)
    } else {
        Err(server_error(response))
    }
}

fn server_error(response: reqwest::blocking::Response) -> Error {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => Error::Server { status, code: body.error, message: body.message },
        Err(_) => Error::Server { status, code: "unknown".into(), message: text.chars().take(200).collect() },
    }
}

/// Percent-encodes every byte of `key` outside RFC 3986's unreserved set, so any UTF-8 key
/// (slashes, spaces, `?`) is one path segment.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_segment() {
        assert_eq!(encode_key("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
        assert_eq!(encode_key("plain-key_1.~"), "plain-key_1.~");
    }
}

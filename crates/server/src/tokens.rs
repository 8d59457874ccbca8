//! [`ClientTokens`]: optional bearer tokens on the client API (read-only or read-write), and
//! the same for people on the admin API (read-only or admin).
//!
//! The file (`--client-tokens-file`) holds one token per line: `read TOKEN [name]` or
//! `write TOKEN [name]`; blank lines and `#` comments are skipped. The admin file
//! (`--admin-tokens-file`, [`TokenFile::Admin`]) takes `read TOKEN [name]` or
//! `admin TOKEN [name]`, and is checked by [`admin_bearer`] beside signed requests. A token is 16 to 256 visible
//! ASCII characters. Only SHA-256 digests of the tokens are kept in memory, and a request's
//! token is looked up by its digest, so the lookup reveals nothing about stored tokens. With
//! tokens on, a client request without a valid `Authorization: Bearer TOKEN` is `401`, and a
//! `PUT` or `DELETE` with a read token is `403`. The set is replaced whole on reload (SIGHUP):
//! a bad file keeps the old set and says why in the log.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::RwLock;
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest as _, Sha256};

use crate::http::json_error;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `GET` only.
    Read,
    /// Everything on the client API.
    Write,
    /// Everything on the admin API.
    Admin,
}

/// Which file a token set comes from: the roles its lines may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFile {
    /// `--client-tokens-file`: `read` or `write`.
    Client,
    /// `--admin-tokens-file`: `read` or `admin`.
    Admin,
}

impl TokenFile {
    fn role(self, word: &str) -> Option<Role> {
        match (self, word) {
            (_, "read") => Some(Role::Read),
            (TokenFile::Client, "write") => Some(Role::Write),
            (TokenFile::Admin, "admin") => Some(Role::Admin),
            _ => None,
        }
    }

    fn roles(self) -> &'static str {
        match self {
            TokenFile::Client => "`read` or `write`",
            TokenFile::Admin => "`read` or `admin`",
        }
    }
}

/// Shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 256;

type Table = HashMap<[u8; 32], (Role, String)>;

/// Bearer tokens (the client tokens, or the admin tokens), reloadable.
pub struct ClientTokens {
    table: RwLock<Arc<Table>>,
    file: TokenFile,
}

impl std::fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTokens({} tokens)", self.table.read().len())
    }
}

impl ClientTokens {
    /// Client tokens from a file's text; errors name the line, never the token.
    pub fn parse(text: &str) -> Result<ClientTokens, String> {
        ClientTokens::parse_as(TokenFile::Client, text)
    }

    /// Tokens of the kind `file` from a file's text; errors name the line, never the token.
    pub fn parse_as(file: TokenFile, text: &str) -> Result<ClientTokens, String> {
        Ok(ClientTokens { table: RwLock::new(Arc::new(parse_table(file, text)?)), file })
    }

    /// Client tokens from a file.
    pub fn from_file(path: &Path) -> Result<ClientTokens, String> {
        ClientTokens::read(TokenFile::Client, path)
    }

    /// Tokens of the kind `file` from the file at `path`.
    pub fn read(file: TokenFile, path: &Path) -> Result<ClientTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ClientTokens::parse_as(file, &text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Replaces the tokens with those of `path`; on error keeps the current ones. Returns how
    /// many tokens are now in force.
    pub fn reload(&self, path: &Path) -> Result<usize, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table = parse_table(self.file, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        let count = table.len();
        *self.table.write() = Arc::new(table);
        Ok(count)
    }

    /// The role of `token`, if it is one.
    pub fn role(&self, token: &str) -> Option<Role> {
        self.holder(token).map(|(role, _)| role)
    }

    /// The role of `token` and the name its line gives, if it is one.
    pub fn holder(&self, token: &str) -> Option<(Role, String)> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.table.read().get(&digest).cloned()
    }
}

fn parse_table(file: TokenFile, text: &str) -> Result<Table, String> {
    let mut table = Table::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut words = line.split_whitespace();
        let Some(role) = words.next().and_then(|word| file.role(word)) else {
            return Err(format!("line {n}: must start with {}", file.roles()));
        };
        let token = words.next().ok_or_else(|| format!("line {n}: no token after the role"))?;
        if token.len() < MIN_TOKEN_BYTES
            || token.len() > MAX_TOKEN_BYTES
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "line {n}: a token must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} visible ASCII characters"
            ));
        }
        let name = words.collect::<Vec<_>>().join(" ");
        if table.insert(Sha256::digest(token.as_bytes()).into(), (role, name)).is_some() {
            return Err(format!("line {n}: the same token appears twice"));
        }
    }
    Ok(table)
}

/// What [`client_auth`] needs.
#[derive(Clone)]
pub struct ClientAuth {
    /// The tokens.
    pub tokens: Arc<ClientTokens>,
    /// `kv_client_auth_failures_total{reason}`.
    pub failures: IntCounterVec,
}

impl ClientAuth {
    /// Client authentication with `tokens`, its counter registered in `registry`.
    pub fn new(tokens: Arc<ClientTokens>, registry: &Registry) -> prometheus::Result<ClientAuth> {
        let failures = IntCounterVec::new(
            Opts::new(
                "kv_client_auth_failures_total",
                "Client requests refused by reason (missing, invalid, read_only)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        Ok(ClientAuth { tokens, failures })
    }
}

/// Checks a request's `Authorization` against the tokens: `Ok` or the `401`/`403` to answer
/// (counted by reason).
fn check(auth: &ClientAuth, method: &Method, headers: &axum::http::HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = bearer(headers) else {
        auth.failures.with_label_values(&["missing"]).inc();
        return Err(Box::new(unauthorized("this API needs `Authorization: Bearer TOKEN`")));
    };
    match auth.tokens.role(token) {
        None => {
            auth.failures.with_label_values(&["invalid"]).inc();
            Err(Box::new(unauthorized("unknown token")))
        }
        Some(Role::Read) if !matches!(*method, Method::GET | Method::HEAD) => {
            auth.failures.with_label_values(&["read_only"]).inc();
            Err(Box::new(json_error(StatusCode::FORBIDDEN, "forbidden", "this token may only read")))
        }
        Some(_) => Ok(()),
    }
}

/// Middleware: refuses a request without a valid token (`401`), and a write with a read token
/// (`403`). The listener's guard runs the same check on the head before it reads the body
/// ([`protect`]'s precheck); this one covers a router called without the guard.
pub async fn client_auth(State(auth): State<ClientAuth>, request: Request, next: Next) -> Response {
    match check(&auth, request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    }
}

/// With client tokens on: `router` behind [`client_auth`], and the same check as a precheck of
/// the head for the listener's guard ([`crate::http::ListenerOptions::precheck`]), so that a
/// request without a valid token is refused before a byte of its body is read or counted
/// against the listener's budget (an unauthenticated client cannot fill it). Without tokens:
/// `router` as it is, and no precheck.
pub fn protect(
    router: axum::Router,
    security: &crate::security::SecurityConfig,
    registry: &Registry,
) -> prometheus::Result<(axum::Router, Option<crate::http::Precheck>)> {
    Ok(match &security.client_tokens {
        Some((_, tokens)) => {
            let auth = ClientAuth::new(tokens.clone(), registry)?;
            let head = auth.clone();
            let precheck: crate::http::Precheck = std::sync::Arc::new(move |parts: &mut axum::http::request::Parts| {
                check(&head, &parts.method, &parts.headers)
            });
            (router.layer(axum::middleware::from_fn_with_state(auth, client_auth)), Some(precheck))
        }
        None => (router, None),
    })
}

/// The token of an `Authorization: Bearer TOKEN` header, if the request has one.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// The admin listener's check of a request by a person (`--admin-tokens-file`), beside signed
/// requests: `None` for a request that carries no bearer token or carries a signature (it is
/// checked as signed), else whether its token admits it: any admin token for a `GET` or
/// `HEAD`, an `admin` token for anything else and for `/admin/backup/*` (a copy of every
/// record); `401` for an unknown token, `403` for those with a `read` token. Counted in `kv_auth_failures_total{listener="admin"}` by `metrics`.
pub fn admin_bearer(
    tokens: Arc<ClientTokens>,
    metrics: Option<kv_transport::AuthMetrics>,
) -> kv_transport::BearerCheck {
    Arc::new(move |method: &Method, path: &str, headers: &axum::http::HeaderMap| {
        if headers.contains_key(kv_transport::SIGNATURE_HEADER) {
            return None;
        }
        let token = bearer(headers)?;
        let refused = |reason: &str| {
            if let Some(metrics) = &metrics {
                metrics.refused("admin", reason);
            }
        };
        Some(match tokens.holder(token) {
            None => {
                refused("invalid_token");
                Err(Box::new(unauthorized("unknown admin token")))
            }
            Some((Role::Read, name))
                if !matches!(*method, Method::GET | Method::HEAD) || path.starts_with("/admin/backup/") =>
            {
                refused("read_only_token");
                tracing::info!(token = %name, %method, path, "refused a read-only admin token");
                Err(Box::new(json_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this admin token may only read (and not back up the cluster)",
                )))
            }
            Some((_, name)) => {
                tracing::debug!(token = %name, %method, "admin request by token");
                Ok(())
            }
        })
    })
}

fn unauthorized(message: &str) -> Response {
    let mut response = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_resolve_to_roles() {
        let tokens =
            ClientTokens::parse("# comment\nread  r-token-0123456789 dashboards\nwrite w-token-0123456789\n\n")
                .unwrap();
        assert_eq!(tokens.role("r-token-0123456789"), Some(Role::Read));
        assert_eq!(tokens.role("w-token-0123456789"), Some(Role::Write));
        assert_eq!(tokens.role("w-token-012345678"), None);
        assert!(ClientTokens::parse("admin x-token-0123456789").unwrap_err().contains("line 1"));
        assert!(ClientTokens::parse("read short").unwrap_err().contains("16 to 256"));
        assert!(ClientTokens::parse("read a-token-0123456789\nwrite a-token-0123456789")
            .unwrap_err()
            .contains("twice"));
        assert!(!ClientTokens::parse("read short").unwrap_err().contains("short"), "never shows a token");
    }

    #[test]
    fn admin_tokens_read_or_administer() {
        let admin =
            ClientTokens::parse_as(TokenFile::Admin, "read r-token-0123456789 grafana\nadmin a-token-0123456789 ops")
                .unwrap();
        assert_eq!(admin.holder("a-token-0123456789"), Some((Role::Admin, "ops".into())));
        assert!(ClientTokens::parse_as(TokenFile::Admin, "write w-token-0123456789")
            .unwrap_err()
            .contains("`read` or `admin`"));
        assert!(ClientTokens::parse("admin a-token-0123456789").is_err());
        let check = admin_bearer(Arc::new(admin), None);
        let headers = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        let status = |method: Method, value: &str| {
            check(&method, "/admin/workers", &headers(value)).map(|r| r.map_err(|response| response.status()))
        };
        assert_eq!(status(Method::GET, "Bearer r-token-0123456789"), Some(Ok(())));
        assert_eq!(status(Method::POST, "Bearer r-token-0123456789"), Some(Err(StatusCode::FORBIDDEN)));
        assert_eq!(status(Method::POST, "Bearer a-token-0123456789"), Some(Ok(())));
        assert_eq!(status(Method::GET, "Bearer x-token-0123456789"), Some(Err(StatusCode::UNAUTHORIZED)));
        assert!(check(&Method::GET, "/admin/workers", &axum::http::HeaderMap::new()).is_none());
        let backup = check(&Method::GET, "/admin/backup/scan", &headers("Bearer r-token-0123456789"));
        assert_eq!(backup.map(|r| r.map_err(|response| response.status())), Some(Err(StatusCode::FORBIDDEN)), "a dump");
        let mut signed = headers("Bearer x-token-0123456789");
        signed.insert(kv_transport::SIGNATURE_HEADER, HeaderValue::from_static("v7 ..."));
        assert!(check(&Method::GET, "/admin/workers", &signed).is_none(), "a signed request is checked as signed");
    }
}

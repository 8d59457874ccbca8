//! The server side of [`crate::Signer`]: one middleware in front of every peer route and every
//! `/admin/*` route.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::signer::{now_ms, AuthError, Signed, Verifier, SIGNATURE_HEADER};

/// Which requests must name this process as their destination (the signed `to` field): the
/// others are harmless when replayed to another member (reads, gossip).
pub type BoundCheck = fn(&Method, &str) -> bool;

/// What [`verify`] needs.
#[derive(Clone)]
pub struct VerifyState {
    /// Checks signatures.
    pub verifier: Arc<Verifier>,
    /// Bodies larger than this are refused `413` before they are read whole.
    pub body_limit: usize,
    /// The names a bound request may give as `to`: this node's advertised peer address and its
    /// id.
    pub names: Arc<Vec<String>>,
    /// Whether a request (method, path) is bound to its destination.
    pub bound: BoundCheck,
    /// `kv_auth_failures_total`, if exported.
    pub metrics: Option<AuthMetrics>,
    /// The listener's name, for the metric.
    pub listener: &'static str,
    /// Only paths starting with this are checked (`/` for the peer listener, `/admin/` for
    /// the admin listener, whose `/metrics`, `/health/*` and `/cluster/*` stay open).
    pub prefix: &'static str,
    /// Bearer tokens accepted instead of a signature (the admin listener's
    /// `--admin-tokens-file`, for people with curl), if any.
    pub bearer: Option<BearerCheck>,
}

/// A check of a request's head (method, path, headers) by bearer token, instead of its
/// signature: `None` when the request is to be checked as signed (it carries no token, or
/// carries a signature), else whether its token admits it (`Err`: the refusal to answer).
pub type BearerCheck =
    Arc<dyn Fn(&Method, &str, &axum::http::HeaderMap) -> Option<Result<(), Box<Response>>> + Send + Sync>;

/// In a request's extensions: its bearer token admitted it ([`VerifyState::bearer`]); it has
/// no signature, and no [`Signed`].
#[derive(Debug, Clone, Copy)]
pub struct BearerAdmitted;

/// Bound: requests that change something (every method but `GET`).
pub fn changes(method: &Method, _path: &str) -> bool {
    method != Method::GET
}

/// Bound: every request, reads included: the admin listeners' rule (an admin read returns data,
/// `/admin/local/KEY` a key's versions and a context, and a signed read captured on its way to
/// one node was answered by every other).
pub fn every(_method: &Method, _path: &str) -> bool {
    true
}

/// `router` with every request checked by [`verify`] under `state`.
pub fn guard(router: axum::Router, state: VerifyState) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(state, verify))
}

/// `kv_auth_failures_total{listener, reason}`: requests refused `401`.
#[derive(Clone)]
pub struct AuthMetrics {
    failures: IntCounterVec,
}

impl AuthMetrics {
    /// Creates and registers the counter.
    pub fn register(registry: &Registry) -> prometheus::Result<AuthMetrics> {
        let failures = IntCounterVec::new(
            Opts::new("kv_auth_failures_total", "Requests refused 401 by listener and reason"),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        Ok(AuthMetrics { failures })
    }

    /// Counts one refusal.
    pub fn refused(&self, listener: &str, reason: &str) {
        self.failures.with_label_values(&[listener, reason]).inc();
    }
}

/// Middleware: reads the whole body (up to the limit) and refuses the request `401` unless its
/// signature checks. A request whose head the listener's guard already authenticated
/// ([`precheck`]: the head's MAC, time, destination and replay window, before a byte of the
/// body was read) has only its body checked against the digest its head declared; any other
/// (a router called without the guard) is checked whole here ([`Verifier::verify`]). Handlers
/// behind it see the same body, and who signed it ([`crate::signer::Signed`] in the request's
/// extensions).
pub async fn verify(State(state): State<VerifyState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with(state.prefix) || request.extensions().get::<BearerAdmitted>().is_some() {
        return next.run(request).await;
    }
    if let Some(admitted) =
        state.bearer.as_ref().and_then(|check| check(request.method(), request.uri().path(), request.headers()))
    {
        return match admitted {
            Ok(()) => next.run(request).await,
            Err(refused) => *refused,
        };
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, state.body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large or cut short")
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let checked = match parts.extensions.get::<Signed>() {
        Some(signed) => Verifier::check_body(signed, &bytes),
        None => head_checked(&state, &parts, now_ms()).and_then(|signed| {
            Verifier::check_body(&signed, &bytes)?;
            parts.extensions.insert(signed);
            Ok(())
        }),
    };
    if let Err(e) = checked {
        return refused(&state, &path, e);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The head's whole check: MAC and time, then the destination, and only then is the signature
/// recorded as seen (a request meant for another member must not move this member's replay
/// window).
fn head_checked(state: &VerifyState, parts: &axum::http::request::Parts, now: u64) -> Result<Signed, AuthError> {
    let header = parts.headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let signed = state.verifier.check_head(header, parts.method.as_str(), path, now)?;
    if (state.bound)(&parts.method, parts.uri.path()) && !state.names.contains(&signed.to) {
        return Err(AuthError::new(
            "wrong_destination",
            format!("this request was signed for {:?}, not for this process", signed.to),
        ));
    }
    state.verifier.accept_once(&signed, now)?;
    Ok(signed)
}

/// The part of [`verify`] done on the head alone, before a byte of the body is read (the
/// listener's guard calls it): the signature's form, key, MAC over the head (the declared body
/// digest included), time, destination and replay window; `401` otherwise, counted and logged
/// like any refusal. A request that passes carries its [`Signed`] in its extensions, and only
/// its body's digest is left to check. Paths outside the state's prefix pass.
pub fn precheck(state: &VerifyState, parts: &mut axum::http::request::Parts) -> Result<(), Box<Response>> {
    let path = parts.uri.path();
    if !path.starts_with(state.prefix) {
        return Ok(());
    }
    if let Some(admitted) =
        state.bearer.as_ref().and_then(|check| check(&parts.method, parts.uri.path(), &parts.headers))
    {
        admitted?;
        parts.extensions.insert(BearerAdmitted);
        return Ok(());
    }
    match head_checked(state, parts, now_ms()) {
        Ok(signed) => {
            parts.extensions.insert(signed);
            Ok(())
        }
        Err(e) => Err(Box::new(refused(state, parts.uri.path(), e))),
    }
}

/// [`precheck`] under `state`, as a shareable function of the head.
pub type HeadCheck = Arc<dyn Fn(&mut axum::http::request::Parts) -> Result<(), Box<Response>> + Send + Sync>;

/// [`precheck`] bound to `state`.
pub fn precheck_fn(state: VerifyState) -> HeadCheck {
    Arc::new(move |parts: &mut axum::http::request::Parts| precheck(&state, parts))
}

/// A `401` for `e`, logged (at most every [`WARN_EVERY_MS`] as a warning) and counted.
fn refused(state: &VerifyState, path: &str, e: AuthError) -> Response {
    // At most one warning every WARN_EVERY_MS: a flood of bad requests must not flood the
    // log (the counter counts every one).
    let now = now_ms();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= WARN_EVERY_MS
        && LAST_WARNING.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(
            listener = state.listener, path, reason = e.reason, error = %e.message,
            "refused an unauthenticated request (further refusals for 10 s are only counted: kv_auth_failures_total)"
        );
    } else {
        tracing::debug!(listener = state.listener, path, reason = e.reason, "refused an unauthenticated request");
    }
    if let Some(metrics) = &state.metrics {
        metrics.refused(state.listener, e.reason);
    }
    if matches!(e.reason, "expired" | "before_start") {
        // Our clock, so that a member whose clock is off learns by how much (it measures its
        // offset from refusals too, and fences itself when most members disagree with it).
        let body = serde_json::json!({ "error": "unauthorized", "message": e.message, "now_ms": now });
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    refuse(StatusCode::UNAUTHORIZED, "unauthorized", &e.message)
}

/// Least time between two warnings about refused requests, ms.
const WARN_EVERY_MS: u64 = 10_000;

/// When a refusal was last logged as a warning (ms since the epoch), for the whole process.
static LAST_WARNING: AtomicU64 = AtomicU64::new(0);

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

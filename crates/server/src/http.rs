//! HTTP plumbing shared by every router: layers, request metrics, JSON error bodies.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::config::ServerConfig;

/// `kv_http_requests_total{listener, route, method, status}`,
/// `kv_http_request_duration_seconds{listener, route, method}` and
/// `kv_http_shed_total{listener}`.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    shed: IntCounterVec,
}

impl HttpMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<HttpMetrics> {
        let requests = IntCounterVec::new(
            Opts::new("kv_http_requests_total", "HTTP requests by listener, route template, method and status"),
            &["listener", "route", "method", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "kv_http_request_duration_seconds",
                "HTTP request latency by listener, route template and method",
            )
            .buckets(exponential_buckets(0.000_05, 2.0, 18)?),
            &["listener", "route", "method"],
        )?;
        let shed = IntCounterVec::new(
            Opts::new("kv_http_shed_total", "Requests refused 503 overloaded (--max-in-flight reached), by listener"),
            &["listener"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        Ok(HttpMetrics { requests, seconds, shed })
    }
}

/// Middleware: counts and times every request by route template (never by key).
async fn track(
    State((metrics, listener)): State<(HttpMetrics, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let labels = [listener, route.as_str(), method.as_str()];
    metrics.requests.with_label_values(&[listener, route.as_str(), method.as_str(), response.status().as_str()]).inc();
    metrics.seconds.with_label_values(&labels).observe(started.elapsed().as_secs_f64());
    response
}

/// The layers every router gets: request metrics (labelled with `listener`), tracing, the head
/// limits, the body's precheck and buffering under a budget ([`buffer_body`]), the concurrency
/// limit (beyond `--max-in-flight` requests at once, `503 overloaded` with `Retry-After` at
/// once: nothing queues without bound; paths in `options.unshed` are never refused), the
/// per-request deadline (`503` when it passes), and JSON fallbacks for unknown routes and
/// methods.
pub fn layered(
    router: Router,
    listener: &'static str,
    server: &ServerConfig,
    metrics: &HttpMetrics,
    options: ListenerOptions,
) -> Router {
    let limit = Shed {
        permits: Arc::new(Semaphore::new(server.max_in_flight.get())),
        unshed: options.unshed,
        shed: metrics.shed.with_label_values(&[listener]),
    };
    let bodies = Bodies {
        budget: Arc::new(Semaphore::new(server.max_buffered_kib)),
        max: options.body_max,
        too_large: options.too_large_code,
        precheck: options.precheck,
        limits: server.limits,
        shed: metrics.shed.with_label_values(&[listener]),
    };
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state((metrics.clone(), listener), track))
        .layer(
            ServiceBuilder::new()
                // 503s (quorum not met) are expected in a degraded cluster: log them at debug;
                // real server faults are logged where they happen.
                .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)))
                .layer(axum::middleware::from_fn_with_state(bodies, buffer_body))
                .layer(axum::middleware::from_fn_with_state(limit, shed))
                .layer(axum::middleware::from_fn_with_state(server.request_timeout, deadline)),
        )
}

/// A check of a request's head made before its body is read (the peer and admin listeners: the
/// signature's form, key and time); `Err` is the answer.
pub type Precheck = Arc<dyn Fn(&axum::http::request::Parts) -> Result<(), Box<Response>> + Send + Sync>;

/// What a listener's layers need to know besides the server settings.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Paths never shed by the concurrency limit (gossip).
    pub unshed: &'static [&'static str],
    /// Largest request body, bytes; larger is `413`.
    pub body_max: usize,
    /// The error code of that `413` (`value_too_large` on the client API).
    pub too_large_code: &'static str,
    /// Checked before the body is read.
    pub precheck: Option<Precheck>,
}

impl ListenerOptions {
    /// Bodies up to `body_max` bytes, nothing else special.
    pub fn bodies(body_max: usize) -> ListenerOptions {
        ListenerOptions { unshed: &[], body_max, too_large_code: "body_too_large", precheck: None }
    }
}

/// How long a request body may stall (no bytes) before the request is refused.
pub const BODY_STALL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone)]
struct Bodies {
    /// KiB of bodies being received or held, at most `--max-buffered-mb` per listener.
    budget: Arc<Semaphore>,
    max: usize,
    too_large: &'static str,
    precheck: Option<Precheck>,
    limits: crate::listen::ConnectionLimits,
    shed: prometheus::IntCounter,
}

/// Middleware: the head's limits ([`head_limits`]) and precheck, then the whole body read into memory (at most `body_max`
/// bytes; `413` past it), counted against the listener's budget of buffered bytes as it arrives
/// (`503 overloaded` when the budget is spent: bodies in memory are bounded, and a client must
/// send the bytes it holds budget for), refused `408` when it stalls for [`BODY_STALL`] or takes
/// longer than `--idle-timeout`. Only then is the request in progress on its connection
/// ([`crate::listen::Activity`]): a connection sending a slow or stalled request counts as idle,
/// and the connection cap may close it.
async fn buffer_body(State(bodies): State<Bodies>, request: Request, next: Next) -> Response {
    use http_body_util::BodyExt as _;
    let (parts, mut body) = request.into_parts();
    if let Some(response) = head_limits(&bodies.limits, &parts) {
        return response;
    }
    if let Some(precheck) = &bodies.precheck {
        if let Err(response) = precheck(&parts) {
            return *response;
        }
    }
    // No body (GET, DELETE): nothing to read or hold.
    if http_body::Body::is_end_stream(&body) {
        let busy = parts.extensions.get::<crate::listen::Activity>().map(crate::listen::Activity::busy);
        let response = next.run(Request::from_parts(parts, body)).await;
        drop(busy);
        return response;
    }
    let started = std::time::Instant::now();
    let mut bytes = Vec::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        let left = bodies.limits.idle_timeout.saturating_sub(started.elapsed()).min(BODY_STALL);
        let frame = match tokio::time::timeout(left, body.frame()).await {
            Err(_) => {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body stalled or came too slowly",
                )
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return json_error(StatusCode::BAD_REQUEST, "bad_request", "the request body was cut short")
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > bodies.max {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                bodies.too_large,
                &format!("request body over the limit of {} bytes", bodies.max),
            );
        }
        bytes.extend_from_slice(&data);
        // Budget in KiB, taken as the bytes arrive.
        let want = bytes.len().div_ceil(1024) as u32;
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
        if want > have {
            match bodies.budget.clone().try_acquire_many_owned(want - have) {
                Ok(more) => match held.as_mut() {
                    Some(permit) => permit.merge(more),
                    None => held = Some(more),
                },
                Err(_) => {
                    bodies.shed.inc();
                    let mut response = json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        OVERLOADED,
                        "too many request bodies in memory (--max-buffered-mb); retry after a moment",
                    );
                    response
                        .headers_mut()
                        .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
                    return response;
                }
            }
        }
    }
    let busy = parts.extensions.get::<crate::listen::Activity>().map(crate::listen::Activity::busy);
    let response = next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await;
    drop((busy, held));
    response
}

/// A request with more headers than `--max-headers`, or a head larger than
/// `--max-header-bytes`, is refused `431` with a JSON body. (hyper refuses heads over twice
/// these limits before any handler, with an empty `431`: see [`crate::listen`].)
fn head_limits(limits: &crate::listen::ConnectionLimits, parts: &axum::http::request::Parts) -> Option<Response> {
    let headers = &parts.headers;
    let uri = &parts.uri;
    let bytes = uri.path().len()
        + uri.query().map_or(0, str::len)
        + parts.method.as_str().len()
        + headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        return Some(json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "request head of {} headers and about {bytes} bytes; at most {} headers and {} bytes \
                 (--max-headers, --max-header-bytes)",
                headers.len(),
                limits.max_headers,
                limits.max_header_bytes
            ),
        ));
    }
    None
}

/// The concurrency limit of one listener.
#[derive(Clone)]
struct Shed {
    permits: Arc<Semaphore>,
    unshed: &'static [&'static str],
    shed: prometheus::IntCounter,
}

/// Middleware: a request beyond the limit is answered `503 overloaded` with `Retry-After` at
/// once, before anything acts on it (so a caller knows it was not applied). Its body is in
/// already ([`buffer_body`] comes first): a slow upload holds no slot of the limit.
async fn shed(State(limit): State<Shed>, request: Request, next: Next) -> Response {
    if limit.unshed.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(_permit) = limit.permits.clone().try_acquire_owned() else {
        limit.shed.inc();
        let mut response = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            OVERLOADED,
            "too many requests in progress (--max-in-flight); retry after a moment",
        );
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

/// The error code of a request shed by the concurrency limit: it was not acted on.
pub const OVERLOADED: &str = "overloaded";

/// Middleware: a request still running after `--request-timeout` is answered `503` (JSON, with
/// `Retry-After`), and its work dropped.
async fn deadline(State(timeout): State<std::time::Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the request exceeded --request-timeout; retry",
            );
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            response
        }
    }
}

/// A JSON error body: `{"error": code, "message": message}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

/// Fallback for unknown routes. Under `/kv/`, the likely cause is a key with an unencoded `/`
/// (`/kv/a/b`), and the message says so.
pub async fn no_route(uri: axum::http::Uri) -> Response {
    let message = if uri.path().starts_with("/kv/") {
        "no such endpoint: a key containing \"/\" must be percent-encoded, /kv/a%2Fb for the key \"a/b\""
    } else {
        "no such endpoint"
    };
    json_error(StatusCode::NOT_FOUND, "no_route", message)
}

/// Fallback for known routes with the wrong method.
pub async fn wrong_method() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
}

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

/// The layers every router gets: request metrics (labelled with `listener`), tracing, the
/// per-request deadline (`503` when it passes), the concurrency limit (beyond
/// `--max-in-flight` requests at once, `503 overloaded` with `Retry-After` at once: nothing
/// queues without bound; paths in `unshed` are never refused), and JSON fallbacks for unknown
/// routes and methods.
pub fn layered(
    router: Router,
    listener: &'static str,
    server: &ServerConfig,
    metrics: &HttpMetrics,
    unshed: &'static [&'static str],
) -> Router {
    let limit = Shed {
        permits: Arc::new(Semaphore::new(server.max_in_flight.get())),
        unshed,
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
                .layer(axum::middleware::from_fn_with_state(limit, shed))
                .layer(axum::middleware::from_fn_with_state(server.limits, head_limits))
                .layer(axum::middleware::from_fn_with_state(server.request_timeout, deadline)),
        )
}

/// Middleware: a request with more headers than `--max-headers`, or a head larger than
/// `--max-header-bytes`, is refused `431` with a JSON body. (hyper refuses heads over twice
/// these limits before any handler, with an empty `431`: see [`crate::listen`].)
async fn head_limits(State(limits): State<crate::listen::ConnectionLimits>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes = request.uri().to_string().len()
        + request.method().as_str().len()
        + headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        return json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "request head of {} headers and about {bytes} bytes; at most {} headers and {} bytes \
                 (--max-headers, --max-header-bytes)",
                headers.len(),
                limits.max_headers,
                limits.max_header_bytes
            ),
        );
    }
    next.run(request).await
}

/// The concurrency limit of one listener.
#[derive(Clone)]
struct Shed {
    permits: Arc<Semaphore>,
    unshed: &'static [&'static str],
    shed: prometheus::IntCounter,
}

/// Middleware: a request beyond the limit is answered `503 overloaded` with `Retry-After` at
/// once, before anything reads its body or acts on it (so a caller knows it was not applied).
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

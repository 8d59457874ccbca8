//! HTTP plumbing shared by every router: layers, request metrics, JSON error bodies.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// The layers every router gets: tracing, then one guard per route ([`Guard`]) that counts
/// and times the request, checks the head's limits and precheck, reads the body under a budget,
/// applies the concurrency limit and the deadline; and JSON fallbacks for unknown routes and
/// methods.
pub fn layered(
    router: Router,
    listener: &'static str,
    server: &ServerConfig,
    metrics: &HttpMetrics,
    options: ListenerOptions,
) -> Router {
    let guard = Guard {
        listener,
        requests: metrics.requests.clone(),
        seconds: metrics.seconds.clone(),
        shed: metrics.shed.with_label_values(&[listener]),
        permits: Arc::new(Semaphore::new(server.max_in_flight.get())),
        unshed: options.unshed,
        budget: Arc::new(Semaphore::new(server.max_buffered_kib)),
        body_max: options.body_max,
        too_large: options.too_large_code,
        precheck: options.precheck,
        stamp: options.stamp,
        limits: server.limits,
        timeout: server.request_timeout,
    };
    router.fallback(no_route).method_not_allowed_fallback(wrong_method).layer(GuardLayer(Arc::new(guard))).layer(
        // 503s (quorum not met) are expected in a degraded cluster: log them at debug;
        // real server faults are logged where they happen.
        TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
    )
}

/// What every request of a listener passes through, in this order, in one layer (one
/// allocation and one clone of the route per request: these run for every request, and each
/// separate middleware cost the HTTP ceiling about 3%):
///
/// 1. **Metrics**: every answer, the guard's own refusals included, is counted by route
///    template (never by key) and status in `kv_http_requests_total`; a request admitted (its
///    body in, not shed) is timed from then to its answer in
///    `kv_http_request_duration_seconds`.
/// 2. **Head**: more headers than `--max-headers` or a head over `--max-header-bytes` is `431`
///    ([`head_limits`]); then the listener's precheck (the peer and admin listeners: the
///    signature's form, key and time), before any byte of the body is read.
/// 3. **Body**: read whole into memory (at most `body_max` bytes; `413` past it), counted
///    against the listener's budget of buffered bytes as it arrives (`503 overloaded` when the
///    budget is spent: bodies in memory are bounded, and a client must send the bytes it holds
///    budget for), refused `408` when it stalls for [`BODY_STALL`] or takes longer than
///    `--idle-timeout`. Only then is the request in progress on its connection
///    ([`crate::listen::Activity`]): a connection sending a slow or stalled request counts as
///    idle, and the connection cap may close it.
/// 4. **Concurrency**: beyond `--max-in-flight` requests at once, `503 overloaded` with
///    `Retry-After` at once, before anything acts on the request (so a caller knows it was not
///    applied); paths in `unshed` (gossip) are never refused. The body is in already, so a slow
///    upload holds no slot.
/// 5. **Deadline**: a request still running after `--request-timeout` is answered `503` (JSON,
///    with `Retry-After`), and its work dropped.
struct Guard {
    listener: &'static str,
    requests: IntCounterVec,
    seconds: HistogramVec,
    shed: prometheus::IntCounter,
    /// The concurrency limit.
    permits: Arc<Semaphore>,
    unshed: &'static [&'static str],
    /// KiB of bodies being received or held, at most `--max-buffered-mb` per listener.
    budget: Arc<Semaphore>,
    body_max: usize,
    too_large: &'static str,
    precheck: Option<Precheck>,
    stamp: Option<(axum::http::HeaderName, axum::http::HeaderValue)>,
    limits: crate::listen::ConnectionLimits,
    timeout: std::time::Duration,
}

#[derive(Clone)]
struct GuardLayer(Arc<Guard>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, guard: self.0.clone() }
    }
}

/// A route behind its listener's [`Guard`].
#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // Routes are always ready; the inner one is driven by `oneshot` below.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (guard, inner) = (self.guard.clone(), self.inner.clone());
        Box::pin(async move { Ok(guard.serve(request, inner).await) })
    }
}

impl Guard {
    async fn serve<S>(&self, request: Request, inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        let activity = request.extensions().get::<crate::listen::Activity>().cloned();
        // The request's head is in: the connection is not idle until it is answered.
        let _head = activity.as_ref().map(crate::listen::Activity::head);
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        let route_name = route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let mut response = match self.admit(request, activity.as_ref()).await {
            Err(refused) => refused,
            Ok((request, held)) => {
                // Latency from the body in to the answer: what the store spent, not the
                // client's upload.
                let started = Instant::now();
                let response = self.run(request, &activity, inner).await;
                drop(held);
                self.seconds
                    .with_label_values(&[self.listener, route_name, method.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                response
            }
        };
        self.requests
            .with_label_values(&[self.listener, route_name, method.as_str(), response.status().as_str()])
            .inc();
        if let Some((name, value)) = &self.stamp {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }
}

/// A check of a request's head made before its body is read (the peer and admin listeners: the
/// signature's form, key and time); `Err` is the answer.
pub type Precheck = Arc<dyn Fn(&mut axum::http::request::Parts) -> Result<(), Box<Response>> + Send + Sync>;

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
    /// A header every answer carries, refusals included (the peer listener: the newest peer
    /// protocol the process speaks, `x-kv-protocol`).
    pub stamp: Option<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl ListenerOptions {
    /// Bodies up to `body_max` bytes, nothing else special.
    pub fn bodies(body_max: usize) -> ListenerOptions {
        ListenerOptions { unshed: &[], body_max, too_large_code: "body_too_large", precheck: None, stamp: None }
    }
}

/// How long a request body may stall (no bytes) before the request is refused.
pub const BODY_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Most bytes of a refused body read and thrown away after its `413`, and for how long.
const LINGER_MAX: usize = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and throws away, in the background, the rest of a body refused as too large (a
/// lingering close, as nginx does), while the `413` goes out at once: a client that sends its
/// whole body without waiting for the answer (most do; curl waits only with `Expect:
/// 100-continue`) otherwise meets a closed connection mid-body, a broken pipe or a reset, and
/// never reads the `413` (seen with reqwest, 1 run in 5 on a loaded machine). Bounded by
/// [`LINGER_MAX`] and [`LINGER_TIME`]: past them the connection closes, as before.
fn linger(mut body: axum::body::Body) {
    use http_body_util::BodyExt as _;
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + LINGER_TIME;
        let mut read = 0;
        while read <= LINGER_MAX {
            match tokio::time::timeout_at(until, body.frame()).await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    });
}

impl Guard {
    /// The head's limits and precheck, then the body read under the budget: the request with
    /// its body in memory, and the budget it holds; or the refusal.
    async fn admit(
        &self,
        request: Request,
        activity: Option<&crate::listen::Activity>,
    ) -> Result<(Request, Option<OwnedSemaphorePermit>), Response> {
        use http_body_util::BodyExt as _;
        let (mut parts, mut body) = request.into_parts();
        if let Some(response) = head_limits(&self.limits, &parts) {
            return Err(response);
        }
        if let Some(precheck) = &self.precheck {
            precheck(&mut parts).map_err(|response| *response)?;
        }
        // No body (GET, DELETE): nothing to read or hold.
        if http_body::Body::is_end_stream(&body) {
            return Ok((Request::from_parts(parts, body), None));
        }
        let started = Instant::now();
        // Reserved whole when the head declares the length (within the limit), so the buffer
        // never grows by doubling: the budget counts what is allocated, not only what arrived
        // (buffers grown by doubling held up to twice the budget in memory).
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // A body declared over the limit is refused at once, before a byte of it is read.
        if declared.is_some_and(|length| length > self.body_max) {
            linger(body);
            return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, self.too_large, &too_large_message(self.body_max)));
        }
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
        let mut held: Option<OwnedSemaphorePermit> = None;
        loop {
            let left = self.limits.idle_timeout.saturating_sub(started.elapsed()).min(BODY_STALL);
            // `timeout` polls the frame first: a body already here arms no timer.
            let frame = match tokio::time::timeout(left, body.frame()).await {
                Err(_) => {
                    return Err(json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the request body stalled or came too slowly",
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    return Err(json_error(StatusCode::BAD_REQUEST, "bad_request", "the request body was cut short"))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            // A body arriving is activity: an upload in progress is not the idlest connection.
            if let Some(activity) = activity {
                activity.touch();
            }
            if bytes.len() + data.len() > self.body_max {
                linger(body);
                return Err(json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    self.too_large,
                    &too_large_message(self.body_max),
                ));
            }
            bytes.extend_from_slice(&data);
            // Budget in KiB of what the buffer holds allocated, taken as the bytes arrive.
            let want = bytes.capacity().div_ceil(1024) as u32;
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if want > have {
                let Ok(more) = self.budget.clone().try_acquire_many_owned(want - have) else {
                    self.shed.inc();
                    return Err(overloaded(
                        "too many request bodies in memory (--max-buffered-mb); retry after a moment",
                    ));
                };
                match held.as_mut() {
                    Some(permit) => permit.merge(more),
                    None => held = Some(more),
                }
            }
        }
        Ok((Request::from_parts(parts, axum::body::Body::from(bytes)), held))
    }

    /// The concurrency limit and the deadline around the route itself.
    async fn run<S>(&self, request: Request, activity: &Option<crate::listen::Activity>, inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        use tower::ServiceExt as _;
        let _permit = if self.unshed.contains(&request.uri().path()) {
            None
        } else {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.shed.inc();
                return overloaded("too many requests in progress (--max-in-flight); retry after a moment");
            };
            Some(permit)
        };
        let _busy = activity.as_ref().map(crate::listen::Activity::busy);
        match tokio::time::timeout(self.timeout, inner.oneshot(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => {
                let mut response = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the request exceeded --request-timeout; retry",
                );
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }
}

/// `503 overloaded` with `Retry-After`: the request was not acted on.
fn overloaded(message: &str) -> Response {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED, message);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The message of every `413`: the listener's guard (a declared length, or a body that grew
/// past it) and the client API's own check say the same limit in the same words.
pub fn too_large_message(limit: usize) -> String {
    format!("the body is larger than the limit of {limit} bytes")
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

/// The error code of a request shed by the concurrency limit: it was not acted on.
pub const OVERLOADED: &str = "overloaded";

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

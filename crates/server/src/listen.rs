//! Serving one listener: accepting connections under a cap, TLS, HTTP/1.1 with bounded headers
//! and idle time, and a graceful stop.
//!
//! What a hostile or broken client can hold is bounded:
//!
//! - **Connections**: at most `--max-connections` per listener. At the cap, a new connection
//!   closes, at once, the connection that has been idle longest (no request in progress, and
//!   none begun or ended for the longest time; one still sending its request head or body, or
//!   its TLS handshake, counts as idle), so a crowd
//!   of idle or slow connections cannot lock out real clients; if every connection is busy, the
//!   new one is closed at once.
//! - **Time**: a connection must deliver a complete request head within `--idle-timeout` of
//!   the previous answer (or of connecting): an idle keep-alive connection and a slow-loris
//!   client that trickles its headers are both closed then, by one watchdog per connection. An
//!   answer must be read by the client within the same time. A TLS handshake gets the same
//!   time. A body must arrive within `--idle-timeout` too, never stalling 5 s ([`crate::http`]).
//! - **Headers**: at most `--max-headers` headers and `--max-header-bytes` bytes of request
//!   head; more is refused `431` with a JSON body ([`crate::http`]), and a head over twice
//!   these limits is refused by hyper before it is read whole (`431` with an empty body: the
//!   one error that is not JSON).
//!
//! A plain-HTTP request to a TLS listener is answered, in plain HTTP, `400` with a JSON body
//! saying to use https, and closed. Only HTTP/1.1 is spoken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::tls::Tls;

/// Limits of every connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for a complete request head (and for a TLS handshake).
    pub idle_timeout: Duration,
    /// Most headers in a request.
    pub max_headers: usize,
    /// Most bytes of a request head.
    pub max_header_bytes: usize,
}

/// `kv_connections{listener}`, `kv_connections_closed_total{listener, reason}`.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: IntGaugeVec,
    closed: IntCounterVec,
}

impl ConnectionMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<ConnectionMetrics> {
        let open = IntGaugeVec::new(Opts::new("kv_connections", "Connections open, by listener"), &["listener"])?;
        let closed = IntCounterVec::new(
            Opts::new(
                "kv_connections_closed_total",
                "Connections closed by this process before the client did, by listener and reason (evicted: idle at \
                 the connection cap; refused: the cap reached with every connection busy; idle: no request for \
                 --idle-timeout; tls_handshake; plain_http)",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(ConnectionMetrics { open, closed })
    }

    fn closed(&self, listener: &str, reason: &str) {
        self.closed.with_label_values(&[listener, reason]).inc();
    }

    fn closed_counter(&self, listener: &str, reason: &str) -> prometheus::IntCounter {
        self.closed.with_label_values(&[listener, reason])
    }
}

/// One open connection, as the cap sees it.
struct Conn {
    /// Requests in progress on it (body in, not yet answered).
    in_flight: AtomicUsize,
    /// Requests whose head is in and that are not yet answered (body being read, or in
    /// progress).
    heads: AtomicUsize,
    /// Milliseconds since the listener started when a request on it last began or ended (or it
    /// connected).
    last_active: AtomicU64,
    /// Cancelled to close it (gracefully: a request in progress finishes first).
    close: CancellationToken,
    /// Cancelled to drop it at once: closed, and still open an idle period after its last
    /// request ended (a client not reading its answer).
    kill: CancellationToken,
}

/// The open connections of one listener.
struct Conns {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers a new connection if there is room, making room by closing the connection idle
    /// longest when the cap is reached. `None`: every connection is busy.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>, bool)> {
        let mut open = self.open.lock();
        let mut evicted = false;
        if open.len() >= max {
            let idlest = open
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0 && !c.close.is_cancelled())
                .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let idlest = idlest?;
            if let Some(conn) = open.remove(&idlest) {
                conn.close.cancel();
                evicted = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.now()),
            close: CancellationToken::new(),
            kill: CancellationToken::new(),
        });
        open.insert(id, conn.clone());
        Some((id, conn, evicted))
    }
}

/// A request's connection, as a request extension: [`Activity::head`] marks a request's head
/// in (the idle watchdog leaves the connection alone until it is answered), [`Activity::busy`]
/// a request in progress on it (once its body is in: [`crate::http`]), which the connection cap
/// never closes.
#[derive(Clone)]
pub struct Activity(Arc<Conn>, Arc<Conns>);

impl Activity {
    /// Marks a request's head received until the guard is dropped.
    pub fn head(&self) -> Head {
        self.0.heads.fetch_add(1, Ordering::Relaxed);
        self.0.last_active.store(self.1.now(), Ordering::Relaxed);
        Head(self.clone())
    }

    /// Records activity on the connection now (a request's body arriving), for the connection
    /// cap's choice of the idlest connection.
    pub fn touch(&self) {
        self.0.last_active.store(self.1.now(), Ordering::Relaxed);
    }

    /// Marks a request in progress on the connection until the guard is dropped.
    pub fn busy(&self) -> InFlight {
        InFlight::new(self.0.clone())
    }
}

/// A request's head received and not yet answered, while alive.
pub struct Head(Activity);

impl Drop for Head {
    fn drop(&mut self) {
        let Activity(conn, conns) = &self.0;
        conn.last_active.store(conns.now(), Ordering::Relaxed);
        conn.heads.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes `conn` once it has had no request for `idle` (no head received since the last answer,
/// or since it connected): an idle keep-alive connection, and a slow-loris client that trickles
/// a head it never finishes. One timer per connection, looked at once per `idle` period (a
/// timer per request cost the HTTP ceiling about 3%). A connection closed (by this or by the
/// connection cap) that is still open an idle period after its last request ended, a client
/// not reading its answer, is dropped (`kill`): nothing holds a connection without bound.
async fn watchdog(conn: Arc<Conn>, conns: Arc<Conns>, idle: Duration, idle_closed: prometheus::IntCounter) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let due = conn.last_active.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = conns.now();
        let wait = if now < due {
            due - now
        } else if conn.heads.load(Ordering::Relaxed) > 0 {
            idle_ms // a request in progress: look again after it
        } else if conn.close.is_cancelled() {
            conn.kill.cancel();
            return;
        } else {
            idle_closed.inc();
            conn.close.cancel();
            idle_ms
        };
        tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
    }
}

/// Counts a request in progress on a connection while alive.
pub struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// TLS of a listener: the process's certificates, and whether this is the peer listener (which
/// asks for client certificates).
#[derive(Clone)]
pub struct ListenerTls {
    /// The certificates.
    pub tls: Arc<Tls>,
    /// Mutual TLS.
    pub peer: bool,
}

/// Accepts connections on `socket` and serves `router` on each until `stop` is cancelled; then
/// stops accepting and closes each connection once its request in progress is answered.
/// Returns once every connection is closed (the caller bounds the wait).
pub async fn serve_listener(
    name: &'static str,
    socket: TcpListener,
    router: Router,
    tls: Option<ListenerTls>,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let conns =
        Arc::new(Conns { started: Instant::now(), next_id: AtomicU64::new(0), open: Mutex::new(HashMap::new()) });
    let tasks = TaskTracker::new();
    let gauge = metrics.open.with_label_values(&[name]);
    let result = loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            accepted = socket.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_transient(&e) => {
                // Out of descriptors or a connection reset before it was accepted: wait a
                // moment rather than spin, and go on.
                tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => break Err(e),
        };
        let Some((id, conn, evicted)) = conns.admit(limits.max_connections) else {
            metrics.closed(name, "refused");
            drop(stream);
            continue;
        };
        if evicted {
            // The evicted connection left the open set (it closes in its own time): the gauge
            // counts the set, which the cap bounds.
            metrics.closed(name, "evicted");
            gauge.dec();
        }
        gauge.inc();
        let (conns, router, tls, metrics, gauge, stop) =
            (conns.clone(), router.clone(), tls.clone(), metrics.clone(), gauge.clone(), stop.clone());
        tasks.spawn(async move {
            connection(name, stream, router, tls, limits, &metrics, conn.clone(), conns.clone(), stop).await;
            if conns.open.lock().remove(&id).is_some() {
                gauge.dec();
            }
        });
    };
    drop(socket);
    tasks.close();
    tasks.wait().await;
    result
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|code| code == 23 || code == 24 || code == 105 || code == 12)
}

/// The answer to a plain-HTTP request on a TLS listener.
fn plain_http_answer() -> Vec<u8> {
    let body = "{\"error\":\"tls_required\",\"message\":\"this listener speaks HTTPS only: use https://\"}\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    name: &'static str,
    stream: TcpStream,
    router: Router,
    tls: Option<ListenerTls>,
    limits: ConnectionLimits,
    metrics: &ConnectionMetrics,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        http(stream, router, limits, conn, conns, metrics.closed_counter(name, "idle"), stop).await;
        return;
    };
    // A TLS client speaks first, with a handshake record (0x16); anything else is most likely
    // plain HTTP, which gets a plain answer instead of a handshake failure it cannot read.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        () = conn.close.cancelled() => return,
        peeked = tokio::time::timeout(limits.idle_timeout, stream.peek(&mut first)) => peeked,
    };
    match peeked {
        Ok(Ok(1)) if first[0] != 0x16 => {
            metrics.closed(name, "plain_http");
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&plain_http_answer())).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Ok(1)) => {}
        _ => return,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.tls.server_config(tls.peer));
    let accepted = tokio::select! {
        () = conn.close.cancelled() => return,
        accepted = tokio::time::timeout(limits.idle_timeout, acceptor.accept(stream)) => accepted,
    };
    match accepted {
        Ok(Ok(stream)) => {
            http(stream, router, limits, conn, conns, metrics.closed_counter(name, "idle"), stop).await;
        }
        Ok(Err(e)) => {
            metrics.closed(name, "tls_handshake");
            tracing::debug!(listener = name, error = %e, "TLS handshake failed");
        }
        Err(_) => metrics.closed(name, "tls_handshake"),
    }
}

/// Serves HTTP/1.1 on one connection until the client closes it, it idles past the limit, or
/// it is told to close (eviction or shutdown: gracefully).
async fn http<S>(
    io: S,
    router: Router,
    limits: ConnectionLimits,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    idle_closed: prometheus::IntCounter,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watchdog = tokio::spawn(watchdog(conn.clone(), conns.clone(), limits.idle_timeout, idle_closed));
    let _watchdog = AbortOnDrop(watchdog);
    let activity = Activity(conn.clone(), conns);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(activity.clone());
        router.oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // No header read timeout (a timer armed per request): the watchdog bounds idle and slow heads.
    builder
        .header_read_timeout(None)
        .max_headers(limits.max_headers.saturating_mul(2))
        .max_header_size(limits.max_header_bytes.saturating_mul(2))
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    // The requests of this connection run on this task, inside `served`: while this task is in
    // a branch below, no request starts or ends, so `in_flight` and `heads` cannot change
    // between their check and what follows from it.
    let finished = tokio::select! {
        result = served.as_mut() => Some(result),
        // Evicted, or idle past the limit (or sending a request head or body): closed at once.
        // With a request in progress it finishes first.
        () = conn.close.cancelled() => (conn.in_flight.load(Ordering::Relaxed) == 0).then_some(Ok(())),
        // Shutting down: a connection with no request begun (idle, or a head still arriving)
        // closes at once; one with a request lets it finish and be answered.
        () = stop.cancelled() => (conn.heads.load(Ordering::Relaxed) == 0).then_some(Ok(())),
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // Gracefully, the answer bounded by `kill`.
            served.as_mut().graceful_shutdown();
            tokio::select! {
                result = served.as_mut() => result,
                () = conn.kill.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

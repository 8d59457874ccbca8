//! Settings every server process shares: the client and admin listeners, limits, logging,
//! shutdown, and the cluster and quorum settings; the layering of defaults, file, environment
//! and flags; the parsers for addresses and durations.
//!
//! Precedence, lowest first: built-in defaults < `--config` file < environment < flags. Every
//! setting is validated into a typed value before anything starts; a bad one stops the process
//! with a message naming the setting (exit status 2).

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use clap::{Args, CommandFactory};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Largest `--max-value-bytes` accepted: values are meant to be small (the seed expects under
/// 10 KB); 64 MiB bounds the memory one request can take.
const MAX_VALUE_LIMIT: u64 = 64 << 20;

/// Settings shared by every server process (kvnode and kvgateway).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerSettings {
    /// Address of the client API listener (`/kv/*` only) [default: 127.0.0.1:7000 for kvnode,
    /// 127.0.0.1:8080 for kvgateway].
    #[arg(long, env = "KV_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the admin listener: `/metrics`, `/health/*`, `/admin/*`, `/cluster/*`
    /// [default: 127.0.0.1:7200 for kvnode, 127.0.0.1:8081 for kvgateway].
    #[arg(long, env = "KV_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Largest value accepted, in bytes [default: 1048576].
    #[arg(long, env = "KV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<u64>,
    /// Log format: text (default) or json. Levels come from RUST_LOG (default info).
    #[arg(long, env = "KV_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// How long shutdown waits for in-flight requests, e.g. 10s, 500ms [default: 10s].
    #[arg(long, env = "KV_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// Deadline for one client request [default: 30s].
    #[arg(long, env = "KV_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Requests served at once per listener; more are answered 503 overloaded with
    /// Retry-After at once, not queued [default: 1024].
    #[arg(long, env = "KV_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Connections open at once per listener; at the cap a new connection closes the one idle
    /// longest [default: 4096].
    #[arg(long, env = "KV_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a connection may go without a complete request head (idle keep-alive, slow
    /// clients, TLS handshakes) before it is closed [default: 30s].
    #[arg(long, env = "KV_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Largest request head (request line and headers), bytes; more is refused 431
    /// [default: 32768].
    #[arg(long, env = "KV_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most headers in a request; more is refused 431 [default: 64].
    #[arg(long, env = "KV_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Request bodies held in memory at once per listener, in MiB (being received or being
    /// handled); past it requests are answered 503 overloaded [default: 256].
    #[arg(long, env = "KV_MAX_BUFFERED_MB")]
    pub max_buffered_mb: Option<usize>,
    /// Threads that run request handling, 1 to 256. One is cheapest when several kvnode and
    /// kvgateway processes share a small machine (no cross-thread wake-ups) [default: one per
    /// CPU core].
    #[arg(long, env = "KV_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// Settings of the cluster and its quorums, shared by kvnode and kvgateway.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterSettings {
    /// Comma-separated HOST:PORT of members to learn the cluster from [default: none, a
    /// cluster of one].
    #[arg(long, env = "KV_SEEDS", value_name = "HOST:PORT,...")]
    pub seeds: Option<String>,
    /// Replicas per key, N [default: 3].
    #[arg(long, env = "KV_REPLICAS")]
    pub replicas: Option<usize>,
    /// Replies a read waits for, R [default: N/2 + 1].
    #[arg(long, env = "KV_READ_QUORUM")]
    pub read_quorum: Option<usize>,
    /// Acknowledgements a write waits for, W [default: N/2 + 1].
    #[arg(long, env = "KV_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,
    /// Deadline of one call to one replica [default: 2s].
    #[arg(long, env = "KV_REPLICA_TIMEOUT")]
    pub replica_timeout: Option<String>,
    /// Replicas a read asks first: all (default; more read repair, tolerates a slow replica)
    /// or quorum (only R, then more if some fail; fewer requests).
    #[arg(long, env = "KV_READ_FANOUT")]
    pub read_fanout: Option<String>,
    /// Requests to other nodes in flight at once from this process (each carries a batch of
    /// replica calls, or a range stream page); more wait [default: 512].
    #[arg(long, env = "KV_MAX_REPLICA_CALLS")]
    pub max_replica_calls: Option<usize>,
    /// Batches of replica calls in flight to one peer (and to this node's own storage) at once,
    /// 1 to 64. Calls that queue while they are out travel together in the next batch: fewer
    /// means bigger batches and less CPU per operation, more means less waiting behind a slow
    /// batch; a lone call never waits [default: 1].
    #[arg(long, env = "KV_BATCHES_PER_PEER")]
    pub batches_per_peer: Option<usize>,
    /// Gossip round period: each round a node bumps its heartbeat and exchanges member states
    /// with --gossip-fanout random peers; a gateway pulls the states [default: 1s].
    #[arg(long, env = "KV_GOSSIP_INTERVAL")]
    pub gossip_interval: Option<String>,
    /// Peers contacted per gossip round [default: 2].
    #[arg(long, env = "KV_GOSSIP_FANOUT")]
    pub gossip_fanout: Option<usize>,
    /// A member whose heartbeat has not risen for this long is suspected; it is marked down
    /// once two members suspect it [default: 5s].
    #[arg(long, env = "KV_SUSPECT_AFTER")]
    pub suspect_after: Option<String>,
    /// Tombstones younger than this are never purged, e.g. 10d, 12h [default: 10d].
    #[arg(long, env = "KV_TOMBSTONE_GRACE")]
    pub tombstone_grace: Option<String>,
    /// Sloppy quorum: when a replica is down or times out, a fallback node (the next one on the
    /// ring) keeps the write as a hint for it, and its acknowledgement counts toward W (clients
    /// can still ask for `pw` acknowledgements from the key's own replicas) [default: true].
    #[arg(long, env = "KV_SLOPPY_QUORUM", num_args = 0..=1, default_missing_value = "true")]
    pub sloppy_quorum: Option<bool>,
    /// Hinted handoff: a write a replica misses is kept as a hint by a fallback and handed to
    /// the replica once it is back. Off, missed writes wait for read repair and anti-entropy
    /// (and sloppy quorum has nothing to count) [default: true].
    #[arg(long, env = "KV_HINTED_HANDOFF", num_args = 0..=1, default_missing_value = "true")]
    pub hinted_handoff: Option<bool>,
    /// Members a new cluster waits for: client requests are answered 503 cluster_forming until
    /// this many normal members were seen at once (then never again) [default: 1].
    #[arg(long, env = "KV_EXPECT_NODES")]
    pub expect_nodes: Option<usize>,
    /// A node whose clock is further than this from most members' (measured by every gossip
    /// exchange) fences itself: it serves nothing until its clock agrees again. Tombstone
    /// purges, hints and hand-offs compare clocks of different members, and hold while any two
    /// differ by at most twice this: at most an eighth of --tombstone-grace and a quarter of
    /// --replica-timeout [default: 500ms with the default replica timeout: a quarter of it, a
    /// sixteenth of --tombstone-grace, or 1s, whichever is shortest].
    #[arg(long, env = "KV_MAX_CLOCK_OFFSET")]
    pub max_clock_offset: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServerConfig {
    /// The async runtime these settings ask for.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = self.worker_threads {
            builder.worker_threads(threads);
        }
        builder.enable_all().build()
    }
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client API listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Drain deadline on shutdown.
    pub shutdown_timeout: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Concurrent request limit, per listener.
    pub max_in_flight: NonZeroUsize,
    /// Connection limits of every listener.
    pub limits: crate::listen::ConnectionLimits,
    /// Request bodies held at once per listener, KiB.
    pub max_buffered_kib: usize,
    /// Async worker threads; `None`: one per core.
    pub worker_threads: Option<usize>,
}

/// Validated cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Seed addresses.
    pub seeds: Vec<String>,
    /// Coordinator options (N/R/W, timeouts, fan-out, grace).
    pub coordinator: kv_coordinator::Options,
    /// Requests to other nodes in flight at once.
    pub max_replica_calls: NonZeroUsize,
    /// Batches in flight to one peer.
    pub batches_per_peer: usize,
    /// Gossip round period.
    pub gossip_interval: Duration,
    /// Peers per gossip round.
    pub gossip_fanout: usize,
    /// Heartbeat silence before suspicion.
    pub suspect_after: Duration,
    /// Normal members needed before clients are served.
    pub expect_nodes: usize,
    /// The clock fence: a node further than this from most members' clocks serves nothing.
    pub max_clock_offset: Duration,
}

impl ClusterConfig {
    /// How each peer's batches are paced: `--batches-per-peer` in flight, and a peer whose
    /// oldest batch is unanswered for half the replica timeout counts as stalled (calls then go
    /// elsewhere at once, with half the replica timeout left to do so; a batch slower than that
    /// is far beyond a healthy peer's, even with fsyncs on a slow disk).
    pub fn batch_limits(&self) -> kv_coordinator::batch::BatchLimits {
        kv_coordinator::batch::BatchLimits {
            in_flight: self.batches_per_peer,
            stall_after: self.coordinator.replica_timeout / 2,
        }
    }
}

/// Fills every unset field of `$top` from `$bottom`.
#[macro_export]
macro_rules! layer {
    ($top:expr, $bottom:expr, $($field:ident),+) => {
        $( if $top.$field.is_none() { $top.$field = $bottom.$field.take(); } )+
    };
}

/// A binary's settings: flags and `KV_*` environment variables layered over a `--config` file.
pub trait Layered: clap::Parser + DeserializeOwned {
    /// The `--config` file, if any.
    fn config_file(&self) -> Option<std::path::PathBuf>;
    /// Fills every unset field of `self` from `lower`.
    fn layer_over(&mut self, lower: &mut Self);
}

/// Parses flags and environment, then fills gaps from the `--config` file.
pub fn load<T: Layered>() -> Result<T, String> {
    let mut settings = T::parse();
    if let Some(path) = settings.config_file() {
        let mut file: T = settings_file(&path)?;
        settings.layer_over(&mut file);
    }
    Ok(settings)
}

/// Reads a TOML settings file for the command `T`, refusing keys that are not among `T`'s long
/// flags (a typo must stop the process, not be ignored).
pub fn settings_file<T: DeserializeOwned + CommandFactory>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    settings_text(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Settings for the command `T` from the text of a TOML file (see [`settings_file`]).
pub fn settings_text<T: DeserializeOwned + CommandFactory>(text: &str) -> Result<T, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let command = T::command();
    let known: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str()) || k.as_str() == "config") {
        return Err(format!("unknown key {unknown:?}"));
    }
    toml::from_str(text).map_err(|e| e.to_string())
}

impl ServerSettings {
    /// Fills every unset field from `lower`.
    pub fn layer_over(&mut self, lower: &mut ServerSettings) {
        layer!(
            self,
            lower,
            listen,
            admin_listen,
            max_value_bytes,
            log_format,
            shutdown_timeout,
            request_timeout,
            max_in_flight,
            max_connections,
            idle_timeout,
            max_header_bytes,
            max_headers,
            max_buffered_mb,
            worker_threads
        );
    }

    /// Applies defaults (the binary's default client and admin addresses) and checks.
    pub fn validate(self, default_listen: &str, default_admin: &str) -> Result<ServerConfig, String> {
        let listen_text = self.listen.unwrap_or_else(|| default_listen.to_owned());
        let listen = parse_addr(&listen_text).map_err(|e| format!("--listen: {e}"))?;
        let admin_text = self.admin_listen.unwrap_or_else(|| default_admin.to_owned());
        let admin_listen = parse_addr(&admin_text).map_err(|e| format!("--admin-listen: {e}"))?;
        if admin_listen == listen {
            return Err(format!("--admin-listen: must differ from --listen ({listen})"));
        }
        let max_value_bytes = self.max_value_bytes.unwrap_or(1 << 20);
        if max_value_bytes == 0 || max_value_bytes > MAX_VALUE_LIMIT {
            return Err(format!("--max-value-bytes: must be 1 to {MAX_VALUE_LIMIT}, got {max_value_bytes}"));
        }
        let log_format = match self.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(format!("--log-format: expected text or json, got {other:?}")),
        };
        let shutdown_timeout = duration_setting("--shutdown-timeout", self.shutdown_timeout.as_deref(), "10s")?;
        let request_timeout = duration_setting("--request-timeout", self.request_timeout.as_deref(), "30s")?;
        if request_timeout.is_zero() {
            return Err("--request-timeout: must be greater than zero".into());
        }
        let max_in_flight =
            NonZeroUsize::new(self.max_in_flight.unwrap_or(1024)).ok_or("--max-in-flight: must be at least 1")?;
        if let Some(threads) = self.worker_threads.filter(|t| !(1..=256).contains(t)) {
            return Err(format!("--worker-threads: must be 1 to 256, got {threads}"));
        }
        let max_connections = self.max_connections.unwrap_or(4096);
        if !(16..=1_000_000).contains(&max_connections) {
            return Err(format!("--max-connections: must be 16 to 1000000, got {max_connections}"));
        }
        let idle_timeout = duration_setting("--idle-timeout", self.idle_timeout.as_deref(), "30s")?;
        if idle_timeout < Duration::from_millis(100) || idle_timeout > Duration::from_secs(3600) {
            return Err(format!("--idle-timeout: must be 100ms to 1h, got {idle_timeout:?}"));
        }
        let max_header_bytes = self.max_header_bytes.unwrap_or(32 * 1024);
        if !(4096..=1 << 20).contains(&max_header_bytes) {
            return Err(format!("--max-header-bytes: must be 4096 to 1048576, got {max_header_bytes}"));
        }
        let max_headers = self.max_headers.unwrap_or(64);
        if !(8..=1024).contains(&max_headers) {
            return Err(format!("--max-headers: must be 8 to 1024, got {max_headers}"));
        }
        let limits = crate::listen::ConnectionLimits { max_connections, idle_timeout, max_headers, max_header_bytes };
        let max_buffered_mb = self.max_buffered_mb.unwrap_or(256);
        if !(16..=65_536).contains(&max_buffered_mb) {
            return Err(format!("--max-buffered-mb: must be 16 to 65536, got {max_buffered_mb}"));
        }
        Ok(ServerConfig {
            listen,
            admin_listen,
            max_value_bytes: max_value_bytes as usize,
            log_format,
            shutdown_timeout,
            request_timeout,
            max_in_flight,
            limits,
            max_buffered_kib: max_buffered_mb * 1024,
            worker_threads: self.worker_threads,
        })
    }
}

impl ClusterSettings {
    /// Fills every unset field from `lower`.
    pub fn layer_over(&mut self, lower: &mut ClusterSettings) {
        layer!(
            self,
            lower,
            seeds,
            replicas,
            read_quorum,
            write_quorum,
            replica_timeout,
            read_fanout,
            max_replica_calls,
            batches_per_peer,
            gossip_interval,
            gossip_fanout,
            suspect_after,
            tombstone_grace,
            sloppy_quorum,
            hinted_handoff,
            expect_nodes,
            max_clock_offset
        );
    }

    /// Applies defaults and checks.
    pub fn validate(self) -> Result<ClusterConfig, String> {
        let seeds: Vec<String> = self
            .seeds
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for seed in &seeds {
            if seed.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(format!("--seeds: {seed:?} is not HOST:PORT"));
            }
        }
        let n = self.replicas.unwrap_or(3);
        if n == 0 || n > 16 {
            return Err(format!("--replicas: must be 1 to 16, got {n}"));
        }
        let majority = n / 2 + 1;
        let quorum =
            kv_coordinator::Quorum::new(n, self.read_quorum.unwrap_or(majority), self.write_quorum.unwrap_or(majority))
                .map_err(|e| format!("--read-quorum/--write-quorum: {e}"))?;
        let replica_timeout = duration_setting("--replica-timeout", self.replica_timeout.as_deref(), "2s")?;
        if replica_timeout.is_zero() {
            return Err("--replica-timeout: must be greater than zero".into());
        }
        let read_all = match self.read_fanout.as_deref().unwrap_or("all") {
            "all" => true,
            "quorum" => false,
            other => return Err(format!("--read-fanout: expected all or quorum, got {other:?}")),
        };
        let max_replica_calls = NonZeroUsize::new(self.max_replica_calls.unwrap_or(512))
            .ok_or("--max-replica-calls: must be at least 1")?;
        let batches_per_peer = self.batches_per_peer.unwrap_or(1);
        if !(1..=64).contains(&batches_per_peer) {
            return Err(format!("--batches-per-peer: must be 1 to 64, got {batches_per_peer}"));
        }
        let gossip_interval = duration_setting("--gossip-interval", self.gossip_interval.as_deref(), "1s")?;
        if gossip_interval.is_zero() {
            return Err("--gossip-interval: must be greater than zero".into());
        }
        let gossip_fanout = self.gossip_fanout.unwrap_or(2);
        if !(1..=16).contains(&gossip_fanout) {
            return Err(format!("--gossip-fanout: must be 1 to 16, got {gossip_fanout}"));
        }
        let suspect_after = duration_setting("--suspect-after", self.suspect_after.as_deref(), "5s")?;
        if suspect_after < gossip_interval * 2 {
            return Err(format!(
                "--suspect-after: must be at least two gossip intervals ({:?}), got {suspect_after:?}",
                gossip_interval * 2
            ));
        }
        let tombstone_grace = duration_setting("--tombstone-grace", self.tombstone_grace.as_deref(), "10d")?;
        // A replica drops a store older than one replica timeout; a tombstone must outlive every
        // store that may still carry what it deleted (docs/consistency.md, "Purge").
        if tombstone_grace <= replica_timeout {
            return Err(format!(
                "--tombstone-grace: must be longer than --replica-timeout ({replica_timeout:?}), got {tombstone_grace:?}"
            ));
        }
        let expect_nodes = self.expect_nodes.unwrap_or(1);
        if !(1..=1000).contains(&expect_nodes) {
            return Err(format!("--expect-nodes: must be 1 to 1000, got {expect_nodes}"));
        }
        let max_clock_offset = match self.max_clock_offset.as_deref() {
            Some(text) => duration_setting("--max-clock-offset", Some(text), "1s")?,
            // A sixteenth of the grace: the default --hint-max-age (a quarter) plus twice this
            // stays below half the grace; a quarter of the replica timeout (below).
            None => (tombstone_grace / 16).min(replica_timeout / 4).min(Duration::from_secs(1)),
        };
        // docs/consistency.md, "Clocks": any two members that act differ by at most twice the
        // offset, and the age rules of purges, hints and hand-offs hold while that is at most a
        // quarter of the grace.
        if max_clock_offset.is_zero() || max_clock_offset > tombstone_grace / 8 {
            return Err(format!(
                "--max-clock-offset {max_clock_offset:?} contradicts --tombstone-grace {tombstone_grace:?}: it must be \
                 above zero and at most an eighth of the grace ({:?}), or a purged delete could come back through a \
                 hint or a hand-off judged by a skewed clock; lower it or raise --tombstone-grace",
                tombstone_grace / 8
            ));
        }
        // A store's or a coordinate call's deadline is the sender's clock plus the replica
        // timeout, judged by the receiver's clock: two members twice the offset apart shorten it
        // by that much; at most by half.
        if max_clock_offset * 4 > replica_timeout {
            return Err(format!(
                "--max-clock-offset {max_clock_offset:?} contradicts --replica-timeout {replica_timeout:?}: two members \
                 may differ by twice the offset, which shortens every call's deadline by as much; it must be at most \
                 a quarter of the replica timeout ({:?})",
                replica_timeout / 4
            ));
        }
        Ok(ClusterConfig {
            expect_nodes,
            max_clock_offset,
            seeds,
            coordinator: kv_coordinator::Options {
                quorum,
                replica_timeout,
                read_all,
                tombstone_grace,
                sloppy_quorum: self.sloppy_quorum.unwrap_or(true),
                hinted_handoff: self.hinted_handoff.unwrap_or(true),
                zone: "default".into(),
                // Two members that agree with the cluster differ by up to twice the offset.
                max_clock_skew: max_clock_offset * 2,
            },
            max_replica_calls,
            batches_per_peer,
            gossip_interval,
            gossip_fanout,
            suspect_after,
        })
    }
}

/// Parses a duration setting, naming the flag in the error.
pub fn duration_setting(flag: &str, value: Option<&str>, default: &str) -> Result<Duration, String> {
    parse_duration(value.unwrap_or(default)).map_err(|e| format!("{flag}: {e}"))
}

/// Parses `HOST:PORT` (a name is resolved).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Parses a duration as `humantime` writes them (`250ms`, `10s`, `1h30m`, `10d`, `2w`), or a
/// plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 10s, 2m, 1h30m or 10d ({e})"))
}

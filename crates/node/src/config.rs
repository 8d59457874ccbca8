//! Configuration: flags, `KV_*` environment variables and a TOML file, validated at start-up.
//!
//! Precedence, lowest first: built-in defaults < `--config` file < environment < flags. Every
//! setting is validated into a typed value before anything starts; a bad one stops the process
//! with a message naming the setting (exit status 2).

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, Parser};
use kv_storage::{Compression, EngineKind, SyncMode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Default client API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";

/// Largest `--max-value-bytes` accepted: values are meant to be small (the seed expects under
/// 10 KB); 64 MiB bounds the memory one request can take.
const MAX_VALUE_LIMIT: u64 = 64 << 20;

/// Largest `--weight`: a node gets `weight × 512` vnodes, so 100 keeps rings small.
const MAX_WEIGHT: u32 = 100;

/// Settings shared by every server process (kvnode and kvgateway).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerSettings {
    /// Address the HTTP server binds [default: 127.0.0.1:7000 for kvnode, 127.0.0.1:8080 for kvgateway].
    #[arg(long, env = "KV_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
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
    /// Requests served at once; more wait in line [default: 1024].
    #[arg(long, env = "KV_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
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
    /// Members a new cluster waits for: client requests are answered 503 cluster_forming until
    /// this many normal members were seen at once (then never again) [default: 1].
    #[arg(long, env = "KV_EXPECT_NODES")]
    pub expect_nodes: Option<usize>,
}

/// Every kvnode setting, as given. All optional so that the file, the environment and the flags
/// can be layered; [`Settings::validate`] applies defaults and checks.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "kvnode",
    version,
    about = "Storage node of the kv store: replica, coordinator and client API over HTTP/JSON"
)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    /// TOML file with any of the settings below, keyed by long flag name (e.g. `node-id = "n1"`).
    #[arg(long, env = "KV_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Stable node id, the name in vector clocks: 1-64 of [A-Za-z0-9._-]. Default: the id stored
    /// in the data directory, else the host name. A node refuses to start under a different id
    /// than its data directory records.
    #[arg(long, env = "KV_NODE_ID")]
    pub node_id: Option<String>,
    /// Address other nodes and clients use to reach this node [default: --listen].
    #[arg(long, env = "KV_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Directory for the node id, known members and the storage engine's files [default: ./data].
    #[arg(long, env = "KV_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Failure domain (data center, rack); replicas spread over zones [default: default].
    #[arg(long, env = "KV_ZONE")]
    pub zone: Option<String>,
    /// Relative capacity, 1-100; ring share is proportional to it [default: 1].
    #[arg(long, env = "KV_WEIGHT")]
    pub weight: Option<u32>,
    /// Storage engine: fjall (LSM tree, default), sled (0.34.7: known corruption reports after
    /// unclean stops, see docs/storage.md) or memory (tests: nothing survives a restart).
    #[arg(long, env = "KV_ENGINE")]
    pub engine: Option<String>,
    /// When writes are acknowledged: always (fsync each), batch (group commit, default) or none
    /// (no fsync wait: for benchmarks, loses acknowledged writes on a crash).
    #[arg(long, env = "KV_SYNC")]
    pub sync: Option<String>,
    /// Engine cache for hot data, in MiB [default: 64].
    #[arg(long, env = "KV_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Value compression: lz4 (default) or none.
    #[arg(long, env = "KV_COMPRESSION")]
    pub compression: Option<String>,
    /// On SIGTERM, hand this node's ranges to their new owners and leave the cluster before
    /// exiting (a decommission), instead of a restart-style stop [default: false].
    #[arg(long, env = "KV_LEAVE_ON_SHUTDOWN", num_args = 0..=1, default_missing_value = "true")]
    pub leave_on_shutdown: Option<bool>,
    /// Ranges streamed at once while joining, leaving or re-replicating [default: 16].
    #[arg(long, env = "KV_STREAM_CONCURRENCY")]
    pub stream_concurrency: Option<usize>,
    /// HTTP server settings.
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Cluster and quorum settings.
    #[command(flatten)]
    #[serde(flatten)]
    pub cluster: ClusterSettings,
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
    /// Bind address.
    pub listen: SocketAddr,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Drain deadline on shutdown.
    pub shutdown_timeout: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Concurrent request limit.
    pub max_in_flight: NonZeroUsize,
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
}

/// Validated kvnode configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node id from flags, env or file; `None` means "from the data directory or host name".
    pub node_id: Option<String>,
    /// Address others use for this node.
    pub advertise: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Zone.
    pub zone: String,
    /// Weight.
    pub weight: NonZeroU32,
    /// Storage options.
    pub storage: kv_storage::Options,
    /// HTTP server.
    pub server: ServerConfig,
    /// Cluster and quorums.
    pub cluster: ClusterConfig,
    /// Leave the cluster on SIGTERM.
    pub leave_on_shutdown: bool,
    /// Ranges streamed at once.
    pub stream_concurrency: NonZeroUsize,
}

macro_rules! layer {
    ($top:expr, $bottom:expr, $($field:ident),+) => {
        $( if $top.$field.is_none() { $top.$field = $bottom.$field.take(); } )+
    };
}

/// Reads a TOML settings file for the command `T`, refusing keys that are not among `T`'s long
/// flags (a typo must stop the process, not be ignored).
pub fn settings_file<T: DeserializeOwned + CommandFactory>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let command = T::command();
    let known: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
    if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str()) || k.as_str() == "config") {
        return Err(format!("config file {}: unknown key {unknown:?}", path.display()));
    }
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

impl ServerSettings {
    /// Fills every unset field from `lower`.
    pub fn layer_over(&mut self, lower: &mut ServerSettings) {
        layer!(
            self,
            lower,
            listen,
            max_value_bytes,
            log_format,
            shutdown_timeout,
            request_timeout,
            max_in_flight,
            worker_threads
        );
    }

    /// Applies defaults (`default_listen` for the bind address) and checks.
    pub fn validate(self, default_listen: &str) -> Result<ServerConfig, String> {
        let listen_text = self.listen.unwrap_or_else(|| default_listen.to_owned());
        let listen = parse_addr(&listen_text).map_err(|e| format!("--listen: {e}"))?;
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
        Ok(ServerConfig {
            listen,
            max_value_bytes: max_value_bytes as usize,
            log_format,
            shutdown_timeout,
            request_timeout,
            max_in_flight,
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
            expect_nodes
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
        Ok(ClusterConfig {
            expect_nodes,
            seeds,
            coordinator: kv_coordinator::Options { quorum, replica_timeout, read_all, tombstone_grace },
            max_replica_calls,
            batches_per_peer,
            gossip_interval,
            gossip_fanout,
            suspect_after,
        })
    }
}

impl Settings {
    /// Parses flags and environment, then fills gaps from the `--config` file.
    pub fn load() -> Result<Settings, String> {
        let mut settings = Settings::parse();
        if let Some(path) = settings.config.clone() {
            let mut file: Settings = settings_file(&path)?;
            settings.layer_over(&mut file);
        }
        Ok(settings)
    }

    /// Fills every unset field of `self` from `lower`.
    pub fn layer_over(&mut self, lower: &mut Settings) {
        layer!(
            self,
            lower,
            node_id,
            advertise,
            data_dir,
            zone,
            weight,
            engine,
            sync,
            cache_mb,
            compression,
            leave_on_shutdown,
            stream_concurrency
        );
        self.server.layer_over(&mut lower.server);
        self.cluster.layer_over(&mut lower.cluster);
    }

    /// Applies defaults and checks every value.
    pub fn validate(self) -> Result<Config, String> {
        if let Some(id) = &self.node_id {
            validate_node_id(id).map_err(|e| format!("--node-id: {e}"))?;
        }
        let server = self.server.validate(DEFAULT_LISTEN)?;
        let advertise = self.advertise.unwrap_or_else(|| server.listen.to_string());
        if advertise.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() || advertise.len() > 255
        {
            return Err(format!("--advertise: expected HOST:PORT, got {advertise:?}"));
        }
        let zone = self.zone.unwrap_or_else(|| "default".to_owned());
        validate_node_id(&zone).map_err(|e| format!("--zone: {e}"))?;
        let weight = self.weight.unwrap_or(1);
        let weight = NonZeroU32::new(weight)
            .filter(|w| w.get() <= MAX_WEIGHT)
            .ok_or_else(|| format!("--weight: must be 1 to {MAX_WEIGHT}, got {weight}"))?;
        let engine: EngineKind =
            self.engine.as_deref().unwrap_or("fjall").parse().map_err(|e| format!("--engine: {e}"))?;
        let sync: SyncMode = self.sync.as_deref().unwrap_or("batch").parse().map_err(|e| format!("--sync: {e}"))?;
        let compression: Compression =
            self.compression.as_deref().unwrap_or("lz4").parse().map_err(|e| format!("--compression: {e}"))?;
        let cache_mb = self.cache_mb.unwrap_or(64);
        if cache_mb == 0 || cache_mb > 1 << 20 {
            return Err(format!("--cache-mb: must be 1 to 1048576, got {cache_mb}"));
        }
        let cluster = self.cluster.validate()?;
        let stream_concurrency = NonZeroUsize::new(self.stream_concurrency.unwrap_or(16))
            .filter(|c| c.get() <= 64)
            .ok_or("--stream-concurrency: must be 1 to 64")?;
        Ok(Config {
            leave_on_shutdown: self.leave_on_shutdown.unwrap_or(false),
            stream_concurrency,
            node_id: self.node_id,
            advertise,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("data")),
            zone,
            weight,
            storage: kv_storage::Options { engine, sync, compression, cache_bytes: cache_mb << 20 },
            server,
            cluster,
        })
    }
}

fn duration_setting(flag: &str, value: Option<&str>, default: &str) -> Result<Duration, String> {
    parse_duration(value.unwrap_or(default)).map_err(|e| format!("{flag}: {e}"))
}

/// Checks a node id or zone name: 1-64 of `[A-Za-z0-9._-]`.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"))
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Parses `250ms`, `10s`, `2m`, `12h`, `10d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 2m, 12h or 10d"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        _ => Err(format!("{text:?}: unit must be ms, s, m, h or d")),
    }
}

/// The node id to run as: the configured one, else the one recorded in the data directory,
/// else the host name. Records it in `data_dir/node_id` on first start, and refuses to run a data
/// directory under another id (its clocks would mix two identities).
pub fn resolve_node_id(configured: Option<&str>, data_dir: &Path) -> Result<String, String> {
    let file = data_dir.join("node_id");
    let recorded = match std::fs::read_to_string(&file) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let id = match (configured, recorded) {
        (Some(c), Some(r)) if c != r => {
            return Err(format!(
                "--node-id is {c:?} but data directory {} belongs to node {r:?}; use that id or another directory",
                data_dir.display()
            ))
        }
        (Some(c), _) => c.to_owned(),
        (None, Some(r)) => r,
        (None, None) => host_name(),
    };
    validate_node_id(&id).map_err(|e| format!("node id: {e}"))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    if !file.exists() {
        std::fs::write(&file, format!("{id}\n")).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    Ok(id)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| validate_node_id(h).is_ok())
        .unwrap_or_else(|| "kvnode".to_owned())
}

/// The engine's directory inside the data directory. Each engine has its own, and a node
/// refuses to start with one engine over another engine's data, which it could not read.
pub fn engine_dir(data_dir: &Path, engine: EngineKind) -> Result<PathBuf, String> {
    for other in [EngineKind::Fjall, EngineKind::Sled] {
        let dir = data_dir.join(other.name());
        if other != engine && dir.is_dir() {
            return Err(format!(
                "data directory {} holds {other} data ({}) but --engine is {engine}; start with --engine {other} or use another directory",
                data_dir.display(),
                dir.display()
            ));
        }
    }
    Ok(data_dir.join(engine.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.storage.engine, EngineKind::Fjall);
        assert_eq!(config.storage.sync, SyncMode::Batch);
        assert_eq!(config.server.max_value_bytes, 1 << 20);
        assert_eq!(config.cluster.coordinator.quorum, kv_coordinator::Quorum::new(3, 2, 2).unwrap());
        assert!(config.cluster.seeds.is_empty());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(Settings, &str)> = vec![
            (Settings { engine: Some("rocks".into()), ..Default::default() }, "--engine"),
            (Settings { sync: Some("sometimes".into()), ..Default::default() }, "--sync"),
            (
                Settings {
                    server: ServerSettings { listen: Some("nowhere".into()), ..Default::default() },
                    ..Default::default()
                },
                "--listen",
            ),
            (
                Settings {
                    cluster: ClusterSettings { replicas: Some(1), write_quorum: Some(2), ..Default::default() },
                    ..Default::default()
                },
                "--read-quorum/--write-quorum",
            ),
            (
                Settings {
                    cluster: ClusterSettings { seeds: Some("a:1,nowhere".into()), ..Default::default() },
                    ..Default::default()
                },
                "--seeds",
            ),
            (Settings { weight: Some(0), ..Default::default() }, "--weight"),
            (Settings { node_id: Some("a b".into()), ..Default::default() }, "--node-id"),
            (
                Settings {
                    server: ServerSettings { max_value_bytes: Some(0), ..Default::default() },
                    ..Default::default()
                },
                "--max-value-bytes",
            ),
            (
                Settings {
                    server: ServerSettings { log_format: Some("xml".into()), ..Default::default() },
                    ..Default::default()
                },
                "--log-format",
            ),
        ];
        for (settings, flag) in cases {
            let err = settings.validate().unwrap_err();
            assert!(err.starts_with(flag), "{err}");
        }
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:2\"\nzone = \"z9\"\nreplicas = 5\n").unwrap();
        let mut top = Settings {
            server: ServerSettings { listen: Some("127.0.0.1:1".into()), ..Default::default() },
            ..Default::default()
        };
        let mut file: Settings = settings_file(&path).unwrap();
        top.layer_over(&mut file);
        let config = top.validate().unwrap();
        assert_eq!(config.server.listen.port(), 1);
        assert_eq!(config.zone, "z9");
        assert_eq!(config.cluster.coordinator.quorum.n, 5);
        std::fs::write(&path, "no-such-key = 1\n").unwrap();
        assert!(settings_file::<Settings>(&path).unwrap_err().contains("no-such-key"));
    }

    #[test]
    fn example_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kvnode.example.toml");
        let settings: Settings = settings_file(&path).unwrap();
        // Every setting but `config` itself is shown in the example.
        let shown = format!("{settings:?}");
        assert_eq!(shown.matches("None").count(), 1, "{shown}");
        settings.validate().unwrap();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10d").unwrap(), Duration::from_secs(864_000));
        assert!(parse_duration("1w").is_err());
    }

    #[test]
    fn node_id_is_recorded_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_node_id(Some("n1"), dir.path()).unwrap(), "n1");
        assert_eq!(resolve_node_id(None, dir.path()).unwrap(), "n1");
        assert!(resolve_node_id(Some("n2"), dir.path()).unwrap_err().contains("belongs to node \"n1\""));
    }
}

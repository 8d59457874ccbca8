//! Configuration: flags, `KV_*` environment variables and a TOML file, validated at start-up.
//!
//! Precedence, lowest first: built-in defaults < `--config` file < environment < flags. Every
//! setting is validated into a typed value before anything starts; a bad one stops the process
//! with a message naming the setting (exit status 2).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use clap::Parser;
use kv_membership::validate_node_id;
use kv_server::config::{duration_setting, parse_addr, ClusterConfig, ClusterSettings, ServerConfig, ServerSettings};
use kv_server::layer;
use kv_server::security::{SecurityConfig, SecuritySettings};
use kv_storage::{Compression, EngineKind, SyncMode};
use serde::Deserialize;

/// Default client API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";

/// Default peer listener address.
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:7100";

/// Default admin listener address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7200";

/// Largest `--weight`: a node gets `weight × 512` vnodes, so 100 keeps rings small.
const MAX_WEIGHT: u32 = 100;

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
    /// Address of the peer listener: internal traffic from other nodes and gateways
    /// (`/internal/*` only) [default: 127.0.0.1:7100].
    #[arg(long, env = "KV_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// Address other nodes and gateways use to reach this node's peer listener; it is what the
    /// node gossips, and what `--seeds` name [default: --peer-listen].
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
    /// Whether a node that hears from no other member for --suspect-after while it runs (the
    /// others are down, or a partition cut it off) serves on: the last zone up stays writable
    /// at w=1 and readable at r=1, but a node removed by the other side of a partition serves
    /// its clients until the partition heals. With false it refuses (503 not_serving) until it
    /// hears from a member. A node that was frozen (paused, its host asleep) always confirms
    /// first [default: true].
    #[arg(long, env = "KV_SERVE_ISOLATED", num_args = 0..=1, default_missing_value = "true")]
    pub serve_isolated: Option<bool>,
    /// Ranges streamed at once while joining, leaving or re-replicating [default: 16].
    #[arg(long, env = "KV_STREAM_CONCURRENCY")]
    pub stream_concurrency: Option<usize>,
    /// Hints kept for one target node, in MiB; past it, a fallback refuses more (the write is
    /// then repaired by anti-entropy) [default: 1024].
    #[arg(long, env = "KV_HINT_MAX_MB")]
    pub hint_max_mb: Option<u64>,
    /// Hints older than this are dropped undelivered and their keys left to anti-entropy; with
    /// twice --max-clock-offset, below half of --tombstone-grace [default: 3h, or a quarter of
    /// the grace if shorter].
    #[arg(long, env = "KV_HINT_MAX_AGE")]
    pub hint_max_age: Option<String>,
    /// Hints delivered per second, at most, so a returning node is not flooded [default: 2000].
    #[arg(long, env = "KV_HINT_RATE")]
    pub hint_rate: Option<u32>,
    /// Time between anti-entropy rounds (Merkle tree comparison with every other replica)
    /// [default: 10m].
    #[arg(long, env = "KV_ANTI_ENTROPY_INTERVAL")]
    pub anti_entropy_interval: Option<String>,
    /// Time between tombstone collection passes: keys holding only tombstones older than
    /// --tombstone-grace are purged once every replica holds the same ones [default: 1h].
    #[arg(long, env = "KV_GC_INTERVAL")]
    pub gc_interval: Option<String>,
    /// Repair traffic budget of anti-entropy, bytes per second received plus sent
    /// [default: 16777216].
    #[arg(long, env = "KV_REPAIR_BYTES_PER_SEC")]
    pub repair_bytes_per_sec: Option<u64>,
    /// HTTP server settings.
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Cluster and quorum settings.
    #[command(flatten)]
    #[serde(flatten)]
    pub cluster: ClusterSettings,
    /// Cluster secret, client tokens, TLS.
    #[command(flatten)]
    #[serde(flatten)]
    pub security: SecuritySettings,
    /// Siblings a key may hold: a client write that would leave more is refused 409
    /// too_many_siblings (read the key and write back with its context to resolve them);
    /// replication, repair and hand-offs are never refused [default: 100].
    #[arg(long, env = "KV_MAX_SIBLINGS")]
    pub max_siblings: Option<usize>,
    /// Siblings past which a write is logged as a warning and counted
    /// (kv_siblings_over_warning_total) [default: 25].
    #[arg(long, env = "KV_WARN_SIBLINGS")]
    pub warn_siblings: Option<usize>,
}

/// Validated kvnode configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node id from flags, env or file; `None` means "from the data directory or host name".
    pub node_id: Option<String>,
    /// Peer listener.
    pub peer_listen: SocketAddr,
    /// Address others use for this node's peer listener.
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
    /// Serve while no other member is heard from (the process ran all along).
    pub serve_isolated: bool,
    /// Ranges streamed at once.
    pub stream_concurrency: NonZeroUsize,
    /// Hint bounds.
    pub hint_limits: kv_storage::HintLimits,
    /// Hints delivered per second.
    pub hint_rate: u32,
    /// Time between anti-entropy rounds.
    pub anti_entropy_interval: std::time::Duration,
    /// Repair bytes per second.
    pub repair_bytes_per_sec: u64,
    /// Time between tombstone collection passes.
    pub gc_interval: std::time::Duration,
    /// Cluster secret, client tokens, TLS.
    pub security: SecurityConfig,
    /// Sibling limits of client writes.
    pub siblings: kv_replica::replica::SiblingLimits,
}

impl kv_server::config::Layered for Settings {
    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone()
    }

    fn layer_over(&mut self, lower: &mut Settings) {
        layer!(
            self,
            lower,
            node_id,
            peer_listen,
            advertise,
            data_dir,
            zone,
            weight,
            engine,
            sync,
            cache_mb,
            compression,
            leave_on_shutdown,
            serve_isolated,
            stream_concurrency,
            hint_max_mb,
            hint_max_age,
            hint_rate,
            anti_entropy_interval,
            repair_bytes_per_sec,
            gc_interval,
            max_siblings,
            warn_siblings
        );
        self.server.layer_over(&mut lower.server);
        self.cluster.layer_over(&mut lower.cluster);
        self.security.layer_over(&mut lower.security);
    }
}

impl Settings {
    /// Applies defaults and checks every value.
    pub fn validate(self) -> Result<Config, String> {
        if let Some(id) = &self.node_id {
            validate_node_id(id).map_err(|e| format!("--node-id: {e}"))?;
        }
        let server = self.server.validate(DEFAULT_LISTEN, DEFAULT_ADMIN_LISTEN)?;
        let peer_text = self.peer_listen.unwrap_or_else(|| DEFAULT_PEER_LISTEN.to_owned());
        let peer_listen = parse_addr(&peer_text).map_err(|e| format!("--peer-listen: {e}"))?;
        if peer_listen == server.listen || peer_listen == server.admin_listen {
            return Err(format!("--peer-listen: must differ from --listen and --admin-listen ({peer_listen})"));
        }
        let advertise = self.advertise.unwrap_or_else(|| peer_listen.to_string());
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
        let mut cluster = self.cluster.validate()?;
        cluster.coordinator.zone = zone.clone();
        let stream_concurrency = NonZeroUsize::new(self.stream_concurrency.unwrap_or(16))
            .filter(|c| c.get() <= 64)
            .ok_or("--stream-concurrency: must be 1 to 64")?;
        let hint_max_mb = self.hint_max_mb.unwrap_or(1024);
        if hint_max_mb == 0 || hint_max_mb > 1 << 24 {
            return Err(format!("--hint-max-mb: must be 1 to 16777216, got {hint_max_mb}"));
        }
        // A hint is delivered only while its versions are younger than half the grace (the
        // hand-off rule, docs/consistency.md); one kept longer could never be delivered. The
        // default is 3 h, or a quarter of the grace if that is shorter (a hint is then taken
        // only of versions younger than a quarter of the grace).
        let half_grace = cluster.coordinator.tombstone_grace / 2;
        let hint_max_age = match self.hint_max_age.as_deref() {
            Some(text) => duration_setting("--hint-max-age", Some(text), "3h")?,
            None => (half_grace / 2).min(std::time::Duration::from_secs(3 * 3600)),
        };
        if hint_max_age.is_zero() || hint_max_age > half_grace {
            return Err(format!(
                "--hint-max-age: must be above zero and at most half of --tombstone-grace ({half_grace:?}), got {hint_max_age:?}"
            ));
        }
        let hint_rate = self.hint_rate.unwrap_or(2000);
        if hint_rate == 0 {
            return Err("--hint-rate: must be at least 1".into());
        }
        let anti_entropy_interval =
            duration_setting("--anti-entropy-interval", self.anti_entropy_interval.as_deref(), "10m")?;
        if anti_entropy_interval < std::time::Duration::from_millis(100) {
            return Err(format!("--anti-entropy-interval: must be at least 100ms, got {anti_entropy_interval:?}"));
        }
        let repair_bytes_per_sec = self.repair_bytes_per_sec.unwrap_or(16 << 20);
        if repair_bytes_per_sec < 4096 {
            return Err(format!("--repair-bytes-per-sec: must be at least 4096, got {repair_bytes_per_sec}"));
        }
        let gc_interval = duration_setting("--gc-interval", self.gc_interval.as_deref(), "1h")?;
        if gc_interval < std::time::Duration::from_millis(100) {
            return Err(format!("--gc-interval: must be at least 100ms, got {gc_interval:?}"));
        }
        let max_siblings = self.max_siblings.unwrap_or(100);
        if !(2..=10_000).contains(&max_siblings) {
            return Err(format!("--max-siblings: must be 2 to 10000, got {max_siblings}"));
        }
        let warn_siblings = self.warn_siblings.unwrap_or(25.min(max_siblings));
        if warn_siblings == 0 || warn_siblings > max_siblings {
            return Err(format!("--warn-siblings: must be 1 to --max-siblings ({max_siblings}), got {warn_siblings}"));
        }
        let security = self.security.validate()?;
        // docs/consistency.md, "Clocks": members that act differ by at most twice
        // --max-clock-offset. A fallback takes a hint only of versions younger than half the
        // grace minus --hint-max-age by its own clock, so versions stamped by a clock that far
        // behind must still be taken; and signatures must accept any two members that agree
        // with the cluster.
        let skew = cluster.max_clock_offset * 2;
        if hint_max_age + skew >= half_grace {
            return Err(format!(
                "--hint-max-age {hint_max_age:?} contradicts --tombstone-grace {:?} and --max-clock-offset {:?}: the \
                 hint age plus twice the clock offset must stay below half the grace ({half_grace:?}), or a fallback \
                 would refuse hints of fresh writes stamped by a clock behind its own; lower one of them or raise \
                 --tombstone-grace",
                cluster.coordinator.tombstone_grace, cluster.max_clock_offset
            ));
        }
        let signed_skew = skew + cluster.coordinator.replica_timeout;
        if security.max_skew < signed_skew {
            return Err(format!(
                "--auth-max-skew {:?} contradicts --max-clock-offset {:?}: signatures must accept twice the clock \
                 offset two members may have plus a replica timeout in transit ({signed_skew:?}), or members whose \
                 clocks the cluster accepts would refuse each other",
                security.max_skew, cluster.max_clock_offset
            ));
        }
        Ok(Config {
            security,
            siblings: kv_replica::replica::SiblingLimits {
                max: max_siblings,
                warn: warn_siblings,
                max_bytes: server.max_value_bytes.saturating_mul(8),
            },
            gc_interval,
            hint_limits: kv_storage::HintLimits {
                max_bytes_per_target: hint_max_mb << 20,
                max_age_ms: hint_max_age.as_millis() as u64,
            },
            hint_rate,
            anti_entropy_interval,
            repair_bytes_per_sec,
            leave_on_shutdown: self.leave_on_shutdown.unwrap_or(false),
            serve_isolated: self.serve_isolated.unwrap_or(true),
            stream_concurrency,
            node_id: self.node_id,
            peer_listen,
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
    use kv_server::config::{parse_duration, settings_file, Layered};
    use std::time::Duration;

    /// Settings with `--insecure` (no secret needed) and nothing else set.
    fn insecure() -> Settings {
        Settings { security: SecuritySettings { insecure: Some(true), ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn defaults_are_valid() {
        let config = insecure().validate().unwrap();
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
            (Settings { engine: Some("rocks".into()), ..insecure() }, "--engine"),
            (Settings { sync: Some("sometimes".into()), ..insecure() }, "--sync"),
            (
                Settings {
                    server: ServerSettings { listen: Some("nowhere".into()), ..Default::default() },
                    ..insecure()
                },
                "--listen",
            ),
            (
                Settings {
                    cluster: ClusterSettings { replicas: Some(1), write_quorum: Some(2), ..Default::default() },
                    ..insecure()
                },
                "--read-quorum/--write-quorum",
            ),
            (
                Settings {
                    cluster: ClusterSettings { seeds: Some("a:1,nowhere".into()), ..Default::default() },
                    ..insecure()
                },
                "--seeds",
            ),
            (Settings { weight: Some(0), ..insecure() }, "--weight"),
            (Settings { node_id: Some("a b".into()), ..insecure() }, "--node-id"),
            (Settings::default(), "no cluster secret"),
            (
                Settings { server: ServerSettings { max_value_bytes: Some(0), ..Default::default() }, ..insecure() },
                "--max-value-bytes",
            ),
            (
                Settings {
                    server: ServerSettings { log_format: Some("xml".into()), ..Default::default() },
                    ..insecure()
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
            ..insecure()
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
        let mut settings: Settings = settings_file(&path).unwrap();
        // Every setting but `config` itself is shown in the example.
        let shown = format!("{settings:?}");
        assert_eq!(shown.matches("None").count(), 1, "{shown}");
        // Its files, made here where the example names them.
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Some(path)
        };
        let security = &mut settings.security;
        security.cluster_secret_file = file("secret", &"s".repeat(64));
        security.client_tokens_file = file("tokens", "read r-0123456789abcdef\nwrite w-0123456789abcdef\n");
        security.admin_tokens_file = file("admin-tokens", "read v-0123456789abcdef\nadmin a-0123456789abcdef\n");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        security.tls_cert = file("crt", &ca.cert.pem());
        security.tls_key = file("key", &ca.key_pair.serialize_pem());
        security.tls_ca = file("ca", &ca.cert.pem());
        let config = settings.validate().unwrap();
        kv_server::tls::Tls::load(config.security.tls.as_ref().unwrap()).unwrap();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10d").unwrap(), Duration::from_secs(864_000));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        let refused = parse_duration("10 fortnights").unwrap_err();
        assert!(refused.contains("1h30m"), "{refused}");
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn node_id_is_recorded_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_node_id(Some("n1"), dir.path()).unwrap(), "n1");
        assert_eq!(resolve_node_id(None, dir.path()).unwrap(), "n1");
        assert!(resolve_node_id(Some("n2"), dir.path()).unwrap_err().contains("belongs to node \"n1\""));
    }
}

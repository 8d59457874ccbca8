//! `kvbench`: YCSB-style load for the store, and for the stores it is compared with.
//!
//! Workloads: `a` (50% reads, 50% updates), `b` (95/5), `c` (reads only), `w` (writes only),
//! over `--keys` keys chosen uniformly or by a zipfian distribution, with `--value-size`-byte
//! values, `--concurrency` requests in flight, for `--duration` or `--ops`. A load phase writes
//! every key first (skip with `--no-load`). Latencies go into an HDR histogram (p50, p90, p99,
//! p99.9, max); errors are counted by kind. Targets (`--protocol`):
//!
//! - `kv`: this store's client API (`PUT`/`GET /kv/{key}`, `?r=`/`?w=`), at a gateway or node;
//! - `noop`: `GET`/`PUT` on a no-op endpoint (`--url .../noop`): the HTTP ceiling;
//! - `etcd`: etcd's v3 HTTP/JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`);
//! - `redis`: Redis over RESP (`SET`/`GET`), `--url redis://host:port`.
//!
//! Writes to this store carry the context of the key's last read or write (from `X-Context`),
//! as a client updating its keys does, so an overwrite supersedes the previous value; with
//! `--blind` they carry none, and every overwrite of a key becomes one more sibling.
//!
//! A progress line goes to stderr every second; the result is a table, or JSON with `--json`.

/// mimalloc: glibc malloc and free were ~15% of CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// Writes only.
    W,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Distribution {
    Uniform,
    Zipfian,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Protocol {
    Kv,
    Noop,
    Etcd,
    Redis,
}

#[derive(Parser, Debug)]
#[command(
    name = "kvbench",
    version,
    about = "YCSB-style benchmark for the kv store (and etcd, Redis, the HTTP ceiling)"
)]
struct Args {
    /// Target base URL (http://host:port, or redis://host:port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// What the target speaks.
    #[arg(long, value_enum, default_value = "kv")]
    protocol: Protocol,
    /// Workload mix.
    #[arg(long, value_enum, default_value = "a")]
    workload: Workload,
    /// Key space size.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Key choice.
    #[arg(long, value_enum, default_value = "uniform")]
    distribution: Distribution,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to run the measured phase, in seconds (ignored with --ops).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Run this many operations instead of a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Per-request read quorum (kv only).
    #[arg(long)]
    r: Option<String>,
    /// Per-request write quorum (kv only).
    #[arg(long)]
    w: Option<String>,
    /// Skip the load phase (the keys exist already).
    #[arg(long)]
    no_load: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// `kv`: write without the key's last context (each overwrite becomes a sibling).
    #[arg(long)]
    blind: bool,
    /// Keys are `<prefix><index>`; default `user`, and `wuser` for `w`, whose writes then
    /// start on keys no earlier run (of another kvbench process) wrote: its first write of each
    /// key has no context to carry.
    #[arg(long)]
    key_prefix: Option<String>,
    /// Name of this run in the output.
    #[arg(long, default_value = "run")]
    label: String,
    /// CA certificate (PEM) to trust for an https:// URL.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client token sent as `Authorization: Bearer TOKEN` (a cluster with client tokens on, the
    /// chart's default); or set KV_TOKEN.
    #[arg(long, env = "KV_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// How HTTP connections are opened: TLS with this configuration for https:// URLs.
#[derive(Clone)]
struct Dialer {
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
}

impl Dialer {
    async fn connect(&self, address: &str) -> Result<Box<dyn Stream>, String> {
        let tcp = TcpStream::connect(address).await.map_err(|_| "connection".to_string())?;
        tcp.set_nodelay(true).map_err(|_| "connection".to_string())?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), tcp).await.map_err(|_| "tls".to_string())?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// The dialer for `url`: TLS when it is https://, trusting `ca`.
fn dialer(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Dialer> {
    let Some(rest) = url.strip_prefix("https://") else { return Ok(Dialer { tls: None }) };
    use rustls_pki_types::pem::PemObject as _;
    let ca = ca.context("an https:// URL needs --tls-ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let host = rest.split(['/', ':']).next().unwrap_or("localhost").to_owned();
    let name = rustls_pki_types::ServerName::try_from(host).context("the URL's host is not a TLS server name")?;
    Ok(Dialer { tls: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)) })
}

/// One connection's way of doing a read or a write.
///
/// HTTP targets are driven over one plain HTTP/1.1 keep-alive connection per worker, written
/// by hand like the Redis one: a general client (reqwest) cost more CPU per request than the
/// server it measured, and on a 2-core machine the load generator's cost comes out of every
/// target's numbers. It is the same code for this store, the no-op ceiling and etcd.
enum Conn {
    Http {
        address: String,
        dialer: Dialer,
        stream: Option<BufReader<Box<dyn Stream>>>,
        protocol: Protocol,
        base_path: String,
        r: String,
        w: String,
        /// The last context seen per key (`kv` without `--blind`).
        contexts: Option<Arc<Contexts>>,
        /// Header lines sent with every request (the token's `authorization`), or empty.
        headers: String,
    },
    Redis {
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
    },
}

/// The last `X-Context` seen per key, in shards so that workers rarely wait on each other.
struct Contexts(Vec<Mutex<std::collections::HashMap<String, String>>>);

impl Contexts {
    fn new() -> Contexts {
        Contexts((0..64).map(|_| Mutex::new(std::collections::HashMap::new())).collect())
    }

    fn shard(&self, key: &str) -> &Mutex<std::collections::HashMap<String, String>> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        &self.0[(hash % self.0.len() as u64) as usize]
    }

    fn get(&self, key: &str) -> Option<String> {
        self.shard(key).lock().ok()?.get(key).cloned()
    }

    fn set(&self, key: &str, context: String) {
        if let Ok(mut shard) = self.shard(key).lock() {
            shard.insert(key.to_owned(), context);
        }
    }
}

/// Deadline of one operation, connection included.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

impl Conn {
    async fn open(args: &Args, contexts: &Arc<Contexts>) -> anyhow::Result<Conn> {
        if args.protocol == Protocol::Redis {
            let address = args.url.trim_start_matches("redis://");
            let stream = TcpStream::connect(address).await.with_context(|| format!("connect {address}"))?;
            stream.set_nodelay(true)?;
            let (read, writer) = stream.into_split();
            return Ok(Conn::Redis { reader: BufReader::new(read), writer });
        }
        let rest = args
            .url
            .strip_prefix("http://")
            .or_else(|| args.url.strip_prefix("https://"))
            .with_context(|| format!("--url {}: expected http(s)://host:port[/path]", args.url))?;
        let (address, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let q = |name: &str, v: &Option<String>| v.as_ref().map_or(String::new(), |v| format!("?{name}={v}"));
        Ok(Conn::Http {
            address: address.to_owned(),
            dialer: dialer(&args.url, args.tls_ca.as_deref())?,
            stream: None,
            protocol: args.protocol,
            base_path: format!("/{}", path.trim_end_matches('/')).trim_end_matches('/').to_owned(),
            r: q("r", &args.r),
            w: q("w", &args.w),
            contexts: (args.protocol == Protocol::Kv && !args.blind).then(|| contexts.clone()),
            headers: args.token.as_ref().map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n")),
        })
    }

    /// Performs one operation; `Err` carries the error kind.
    async fn op(&mut self, write: bool, key: &str, value: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(OP_TIMEOUT, self.op_inner(write, key, value)).await {
            Ok(result) => result,
            Err(_) => {
                if let Conn::Http { stream, .. } = self {
                    *stream = None;
                }
                Err("timeout".into())
            }
        }
    }

    async fn op_inner(&mut self, write: bool, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            Conn::Http { address, dialer, stream, protocol, base_path, r, w, contexts, headers } => {
                let (method, path, body) = match (*protocol, write) {
                    (Protocol::Kv, true) => ("PUT", format!("{base_path}/kv/{key}{w}"), value.to_vec()),
                    (Protocol::Kv, false) => ("GET", format!("{base_path}/kv/{key}{r}"), Vec::new()),
                    (Protocol::Noop, true) => ("PUT", base_path.clone(), value.to_vec()),
                    (Protocol::Noop, false) => ("GET", base_path.clone(), Vec::new()),
                    (Protocol::Etcd, true) => {
                        ("POST", format!("{base_path}/v3/kv/put"), etcd_body(key, Some(value)).into_bytes())
                    }
                    (Protocol::Etcd, false) => {
                        ("POST", format!("{base_path}/v3/kv/range"), etcd_body(key, None).into_bytes())
                    }
                    (Protocol::Redis, _) => return Err("internal: redis over http".into()),
                };
                if stream.is_none() {
                    *stream = Some(BufReader::new(dialer.connect(address.as_str()).await?));
                }
                let conn = stream.as_mut().ok_or("connection")?;
                let context = if write { contexts.as_ref().and_then(|c| c.get(key)) } else { None };
                let head = Head { host: address, headers, context: context.as_deref() };
                let result = http_exchange(conn, &head, method, &path, &body).await;
                match result {
                    Ok((status, keep_alive, context)) => {
                        if !keep_alive {
                            *stream = None;
                        }
                        if let (Some(contexts), Some(context)) = (contexts.as_ref(), context) {
                            contexts.set(key, context);
                        }
                        if (200..300).contains(&status) || (!write && status == 404) || status == 300 {
                            Ok(())
                        } else {
                            Err(format!("http_{status}"))
                        }
                    }
                    Err(kind) => {
                        *stream = None;
                        Err(kind)
                    }
                }
            }
            Conn::Redis { reader, writer } => {
                let mut command = Vec::with_capacity(64 + value.len());
                if write {
                    command.extend_from_slice(
                        format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n", key.len(), value.len()).as_bytes(),
                    );
                    command.extend_from_slice(value);
                    command.extend_from_slice(b"\r\n");
                } else {
                    command.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
                }
                writer.write_all(&command).await.map_err(|_| "connection".to_string())?;
                let mut line = String::new();
                reader.read_line(&mut line).await.map_err(|_| "connection".to_string())?;
                match line.as_bytes().first() {
                    Some(b'+') => Ok(()),
                    Some(b'$') => {
                        let len: i64 = line[1..].trim().parse().map_err(|_| "protocol".to_string())?;
                        if len >= 0 {
                            let mut body = vec![0u8; len as usize + 2];
                            reader.read_exact(&mut body).await.map_err(|_| "connection".to_string())?;
                        }
                        Ok(())
                    }
                    _ => Err(format!("redis_error: {}", line.trim())),
                }
            }
        }
    }
}

/// Reads one line into `line` (cleared first); end of stream is an error.
async fn read_line(conn: &mut BufReader<Box<dyn Stream>>, line: &mut String) -> Result<(), String> {
    line.clear();
    match conn.read_line(line).await {
        Ok(0) | Err(_) => Err("connection".to_string()),
        Ok(_) => Ok(()),
    }
}

/// The header lines of one request besides its length.
struct Head<'a> {
    host: &'a str,
    /// Lines sent with every request (`authorization`), each ending `\r\n`.
    headers: &'a str,
    /// The key's last `x-context`, if any.
    context: Option<&'a str>,
}

/// One HTTP/1.1 request (with `x-context` if given) and its whole response (body read and
/// dropped). Returns the status, whether the connection stays open, and the response's
/// `x-context`; `Err` is an error kind.
async fn http_exchange(
    conn: &mut BufReader<Box<dyn Stream>>,
    head: &Head<'_>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, bool, Option<String>), String> {
    let mut request = Vec::with_capacity(256 + body.len());
    let context = head.context.map_or(String::new(), |c| format!("x-context: {c}\r\n"));
    let (host, headers) = (head.host, head.headers);
    request.extend_from_slice(
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n{headers}{context}content-length: {}\r\n\r\n", body.len())
            .as_bytes(),
    );
    request.extend_from_slice(body);
    conn.get_mut().write_all(&request).await.map_err(|_| "connection".to_string())?;
    let mut line = String::new();
    read_line(conn, &mut line).await?;
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("protocol")?;
    let (mut length, mut chunked, mut keep_alive, mut context) = (None, false, true, None);
    loop {
        read_line(conn, &mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { return Err("protocol".into()) };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "protocol")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("x-context") {
            context = Some(value.to_owned());
        }
    }
    let mut sink = Vec::new();
    if chunked {
        loop {
            read_line(conn, &mut line).await?;
            let size =
                usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).map_err(|_| "protocol")?;
            sink.resize(size + 2, 0);
            conn.read_exact(&mut sink).await.map_err(|_| "connection".to_string())?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = length {
        sink.resize(length, 0);
        conn.read_exact(&mut sink).await.map_err(|_| "connection".to_string())?;
    } else if status != 204 && status != 304 && method != "HEAD" {
        // Body until close.
        conn.read_to_end(&mut sink).await.map_err(|_| "connection".to_string())?;
        keep_alive = false;
    }
    Ok((status, keep_alive, context))
}

fn etcd_body(key: &str, value: Option<&[u8]>) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    match value {
        Some(v) => format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key.as_bytes()), b64(v)),
        None => format!("{{\"key\":\"{}\"}}", b64(key.as_bytes())),
    }
}

/// Zipfian key choice (YCSB's constant 0.99) over `n` items, by inverse CDF on a precomputed table.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64) -> Zipf {
        let weights: Vec<f64> = (1..=n).map(|i| 1.0 / (i as f64).powf(0.99)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        Zipf {
            cdf: weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect(),
        }
    }

    fn sample(&self, u: f64) -> u64 {
        self.cdf.partition_point(|c| *c < u) as u64
    }
}

/// xorshift64*, one per worker: key and operation choice without locks.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Shared {
    histogram: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    done: AtomicU64,
    issued: AtomicU64,
    stop: AtomicBool,
}

async fn run_phase(args: &Args, load: bool, contexts: &Arc<Contexts>) -> anyhow::Result<(Arc<Shared>, Duration)> {
    let shared = Arc::new(Shared {
        histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(BTreeMap::new()),
        done: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let zipf = Arc::new((args.distribution == Distribution::Zipfian).then(|| Zipf::new(args.keys)));
    let limit = if load { Some(args.keys) } else { args.ops };
    let value = Arc::new(vec![b'v'; args.value_size]);
    let prefix: Arc<str> = args
        .key_prefix
        .clone()
        .unwrap_or_else(|| if args.workload == Workload::W { "wuser" } else { "user" }.to_owned())
        .into();
    let read_fraction = match args.workload {
        Workload::A => 0.5,
        Workload::B => 0.95,
        Workload::C => 1.0,
        Workload::W => 0.0,
    };
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let mut conn = Conn::open(args, contexts).await?;
        let (shared, zipf, value, prefix) = (shared.clone(), zipf.clone(), value.clone(), prefix.clone());
        let keys = args.keys;
        workers.push(tokio::spawn(async move {
            let mut rand = Rand(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("invariant: valid bounds");
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let n = shared.issued.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let (write, index) = if load {
                    (true, n)
                } else {
                    let index = match zipf.as_ref() {
                        Some(z) => z.sample(rand.unit()),
                        None => rand.next() % keys,
                    };
                    (rand.unit() >= read_fraction, index)
                };
                let key = format!("{prefix}{index:010}");
                let t = Instant::now();
                let result = conn.op(write, &key, &value).await;
                let micros = t.elapsed().as_micros() as u64;
                match result {
                    Ok(()) => {
                        let _ = local.record(micros.max(1));
                    }
                    Err(kind) => {
                        *shared.errors.lock().expect("invariant: no panics while locked").entry(kind).or_default() += 1;
                    }
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            let _ = shared.histogram.lock().map(|mut h| h.add(&local));
        }));
    }
    let progress = {
        let shared = shared.clone();
        let total = limit;
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = shared.done.load(Ordering::Relaxed);
                match total {
                    Some(t) => {
                        eprint!("\r{} {done}/{t} ops, {} ops/s   ", if load { "load" } else { "run" }, done - last)
                    }
                    None => eprint!("\rrun {done} ops, {} ops/s   ", done - last),
                }
                last = done;
            }
        })
    };
    if limit.is_none() {
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        shared.stop.store(true, Ordering::Relaxed);
    }
    for w in workers {
        let _ = w.await;
    }
    progress.abort();
    eprintln!();
    Ok((shared, started.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.keys == 0 || args.concurrency == 0 {
        bail!("--keys and --concurrency must be at least 1");
    }
    let contexts = Arc::new(Contexts::new());
    if !args.no_load && args.workload != Workload::W && args.protocol != Protocol::Noop {
        let (load, took) = run_phase(&args, true, &contexts).await?;
        eprintln!("loaded {} keys in {:.1} s", load.done.load(Ordering::Relaxed), took.as_secs_f64());
    }
    let cpu_before = process_cpu_seconds();
    let (shared, took) = run_phase(&args, false, &contexts).await?;
    // What the load generator itself took of the machine during the measured phase: on a
    // small machine it competes with the servers it measures.
    let loader_cpu = process_cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
    let loader_cores = loader_cpu.map(|cpu| cpu / took.as_secs_f64());
    let histogram = shared.histogram.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?.clone();
    let errors = shared.errors.lock().map_err(|_| anyhow::anyhow!("errors lock poisoned"))?.clone();
    let ok = histogram.len();
    let ops_per_sec = ok as f64 / took.as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        let result = serde_json::json!({
            "label": args.label,
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "keys": args.keys, "value_size": args.value_size, "concurrency": args.concurrency,
            "seconds": took.as_secs_f64(), "ops": ok, "ops_per_sec": ops_per_sec,
            "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
            "max_ms": histogram.max() as f64 / 1000.0, "errors": errors,
            "loader_cpu_s": loader_cpu, "loader_cores": loader_cores,
        });
        println!("{result}");
    } else {
        println!(
            "{:<24} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}  errors",
            "run", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "loader cores"
        );
        println!(
            "{:<24} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12}  {:?}",
            args.label,
            ops_per_sec,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0,
            loader_cores.map_or("-".to_owned(), |c| format!("{c:.2}")),
            errors
        );
    }
    Ok(())
}

/// CPU time this process has used so far, user and system, in seconds (`/proc/self/stat`);
/// `None` where there is no such file.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces): state is field 3, utime
    // and stime are fields 14 and 15, in clock ticks of USER_HZ (100 on Linux, whatever the
    // kernel's own tick).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

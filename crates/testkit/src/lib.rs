//! # Test harness for multi-process tests
//!
//! Starts the real `kvnode` and `kvgateway` binaries (found beside the running test executable
//! in cargo's target directory, so `cargo build --bins` or a workspace test run must have
//! built them) on free loopback ports with data in temp directories, waits until they serve,
//! and kills every one of them on drop, even when the test panics.
//!
//! Every process a test starts holds the same cluster secret ([`secret`], drawn once per test
//! process, given in `KV_CLUSTER_SECRET`) unless its arguments say `--insecure` or name a
//! secret file; admin requests go through [`Proc::admin`], signed with it, and raw peer requests
//! can be signed with [`sign_peer`].
//!
//! # Layout
//! - [`Proc`] — one child process.
//! - [`Cluster`] — N nodes and G gateways that know each other.
//! - helpers: [`free_port`], [`encode_key`], [`binary`], [`secret`], [`signer`].

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;

/// Whether the binaries under test predate `--expect-nodes` (`KV_TEST_LEGACY=1`, with
/// `KV_TEST_BIN_DIR`): flags they lack are left out, so that old code fails a test on its
/// behaviour, not on its command line.
pub fn legacy() -> bool {
    std::env::var("KV_TEST_LEGACY").is_ok_and(|v| v == "1")
}

/// Ports handed to test processes: below the kernel's ephemeral range (32768 and up here), so
/// that no outgoing connection of any process takes one between the check and the child's bind,
/// or while a killed process is restarted on it.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// Claims `port` for this test process until it exits: an exclusive lock on a file named after
/// it, which every test process checks. A port handed to a child stays claimed while the child
/// is killed and restarted on it, so no other test process (they run in parallel) takes it in
/// between. The lock goes with the process.
fn claim(port: u16) -> bool {
    static CLAIMED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("kv-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let Ok(file) =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
    else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }
    CLAIMED.lock().unwrap().push(file);
    true
}

/// A listener on a free port of [`TEST_PORTS`] that no other test process has claimed, starting
/// the search at a point that differs between calls and between test processes running at once.
fn bind_free() -> TcpListener {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (u64::from(std::process::id()) << 32 ^ u64::from(nanos) ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0x2545_F491_4F6C_DD1D);
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    (0..span)
        .map(|i| TEST_PORTS.start + ((seed >> 16).wrapping_add(i * 7919) % span) as u16)
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok().filter(|_| claim(port)))
        .expect("a free test port")
}

/// A free TCP port on loopback (bound, then released for the child to take).
pub fn free_port() -> u16 {
    bind_free().local_addr().unwrap().port()
}

/// `n` distinct free TCP ports on loopback: all bound at once, then released, so that one
/// process never gets the same port twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N).map(|_| bind_free()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Path of a workspace binary (`kvnode`, `kvgateway`, `kvctl`) built for this test run, or in
/// `KV_TEST_BIN_DIR` when set (to run the tests against the binaries of another commit).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("KV_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` (make test does)", path.display());
    path
}

/// The cluster secret every process of this test process gets (random, drawn once), in
/// `KV_CLUSTER_SECRET`: set it too for a `kvctl` that signs admin commands.
pub fn secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| kv_transport::secret::generate().unwrap())
}

/// A signer holding [`secret`] (one sender for the whole test process).
pub fn signer() -> &'static kv_transport::Signer {
    static SIGNER: std::sync::OnceLock<kv_transport::Signer> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| kv_transport::Signer::new(&kv_transport::Secrets::parse(secret()).unwrap()))
}

/// The signature header value for a `POST` of `body` to `path` on `proc`'s peer listener.
pub fn sign_peer(proc: &Proc, path: &str, body: &[u8]) -> String {
    signer().sign("POST", path, &proc.address(), body)
}

/// Percent-encodes every byte outside the unreserved set, so any key is one path segment.
pub fn encode_key(key: &str) -> String {
    kv_client::encode_key(key)
}

const LOCALHOST: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// The ports a process listens on, on its loopback address (127.0.0.1 unless [`Ports::on`]).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The address it listens on (and, being a peer, calls from).
    pub host: std::net::Ipv4Addr,
    /// Client API (`--listen`).
    pub client: u16,
    /// Peer listener (`--peer-listen`), nodes only.
    pub peer: Option<u16>,
    /// Admin listener (`--admin-listen`).
    pub admin: u16,
}

impl Ports {
    /// Free ports for a node. Binaries from before the three listeners (`KV_TEST_LEGACY=1`)
    /// serve everything on one port.
    pub fn node() -> Ports {
        let [client, peer, admin] = free_ports();
        if legacy() {
            return Ports { host: LOCALHOST, client, peer: Some(client), admin: client };
        }
        Ports { host: LOCALHOST, client, peer: Some(peer), admin }
    }

    /// Free ports for a gateway (no peer listener).
    pub fn gateway() -> Ports {
        let [client, admin] = free_ports();
        if legacy() {
            return Ports { host: LOCALHOST, client, peer: None, admin: client };
        }
        Ports { host: LOCALHOST, client, peer: None, admin }
    }

    /// The same ports on loopback address `host` (127.0.0.2, ...: every 127/8 address is local
    /// on Linux), so that firewall rules can tell processes apart.
    pub fn on(self, host: std::net::Ipv4Addr) -> Ports {
        Ports { host, ..self }
    }

    /// The flags that make a process listen on these ports.
    pub fn args(&self) -> Vec<String> {
        let host = self.host;
        let mut args = vec!["--listen".to_owned(), format!("{host}:{}", self.client)];
        if legacy() {
            return args;
        }
        if let Some(peer) = self.peer {
            args.extend(["--peer-listen".to_owned(), format!("{host}:{peer}")]);
        }
        args.extend(["--admin-listen".to_owned(), format!("{host}:{}", self.admin)]);
        args
    }
}

/// One running server process. Killed (SIGKILL) on drop.
pub struct Proc {
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    /// Its client API port on 127.0.0.1.
    pub port: u16,
    /// All its ports.
    pub ports: Ports,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` (which must make it listen on `ports`), logging to `log`,
    /// and waits until it is live (`/health/live` answers 200).
    pub fn start(program: PathBuf, args: Vec<String>, ports: Ports, log: PathBuf) -> Proc {
        let mut proc = Proc { child: None, program, args, port: ports.client, ports, log };
        proc.spawn();
        proc
    }

    fn spawn(&mut self) {
        self.spawn_child();
        self.wait_ready();
    }

    /// Starts the process, its stderr appended to the log, without waiting for it.
    fn spawn_child(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(&self.program);
        // The test run's secret, unless the test gives its own or none.
        let own = self.args.iter().any(|a| a == "--insecure" || a.starts_with("--cluster-secret-file"));
        if own {
            command.env_remove("KV_CLUSTER_SECRET");
        } else {
            command.env("KV_CLUSTER_SECRET", secret());
        }
        let child = command
            .args(&self.args)
            // `KV_TEST_LOG` (a `RUST_LOG` filter) to see more of what a failing test's processes did.
            .env("RUST_LOG", std::env::var("KV_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status} before serving:\n{}", self.program.display(), self.log_text());
            }
            if self.live(&client) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not become ready:\n{}", self.program.display(), self.log_text());
    }

    fn live(&self, client: &Client) -> bool {
        let path = if legacy() { "/health" } else { "/health/live" };
        client.get(self.url(path)).send().is_ok_and(|r| r.status().is_success())
    }

    /// The value of command-line flag `flag` (such as `--data-dir`), if it was given.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        self.args.iter().position(|a| a == flag).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }

    /// The same program and arguments started again through the shell script `wrapper` (as a
    /// container's entry point would: `sh WRAPPER PROGRAM ARGS...`, with `env` set), logging
    /// to the same file; waits until it is live. This process must have exited.
    pub fn start_through(&self, wrapper: &std::path::Path, env: &[(&str, &str)]) -> Proc {
        assert!(self.child.is_none(), "{} is still running", self.program.display());
        let assignments: Vec<String> = env.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
        let mut args = vec![
            "-c".to_owned(),
            format!("{} exec sh '{}' \"$@\"", assignments.join(" "), wrapper.display()),
            "wrapper".to_owned(),
            self.program.display().to_string(),
        ];
        args.extend(self.args.iter().cloned());
        Proc::start(PathBuf::from("sh"), args, self.ports, self.log.clone())
    }

    /// What the process wrote to stderr.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port><path>`, on the listener that serves `path`: `/internal/*` on
    /// the peer port; `/admin/*`, `/cluster/*`, `/health*` and `/metrics` on the admin port;
    /// anything else on the client port.
    pub fn url(&self, path: &str) -> String {
        let admin = ["/admin/", "/cluster/", "/health", "/metrics"].iter().any(|p| path.starts_with(p));
        let port = if path.starts_with("/internal/") {
            self.ports.peer.unwrap_or(self.ports.client)
        } else if admin {
            self.ports.admin
        } else {
            self.ports.client
        };
        format!("{}://{}:{port}{path}", self.scheme(), self.ports.host)
    }

    /// `https` when the process runs with `--tls-cert`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.arg("--tls-cert").is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// An HTTP client for this process: trusting its `--tls-ca` when it has one. One client per
    /// CA for the whole test binary (cheap clones): building one reads the system's root
    /// certificates, which in a debug build took a core of the helpers' polling loops.
    pub fn client(&self) -> Client {
        static CLIENTS: std::sync::OnceLock<Mutex<HashMap<Option<String>, Client>>> = std::sync::OnceLock::new();
        let ca = self.arg("--tls-ca").map(str::to_owned);
        let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap();
        clients
            .entry(ca.clone())
            .or_insert_with(|| {
                let mut builder = Client::builder().timeout(Duration::from_secs(30));
                if let Some(ca) = ca {
                    for cert in reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap() {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                builder.build().unwrap()
            })
            .clone()
    }

    /// `http://127.0.0.1:<admin port><path>`, whatever the path.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}://{}:{}{}", self.scheme(), self.ports.host, self.ports.admin, path)
    }

    /// The status line of the worker `name` (`/admin/workers`), if the process answers.
    pub fn worker_status(&self, name: &str) -> Option<String> {
        let workers: Value = self.admin(reqwest::Method::GET, "/admin/workers").send().ok()?.json().ok()?;
        workers["workers"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == name)
            .and_then(|w| w["status"].as_str())
            .map(str::to_owned)
    }

    /// A request to `path` (with its query) on the admin listener, signed with the test run's
    /// cluster secret for this process (its id, from `/health/live`).
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let client = self.client();
        let id = match self.arg("--node-id") {
            Some(id) => id.to_owned(),
            None => client
                .get(self.admin_url("/health/live"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        };
        let signature = signer().sign(method.as_str(), path, &id, b"");
        client.request(method, self.admin_url(path)).header(kv_transport::SIGNATURE_HEADER, signature)
    }

    /// `http://127.0.0.1:<client port><path>`, whatever the path.
    pub fn client_url(&self, path: &str) -> String {
        format!("{}://{}:{}{}", self.scheme(), self.ports.host, self.ports.client, path)
    }

    /// URL of a key on the client API.
    pub fn key_url(&self, key: &str) -> String {
        self.url(&format!("/kv/{}", encode_key(key)))
    }

    /// `host:port` other processes reach it at: a node's peer listener, a gateway's client API.
    pub fn address(&self) -> String {
        format!("{}:{}", self.ports.host, self.ports.peer.unwrap_or(self.ports.client))
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, without waiting (see [`Proc::wait_exit`]).
    pub fn send_term(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`HUP`, `TERM`, ...) to the process, if running.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
        }
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then the exit status (SIGKILL and a panic if it does not exit in 30 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process running");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit after SIGTERM", self.program.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process gracefully (SIGTERM, as a rolling restart does) and starts `program`
    /// in its place with the same arguments, ports, data and log; waits until it is live.
    /// Returns how long the process was not answering.
    pub fn replace_program(&mut self, program: PathBuf) -> Duration {
        let stopped = Instant::now();
        let status = self.terminate();
        assert!(status.success(), "{} stopped with {status} on SIGTERM:\n{}", self.program.display(), self.log_text());
        self.program = program;
        self.spawn();
        stopped.elapsed()
    }

    /// The program this process runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Waits for the process to exit by itself (within `limit`, else SIGKILL and panic).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("process running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit within {limit:?}:\n{}", self.program.display(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same process again (same port, same arguments), killing it first if running.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the same process again without waiting for it to serve; returns how it ended if
    /// it exits within `limit` (a refusal to start), `None` if it serves by then.
    pub fn restart_may_refuse(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.kill9();
        self.spawn_child();
        let deadline = Instant::now() + limit;
        let client = self.client();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if self.live(&client) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGSTOP: the process freezes with its connections open (a long GC pause, a VM stall).
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-STOP").arg(child.id().to_string()).status();
        }
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what this process said (more with `KV_TEST_LOG`).
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("fjall") && !l.contains("lsm_tree")).collect();
            eprintln!("== {} {} (last lines of its log)", self.program.display(), self.address());
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
        // A paused process must be able to die.
        self.resume();
        self.kill9();
    }
}

/// Member id → status (`normal`, `down`, ...) as `proc` sees them.
pub fn statuses(proc: &Proc) -> std::collections::BTreeMap<String, String> {
    proc.client()
        .get(proc.url("/cluster/members"))
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok())
        .and_then(|v| {
            v["members"].as_array().map(|members| {
                members
                    .iter()
                    .map(|m| (m["id"].as_str().unwrap_or("").to_owned(), m["status"].as_str().unwrap_or("").to_owned()))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Starts one standalone kvnode in `data_dir` with extra `args`, on a free port. A cluster of
/// one holds one replica per key: `--replicas 1` unless `args` set it.
pub fn start_node(data_dir: &Path, args: &[&str]) -> Proc {
    let ports = Ports::node();
    let mut all = ports.args();
    all.extend(["--data-dir".to_owned(), data_dir.display().to_string()]);
    if !args.contains(&"--replicas") && !legacy() {
        all.extend(["--replicas".to_owned(), "1".to_owned()]);
    }
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::start(binary("kvnode"), all, ports, data_dir.with_extension("log"))
}

/// Gossip and timeout settings for test clusters: rounds every 200 ms, suspicion after 2 s, so
/// joins and failure detection take seconds, not minutes; replica calls bounded by 2 s, which a
/// debug build under the whole test suite's load still meets.
pub const FAST_GOSSIP: [&str; 6] = ["--gossip-interval", "200ms", "--suspect-after", "2s", "--replica-timeout", "2s"];

/// [`FAST_GOSSIP`] without the flags `extra` sets itself.
fn fast_gossip_unless(extra: &[&str]) -> Vec<String> {
    FAST_GOSSIP.chunks(2).filter(|pair| !extra.contains(&pair[0])).flatten().map(|s| s.to_string()).collect()
}

/// A plain-HTTP client with `timeout`. Without the system's root certificates: reading them
/// costs a debug build tens of milliseconds of CPU per client, which added up to a core in the
/// tests' polling helpers.
pub fn http_client(timeout: Duration) -> Client {
    Client::builder().timeout(timeout).tls_certs_only(Vec::new()).build().unwrap()
}

/// Writes `keys` keys `key-0`.. with value `value-<i>` through `base` (a gateway or node URL)
/// from `threads` threads at the cluster's default W. Panics on any failed write.
pub fn load(base: &str, keys: usize, threads: usize) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let client = http_client(Duration::from_secs(60));
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= keys {
                        return;
                    }
                    let response = client.put(format!("{base}/kv/key-{i}")).body(format!("value-{i}")).send().unwrap();
                    assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT, "loading key-{i}");
                }
            });
        }
    });
}

/// Live values a read's response shows (tombstone siblings left out): the body of a `200`, the
/// siblings of a `300`, nothing for a `404`; `None` for any other status.
pub fn visible(response: reqwest::blocking::Response) -> Option<std::collections::BTreeSet<String>> {
    use base64::Engine as _;
    let decode = |s: &Value| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s["value"].as_str().unwrap()).unwrap())
            .unwrap()
    };
    match response.status() {
        reqwest::StatusCode::OK => Some([response.text().unwrap()].into()),
        reqwest::StatusCode::MULTIPLE_CHOICES => {
            let body: Value = response.json().unwrap();
            Some(body["siblings"].as_array().unwrap().iter().filter(|s| s["deleted"] != true).map(decode).collect())
        }
        reqwest::StatusCode::NOT_FOUND => Some(std::collections::BTreeSet::new()),
        _ => None,
    }
}

/// The keys node `proc` stores (`/admin/keys`).
pub fn stored_keys(proc: &Proc) -> std::collections::BTreeSet<String> {
    let body: Value = proc.admin(reqwest::Method::GET, "/admin/keys").send().unwrap().json().unwrap();
    body["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect()
}

/// A counter or gauge from `proc`'s `/metrics`: the sum of every series of `name` whose labels
/// contain `labels` (e.g. `direction="in"`).
pub fn metric(proc: &Proc, name: &str, labels: &str) -> f64 {
    let text = proc.client().get(proc.url("/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        // An empty float sum is -0.0; a missing series reads 0.
        .fold(0.0, |sum, v| sum + v)
}

/// A cluster of real processes: `nodes` kvnodes (ids `n1`, `n2`, ...) that know each other,
/// and gateways seeded with them.
pub struct Cluster {
    /// Storage nodes; index 0 is `n1`.
    pub nodes: Vec<Proc>,
    /// Gateways.
    pub gateways: Vec<Proc>,
    /// Temp directory holding every data directory and log.
    pub dir: tempfile::TempDir,
    /// Nodes the cluster was started with (`--expect-nodes` of every process).
    pub expect: usize,
    /// Extra arguments of every gateway (TLS files, say).
    pub gateway_args: Vec<String>,
}

impl Cluster {
    /// Starts `nodes` nodes and `gateways` gateways; `node_args` go to every node. Returns once
    /// every process lists all nodes as normal members.
    pub fn start(nodes: usize, gateways: usize, node_args: &[&str]) -> Cluster {
        Cluster::start_with_ports(nodes, gateways, node_args, &[], |_| Ports::node())
    }

    /// [`Cluster::start`] with `gateway_args` for every gateway (and for those added later).
    pub fn start_with(nodes: usize, gateways: usize, node_args: &[&str], gateway_args: &[&str]) -> Cluster {
        Cluster::start_with_ports(nodes, gateways, node_args, gateway_args, |_| Ports::node())
    }

    /// [`Cluster::start`] with node `i` on loopback address `127.0.0.{i + 2}` (n1 on
    /// 127.0.0.2, ...) and calling its peers from it, so that iptables rules between two
    /// addresses partition two nodes. Gateways and the test itself stay on 127.0.0.1.
    pub fn start_spread(nodes: usize, gateways: usize, node_args: &[&str]) -> Cluster {
        Cluster::start_with_ports(nodes, gateways, node_args, &[], |i| {
            Ports::node().on(std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        })
    }

    fn start_with_ports(
        nodes: usize,
        gateways: usize,
        node_args: &[&str],
        gateway_args: &[&str],
        ports: impl Fn(usize) -> Ports,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<Ports> = (0..nodes).map(ports).collect();
        let seeds = ports.iter().map(|p| format!("{}:{}", p.host, p.peer.unwrap_or(p.client))).collect::<Vec<_>>();
        let seeds = seeds.join(",");
        let gateway_args = gateway_args.iter().map(|s| s.to_string()).collect();
        let mut cluster = Cluster { nodes: Vec::new(), gateways: Vec::new(), dir, expect: nodes, gateway_args };
        for ports in ports {
            cluster.spawn_node(ports, &seeds, node_args);
        }
        for g in 0..gateways {
            cluster.add_gateway(&format!("g{g}"));
        }
        cluster.wait_for_members(nodes);
        cluster
    }

    fn spawn_node(&mut self, ports: Ports, seeds: &str, extra: &[&str]) {
        let id = format!("n{}", self.nodes.len() + 1);
        let data = self.dir.path().join(&id);
        let mut args: Vec<String> = vec!["--node-id".into(), id];
        args.extend(ports.args());
        args.extend(["--data-dir".into(), data.display().to_string(), "--seeds".into(), seeds.to_owned()]);
        if !extra.contains(&"--expect-nodes") && !legacy() {
            args.extend(["--expect-nodes".into(), self.expect.to_string()]);
        }
        args.extend(fast_gossip_unless(extra));
        args.extend(extra.iter().map(|s| s.to_string()));
        self.nodes.push(Proc::start(binary("kvnode"), args, ports, data.with_extension("log")));
    }

    /// Starts one more node (the next id) seeded with the running nodes; it joins by itself.
    /// Returns its index.
    pub fn add_node(&mut self, extra: &[&str]) -> usize {
        let seeds = self.nodes.iter().filter(|p| p.is_running()).map(Proc::address).collect::<Vec<_>>().join(",");
        self.spawn_node(Ports::node(), &seeds, extra);
        self.nodes.len() - 1
    }

    /// Starts one more gateway seeded with every node.
    pub fn add_gateway(&mut self, name: &str) {
        let seeds = self.nodes.iter().map(Proc::address).collect::<Vec<_>>().join(",");
        self.add_gateway_seeded(name, &seeds);
    }

    /// Starts one more gateway seeded with `seeds`.
    pub fn add_gateway_seeded(&mut self, name: &str, seeds: &str) {
        let ports = Ports::gateway();
        let mut args = ports.args();
        args.extend(["--seeds".to_owned(), seeds.to_owned()]);
        if !legacy() {
            args.extend(["--expect-nodes".into(), self.expect.to_string()]);
        }
        args.extend(FAST_GOSSIP.iter().map(|s| s.to_string()));
        args.extend(self.gateway_args.iter().cloned());
        let log = self.dir.path().join(format!("{name}.log"));
        self.gateways.push(Proc::start(binary("kvgateway"), args, ports, log));
    }

    /// Waits until no running node has gained ranges left to fill (its rebalancer is `idle`):
    /// a node that formed the cluster or restarted serves a range's reads and purges only
    /// once it holds all of it. Panics with each node's rebalancer status after `timeout`.
    pub fn wait_until_filled(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<(String, String)> = self
                .nodes
                .iter()
                .filter(|p| p.is_running())
                .map(|p| (p.address(), p.worker_status("rebalancer").unwrap_or_else(|| "unknown".into())))
                .collect();
            if statuses.iter().all(|(_, s)| s == "idle") {
                return;
            }
            assert!(Instant::now() < deadline, "gained ranges still filling after {timeout:?}: {statuses:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running process lists `count` members with status `normal`.
    pub fn wait_for_members(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for proc in self.nodes.iter().chain(&self.gateways).filter(|p| p.is_running()) {
            loop {
                let normal = statuses(proc).values().filter(|s| s.as_str() == "normal").count();
                if normal == count {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} lists {normal} normal members, expected {count}",
                    proc.address()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The node whose id is `id` (`n1` ...).
    pub fn node(&mut self, id: &str) -> &mut Proc {
        let index: usize = id.trim_start_matches('n').parse::<usize>().unwrap() - 1;
        &mut self.nodes[index]
    }

    /// What node `index` holds for `key` (`/admin/local`), as JSON.
    pub fn local(&self, index: usize, key: &str) -> Value {
        self.nodes[index]
            .admin(reqwest::Method::GET, &format!("/admin/local/{}", encode_key(key)))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }
}

/// A TCP proxy in front of one process, to lose its replies on demand: requests still reach it
/// (it applies them), answers never come back. The callers see a timeout, as when a reply is
/// lost in a network. It can also be shut: new connections are closed as they arrive and open
/// ones cut, as a frozen machine's peers see it (with SIGSTOP alone the kernel still accepts
/// connections and queues what they send). Stops its threads on drop.
pub struct Proxy {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    drop_replies: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bumped when shut: connections of an earlier epoch stop.
    epoch: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// A proxy on a free port forwarding to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let drop_replies = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicBool::new(true));
        let epoch = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (drops, is_open, epochs, stopped) = (drop_replies.clone(), open.clone(), epoch.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if !is_open.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                let _ = client.set_nonblocking(false);
                let born = epochs.load(Ordering::Relaxed);
                let pump =
                    |mut from: std::net::TcpStream, mut to: std::net::TcpStream, lose: Option<Arc<AtomicBool>>| {
                        let (stopped, epochs) = (stopped.clone(), epochs.clone());
                        std::thread::spawn(move || {
                            let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                            let mut buf = [0u8; 16 * 1024];
                            while !stopped.load(Ordering::Relaxed) && epochs.load(Ordering::Relaxed) == born {
                                match from.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if lose.as_ref().is_some_and(|l| l.load(Ordering::Relaxed)) {
                                            continue;
                                        }
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                            let cut = epochs.load(Ordering::Relaxed) != born;
                            let _ = to.shutdown(if cut { std::net::Shutdown::Both } else { std::net::Shutdown::Write });
                            if cut {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                            }
                        });
                    };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), None);
                pump(server, client, Some(drops.clone()));
            }
        });
        Proxy { port, drop_replies, open, epoch, stop }
    }

    /// Whether replies are lost from now on.
    pub fn drop_replies(&self, on: bool) {
        self.drop_replies.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes new connections as they arrive and cuts the open ones, until [`Proxy::reopen`].
    pub fn shut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forwards new connections again.
    pub fn reopen(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Cluster {
    /// Like [`Cluster::start`], but node `proxied` (an index) is reached by everyone through a
    /// [`Proxy`] in front of its peer listener, which it advertises as its address.
    pub fn start_with_proxy(nodes: usize, gateways: usize, node_args: &[&str], proxied: usize) -> (Cluster, Proxy) {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<Ports> = (0..nodes).map(|_| Ports::node()).collect();
        let peer = |p: &Ports| p.peer.unwrap_or(p.client);
        let proxy = Proxy::start(peer(&ports[proxied]));
        let advertised: Vec<u16> =
            ports.iter().enumerate().map(|(i, p)| if i == proxied { proxy.port } else { peer(p) }).collect();
        let seeds = advertised.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut cluster =
            Cluster { nodes: Vec::new(), gateways: Vec::new(), dir, expect: nodes, gateway_args: Vec::new() };
        for (i, port) in ports.into_iter().enumerate() {
            let mut extra: Vec<String> = node_args.iter().map(|s| s.to_string()).collect();
            if i == proxied {
                extra.extend(["--advertise".to_owned(), format!("127.0.0.1:{}", advertised[i])]);
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            cluster.spawn_node(port, &seeds, &extra);
        }
        for g in 0..gateways {
            cluster.add_gateway_seeded(&format!("g{g}"), &seeds);
        }
        cluster.wait_for_members(nodes);
        (cluster, proxy)
    }
}

/// Certificates for TLS tests: a CA and certificates it signs, as PEM files.
pub mod tls {
    use std::path::{Path, PathBuf};

    /// A certificate authority of a test.
    pub struct TestCa {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
        /// Its certificate, as a PEM file.
        pub ca_file: PathBuf,
    }

    impl TestCa {
        /// A new CA named `name`, its certificate written to `dir/<name>.ca.pem`.
        pub fn new(dir: &Path, name: &str) -> TestCa {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let ca_file = dir.join(format!("{name}.ca.pem"));
            std::fs::write(&ca_file, cert.pem()).unwrap();
            TestCa { cert, key, ca_file }
        }

        /// A certificate for loopback (`localhost`, 127.0.0.1 to 127.0.0.9) good for servers and
        /// clients, signed by this CA: `[cert file, key file]` in `dir`, named `name`.
        pub fn issue(&self, dir: &Path, name: &str) -> [PathBuf; 2] {
            let mut names = vec!["localhost".to_owned()];
            names.extend((1..10).map(|i| format!("127.0.0.{i}")));
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let (cert_file, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            std::fs::write(&cert_file, cert.pem()).unwrap();
            std::fs::write(&key_file, key.serialize_pem()).unwrap();
            [cert_file, key_file]
        }

        /// The flags that give a process TLS with a certificate `name` of this CA.
        pub fn args(&self, dir: &Path, name: &str) -> Vec<String> {
            let [cert, key] = self.issue(dir, name);
            vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
                "--tls-ca".into(),
                self.ca_file.display().to_string(),
            ]
        }
    }
}

/// iptables rules that drop traffic between loopback addresses (tests of partitions; they
/// need root and iptables: [`Partition::possible`]). The rules carry a comment naming this
/// test process and are deleted on drop, also when the test fails.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Whether this process can change the firewall (root, iptables installed); says so if not.
    pub fn possible() -> bool {
        let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout == b"0\n");
        let iptables = Command::new("iptables").arg("-S").arg("INPUT").output().is_ok_and(|o| o.status.success());
        if !root || !iptables {
            println!("SKIPPED: partitions need root and iptables (make test installs iptables; CI runs as root)");
        }
        root && iptables
    }

    /// Isolates `node` from `others` both ways.
    pub fn isolate(node: &str, others: &[&str]) -> Partition {
        let mut partition = Partition { rules: Vec::new() };
        for other in others {
            partition.add(node, other, None);
            partition.add(other, node, None);
        }
        partition
    }

    /// Drops the connections `from` opens to TCP `port` of `to` (what it answers on its own
    /// ports, and anything others send, passes).
    pub fn block(from: &str, to: &str, port: u16) -> Partition {
        let mut partition = Partition { rules: Vec::new() };
        partition.add(from, to, Some(port));
        partition
    }

    fn add(&mut self, from: &str, to: &str, port: Option<u16>) {
        let mut rule: Vec<String> = ["INPUT", "-i", "lo", "-s", from, "-d", to].iter().map(|s| s.to_string()).collect();
        if let Some(port) = port {
            rule.extend(["-p".into(), "tcp".into(), "--dport".into(), port.to_string()]);
        }
        rule.extend(["-m".into(), "comment".into(), "--comment".into(), format!("kv-test-{}", std::process::id())]);
        rule.extend(["-j".into(), "DROP".into()]);
        let status = Command::new("iptables").arg("-I").args(&rule).status().expect("iptables runs");
        assert!(status.success(), "iptables -I {rule:?}");
        self.rules.push(rule);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(rule).status();
        }
    }
}

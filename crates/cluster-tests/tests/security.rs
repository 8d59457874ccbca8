//! Security with real processes (docs/security.md): an authenticated cluster (every peer and
//! admin request signed with the cluster secret), context tokens a client cannot forge, client
//! tokens, and TLS on every listener with members verifying each other against the CA.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kv_proto::{encode, Call, ReadRequest, BATCH_PATH};
use kv_testkit::tls::TestCa;
use kv_testkit::{binary, metric, secret, sign_peer, signer, statuses, Cluster, Ports, Proc};
use kv_transport::{Secrets, Signer, SIGNATURE_HEADER};
use reqwest::blocking::Client;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn client() -> Client {
    kv_testkit::http_client(Duration::from_secs(15))
}

/// A child process killed on drop, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Waits up to `limit` for the process to exit; its status code and stderr.
    fn exit_within(mut self, limit: Duration) -> Option<(Option<i32>, String)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Some((status.code(), stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn message(response: reqwest::blocking::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().unwrap_or_default();
    (status, body["message"].as_str().unwrap_or_default().to_owned())
}

fn other_secrets() -> Secrets {
    Secrets::parse(&kv_transport::secret::generate().unwrap()).unwrap()
}

/// Acceptance: peer and admin endpoints answer `401` without the secret, with a wrong secret,
/// with a body changed after signing, and for a replayed request (and for a request signed for
/// another member).
#[test]
fn unsigned_wrongly_signed_altered_replayed_and_misdirected_requests_are_refused() {
    let cluster = Cluster::start(3, 0, &[]);
    let n1 = &cluster.nodes[0];
    let c = client();
    let read = encode(&vec![Call::Read(ReadRequest::new(b"k".to_vec()))]);
    let post = |signature: Option<&str>, body: &[u8]| {
        let mut request = c.post(n1.url(BATCH_PATH)).body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        message(request.send().unwrap())
    };
    let genuine = sign_peer(n1, BATCH_PATH, &read);
    assert_eq!(post(Some(&genuine), &read).0, StatusCode::OK, "a genuine peer request");
    let mut seen = Vec::new();
    let none = post(None, &read);
    let wrong = post(Some(&Signer::new(&other_secrets()).sign("POST", BATCH_PATH, &n1.address(), &read)), &read);
    let mut altered = read.clone();
    *altered.last_mut().unwrap() ^= 1;
    let altered = post(Some(&sign_peer(n1, BATCH_PATH, &read)), &altered);
    let replayed = post(Some(&genuine), &read);
    let misdirected = post(Some(&signer().sign("POST", BATCH_PATH, &cluster.nodes[1].address(), &read)), &read);
    for (what, (status, text)) in
        [("none", none), ("wrong", wrong), ("altered", altered), ("replayed", replayed), ("misdirected", misdirected)]
    {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "peer request {what}: {text}");
        seen.push(format!("peer {what}: {text}"));
    }
    // Admin: an action (an anti-entropy round) on n1.
    let repair = |signature: Option<String>| {
        let mut request = c.post(n1.admin_url("/admin/repair"));
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        message(request.send().unwrap())
    };
    let genuine = signer().sign("POST", "/admin/repair", "n1", b"");
    let ok = repair(Some(genuine.clone())).0;
    assert!(ok == StatusCode::OK || ok == StatusCode::ACCEPTED, "a genuine admin request: {ok}");
    let refusals = [
        ("none", repair(None)),
        ("wrong", repair(Some(Signer::new(&other_secrets()).sign("POST", "/admin/repair", "n1", b"")))),
        ("replayed", repair(Some(genuine))),
        ("misdirected", repair(Some(signer().sign("POST", "/admin/repair", "n2", b"")))),
    ];
    for (what, (status, text)) in refusals {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "admin request {what}: {text}");
        seen.push(format!("admin {what}: {text}"));
    }
    // A body changed after signing, on the admin listener.
    let signature = signer().sign("POST", "/admin/repair", "n1", b"");
    let altered = c.post(n1.admin_url("/admin/repair")).header(SIGNATURE_HEADER, signature).body("x").send().unwrap();
    assert_eq!(altered.status(), StatusCode::UNAUTHORIZED);
    // Reads of the admin listener need the secret too; health, metrics and members do not.
    assert_eq!(c.get(n1.admin_url("/admin/keys")).send().unwrap().status(), StatusCode::UNAUTHORIZED);
    for open in ["/health/live", "/metrics", "/cluster/members"] {
        assert_eq!(c.get(n1.admin_url(open)).send().unwrap().status(), StatusCode::OK, "{open}");
    }
    let counted = metric(n1, "kv_auth_failures_total", "");
    println!("refused, each 401:\n  {}\nkv_auth_failures_total on n1: {counted}", seen.join("\n  "));
    assert!(counted >= 11.0, "every refusal is counted: {counted}");
}

fn kvnode(args: &[String], secret_env: Option<&str>) -> Killed {
    let mut command = Command::new(binary("kvnode"));
    command.args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
    match secret_env {
        Some(secret) => command.env("KV_CLUSTER_SECRET", secret),
        None => command.env_remove("KV_CLUSTER_SECRET"),
    };
    Killed(command.spawn().unwrap())
}

/// Acceptance: a node with a different secret cannot join; a node without a secret and without
/// `--insecure` refuses to start.
#[test]
fn a_node_with_another_secret_cannot_join_and_one_without_refuses_to_start() {
    let cluster = Cluster::start(3, 0, &[]);
    let seeds = cluster.nodes.iter().map(Proc::address).collect::<Vec<_>>().join(",");
    let data = cluster.dir.path().join("n4");
    let mut args = vec!["--node-id".to_owned(), "n4".to_owned()];
    args.extend(Ports::node().args());
    args.extend(["--data-dir".into(), data.display().to_string(), "--seeds".into(), seeds]);
    let other = kv_transport::secret::generate().unwrap();
    let (code, stderr) = kvnode(&args, Some(&other)).exit_within(Duration::from_secs(30)).expect("n4 exits");
    println!("n4 with another cluster's secret: exit {code:?}: {}", stderr.trim());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refuses this node's credentials"), "{stderr}");
    for node in &cluster.nodes {
        assert!(!statuses(node).contains_key("n4"), "n4 joined: {:?}", statuses(node));
    }
    assert!(metric(&cluster.nodes[0], "kv_auth_failures_total", "reason=\"unknown_key\"") >= 1.0);
    // No secret at all, no --insecure.
    let lone = cluster.dir.path().join("lone");
    let mut args = vec!["--data-dir".to_owned(), lone.display().to_string()];
    args.extend(Ports::node().args());
    let (code, stderr) = kvnode(&args, None).exit_within(Duration::from_secs(30)).expect("exits at once");
    println!("a node without a secret: exit {code:?}: {}", stderr.trim());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no cluster secret"), "{stderr}");
    // With --insecure it starts (a development node).
    args.push("--insecure".into());
    let insecure = kvnode(&args, None);
    assert!(insecure.exit_within(Duration::from_secs(2)).is_none(), "--insecure serves");
}

/// Acceptance: a context token with one byte changed is refused with `400`; a genuine one
/// works. Every byte of a real token is changed in turn; a token another cluster sealed is
/// refused too; none of the refused writes is applied.
#[test]
fn a_context_token_with_any_byte_changed_is_refused_and_a_genuine_one_works() {
    let cluster = Cluster::start(3, 1, &[]);
    let c = client();
    let url = cluster.gateways[0].key_url("k");
    assert_eq!(c.put(&url).body("first").send().unwrap().status(), StatusCode::NO_CONTENT);
    let read = c.get(&url).send().unwrap();
    let token = read.headers()["x-context"].to_str().unwrap().to_owned();
    let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
    for i in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[i] ^= 0x01;
        let forged = URL_SAFE_NO_PAD.encode(&changed);
        let response = c.put(&url).header("x-context", forged).body(format!("forged-{i}")).send().unwrap();
        let (status, text) = message(response);
        assert_eq!(status, StatusCode::BAD_REQUEST, "byte {i} changed: {text}");
    }
    let sealer = kv_api::context::ContextSealer::new(&Secrets::parse(secret()).unwrap());
    let clock = sealer.open(b"k", &token).unwrap();
    let foreign = kv_api::context::ContextSealer::new(&other_secrets()).seal(b"k", &clock);
    let (status, text) = message(c.put(&url).header("x-context", foreign).body("foreign").send().unwrap());
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(c.get(format!("{url}?r=3")).send().unwrap().text().unwrap(), "first", "no refused write was applied");
    // A token read from another key: store-wide counters make a fresh clock of the reader's
    // own key cover the older versions of every key; bound to its key, it is refused.
    let victim = cluster.gateways[0].key_url("victim");
    assert_eq!(c.put(&victim).body("a write nobody read").send().unwrap().status(), StatusCode::NO_CONTENT);
    let own = cluster.gateways[0].key_url("own");
    assert_eq!(c.put(&own).body("mine").send().unwrap().status(), StatusCode::NO_CONTENT);
    let own_token = c.get(&own).send().unwrap().headers()["x-context"].to_str().unwrap().to_owned();
    let (status, text) = message(c.put(&victim).header("x-context", own_token).body("overwrite").send().unwrap());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a token of another key: {text}");
    let survived = c.get(format!("{victim}?r=3")).send().unwrap().text().unwrap();
    assert_eq!(survived, "a write nobody read");
    let genuine = c.put(&url).header("x-context", &token).body("second").send().unwrap();
    assert_eq!(genuine.status(), StatusCode::NO_CONTENT);
    let now = c.get(format!("{url}?r=3")).send().unwrap();
    assert_eq!(now.status(), StatusCode::OK, "the genuine context superseded the first value");
    assert_eq!(now.text().unwrap(), "second");
    println!(
        "a {}-character context token ({} bytes): each of its bytes changed in turn, 400 bad_context each time \
         ({text}); the genuine token replaced the value",
        token.len(),
        bytes.len()
    );
}

/// Acceptance: client tokens: a read token can `GET` and cannot `PUT` (`403`); no token `401`
/// when tokens are on; the file is reloaded on SIGHUP.
#[test]
fn client_tokens_gate_reads_and_writes_and_are_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "read reader-0123456789abcdef dashboards\nwrite writer-0123456789abcdef app\n").unwrap();
    let path = tokens.display().to_string();
    let cluster = Cluster::start_with(3, 1, &["--client-tokens-file", &path], &["--client-tokens-file", &path]);
    let c = client();
    for front in [&cluster.gateways[0], &cluster.nodes[0]] {
        let url = front.key_url("t");
        let with = |token: &str, request: reqwest::blocking::RequestBuilder| request.bearer_auth(token).send().unwrap();
        assert_eq!(c.get(&url).send().unwrap().status(), StatusCode::UNAUTHORIZED, "no token");
        assert_eq!(c.put(&url).body("v").send().unwrap().status(), StatusCode::UNAUTHORIZED, "no token");
        assert_eq!(with("unknown-0123456789abcdef", c.get(&url)).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(with("writer-0123456789abcdef", c.put(&url).body("v")).status(), StatusCode::NO_CONTENT);
        let read = with("reader-0123456789abcdef", c.get(&url));
        assert_eq!(read.status(), StatusCode::OK, "a read token reads");
        let (status, text) = message(with("reader-0123456789abcdef", c.put(&url).body("w")));
        assert_eq!(status, StatusCode::FORBIDDEN, "a read token cannot write: {text}");
        let deleted = with("reader-0123456789abcdef", c.delete(&url));
        assert_eq!(deleted.status(), StatusCode::FORBIDDEN, "nor delete");
    }
    // Rotate: the read token is replaced; SIGHUP makes every process take the new file.
    std::fs::write(&tokens, "read reader2-0123456789abcdef\nwrite writer-0123456789abcdef app\n").unwrap();
    for proc in cluster.gateways.iter().chain(&cluster.nodes) {
        proc.signal("HUP");
    }
    let url = cluster.gateways[0].key_url("t");
    let started = Instant::now();
    loop {
        let old = c.get(&url).bearer_auth("reader-0123456789abcdef").send().unwrap().status();
        let new = c.get(&url).bearer_auth("reader2-0123456789abcdef").send().unwrap().status();
        if old == StatusCode::UNAUTHORIZED && new == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "tokens not reloaded on SIGHUP: old {old}, new {new}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("client tokens: none 401, unknown 401, read GET 200, read PUT/DELETE 403, write PUT 204; SIGHUP reloaded the file in {:.1} s", started.elapsed().as_secs_f64());
}

/// Acceptance (issue 22): admin tokens for people, beside signed requests: `curl -H
/// "Authorization: Bearer ..." NODE/admin/workers` works with a read or admin token, a change
/// needs an admin token (`403` with a read one), an unknown token or none is `401`, signed
/// requests (kvctl with the secret) still work, kvctl takes `--admin-token`, and the file is
/// reloaded on SIGHUP.
#[test]
fn admin_tokens_let_people_use_the_admin_api_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, "read viewer-0123456789abcdef grafana\nadmin operator-0123456789abcdef ops\n").unwrap();
    let path = tokens.display().to_string();
    let cluster = Cluster::start_with(3, 1, &["--admin-tokens-file", &path], &["--admin-tokens-file", &path]);
    let c = client();
    let (node, gateway) = (&cluster.nodes[0], &cluster.gateways[0]);
    let bearer = |token: &str, method: Method, url: &str| c.request(method, url).bearer_auth(token).send().unwrap();
    for proc in [node, gateway] {
        let workers = proc.admin_url("/admin/workers");
        assert_eq!(bearer("viewer-0123456789abcdef", Method::GET, &workers).status(), StatusCode::OK, "read token");
        assert_eq!(bearer("operator-0123456789abcdef", Method::GET, &workers).status(), StatusCode::OK, "admin token");
        let (status, text) = message(bearer("stranger-0123456789abcdef", Method::GET, &workers));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown token: {text}");
        assert_eq!(c.get(&workers).send().unwrap().status(), StatusCode::UNAUTHORIZED, "neither token nor signature");
        assert_eq!(proc.admin(Method::GET, "/admin/workers").send().unwrap().status(), StatusCode::OK, "signed");
    }
    // A change: a read token is refused 403, an admin token runs it.
    let repair = node.admin_url("/admin/repair");
    let (status, text) = message(bearer("viewer-0123456789abcdef", Method::POST, &repair));
    assert_eq!(status, StatusCode::FORBIDDEN, "a read token cannot repair: {text}");
    let ran = bearer("operator-0123456789abcdef", Method::POST, &repair).status();
    assert!(ran == StatusCode::OK || ran == StatusCode::ACCEPTED, "an admin token repairs: {ran}");
    assert!(metric(node, "kv_auth_failures_total", "listener=\"admin\",reason=\"read_only_token\"") >= 1.0);
    // A key's versions (data) with a read token.
    assert_eq!(c.put(node.key_url("k")).body("v").send().unwrap().status(), StatusCode::NO_CONTENT);
    let local = bearer("viewer-0123456789abcdef", Method::GET, &node.admin_url("/admin/local/k"));
    assert_eq!(local.status(), StatusCode::OK);
    // kvctl with --admin-token and no secret.
    let kvctl = |token: &str| {
        Command::new(binary("kvctl"))
            .args(["--admin-url", &node.admin_url(""), "--admin-token", token, "admin", "get", "/admin/workers"])
            .env_remove("KV_CLUSTER_SECRET")
            .env_remove("KV_CLUSTER_SECRET_FILE")
            .output()
            .unwrap()
    };
    let out = kvctl("viewer-0123456789abcdef");
    assert!(out.status.success(), "kvctl --admin-token: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("workers"));
    // Rotation: the read token replaced; SIGHUP makes every process take the new file.
    std::fs::write(&tokens, "read viewer2-0123456789abcdef\nadmin operator-0123456789abcdef ops\n").unwrap();
    for proc in cluster.gateways.iter().chain(&cluster.nodes) {
        proc.signal("HUP");
    }
    let workers = gateway.admin_url("/admin/workers");
    let started = Instant::now();
    loop {
        let old = bearer("viewer-0123456789abcdef", Method::GET, &workers).status();
        let new = bearer("viewer2-0123456789abcdef", Method::GET, &workers).status();
        if old == StatusCode::UNAUTHORIZED && new == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "admin tokens not reloaded: old {old}, new {new}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "admin tokens: read GET 200, admin GET 200, unknown 401, none 401, signed 200, read POST 403, admin POST {ran}; \
         kvctl --admin-token ok; SIGHUP reloaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The certificate a TLS listener presents now.
fn served_certificate(port: u16, ca: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    connection.complete_io(&mut socket).unwrap();
    connection.peer_certificates().unwrap()[0].to_vec()
}

/// Acceptance: a 3-node cluster and a gateway run with TLS on every listener; plain HTTP to it
/// fails cleanly; a node with a certificate from another CA cannot join. And a renewed
/// certificate is served without a restart.
#[test]
fn a_tls_cluster_speaks_only_https_and_refuses_a_node_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let args = ca.args(dir.path(), "member");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, 1, &args, &args);
    let gateway = &cluster.gateways[0];
    let c = gateway.client();
    let url = gateway.key_url("secure");
    assert!(url.starts_with("https://"), "{url}");
    assert_eq!(c.put(&url).body("v").send().unwrap().status(), StatusCode::NO_CONTENT);
    let read = c.get(format!("{url}?r=3")).send().unwrap();
    assert_eq!(read.headers()["x-replicas"], "3/3", "every replica answered over mutual TLS");
    assert_eq!(read.text().unwrap(), "v");
    let workers = cluster.nodes[0].admin(Method::GET, "/admin/workers").send().unwrap();
    assert_eq!(workers.status(), StatusCode::OK, "signed admin request over https");
    // Plain HTTP to each listener: a clear 400 in plain HTTP, then the connection closes.
    let n1 = &cluster.nodes[0];
    for port in [gateway.ports.client, gateway.ports.admin, n1.ports.client, n1.ports.peer.unwrap(), n1.ports.admin] {
        let response = client().get(format!("http://127.0.0.1:{port}/kv/secure")).send().unwrap();
        let status = response.status();
        let body: Value = response.json().unwrap();
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("tls_required")), "port {port}");
    }
    // A client that does not trust the cluster's CA cannot talk to it (and nothing breaks).
    let untrusting = client().get(&url).send();
    assert!(untrusting.is_err(), "an unknown CA was accepted");
    // A node with a certificate of another CA, seeded with the cluster, cannot join.
    let rogue_ca = TestCa::new(dir.path(), "rogue");
    let rogue_args = rogue_ca.args(dir.path(), "rogue");
    let rogue = cluster.add_node(&rogue_args.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(5));
    // (Alone, it sees a cluster of itself; the cluster never sees it.)
    for proc in cluster.nodes[..3].iter().chain(&cluster.gateways) {
        assert!(!statuses(proc).contains_key("n4"), "n4 of another CA joined: {:?}", statuses(proc));
    }
    assert_eq!(statuses(&cluster.nodes[rogue]).len(), 1, "n4 reached no member");
    let refused: f64 =
        cluster.nodes[..3].iter().map(|n| metric(n, "kv_connections_closed_total", "reason=\"tls_handshake\"")).sum();
    assert!(refused >= 1.0, "the members refused the rogue node's handshakes");
    // Renewal: new files for the gateway's certificate, served to the next connection.
    let gateway = &cluster.gateways[0];
    let before = served_certificate(gateway.ports.client, &ca.ca_file);
    let [cert, key] = ca.issue(dir.path(), "member-renewed");
    let served = gateway.arg("--tls-cert").unwrap().to_owned();
    let served_key = gateway.arg("--tls-key").unwrap().to_owned();
    std::fs::rename(&key, &served_key).unwrap();
    std::fs::rename(&cert, &served).unwrap();
    let renewed = std::fs::read_to_string(&served).unwrap();
    let started = Instant::now();
    while served_certificate(gateway.ports.client, &ca.ca_file) == before {
        assert!(started.elapsed() < Duration::from_secs(20), "the renewed certificate is not served");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!renewed.is_empty());
    assert_eq!(c.get(&url).send().unwrap().status(), StatusCode::OK, "still serving after the renewal");
    println!(
        "TLS cluster: https put/get 3/3 replicas, plain HTTP answered 400 tls_required on all 5 listeners, a client \
         without the CA refused, n4 of another CA not admitted ({refused} handshakes refused), renewed certificate \
         served {:.1} s after the files changed",
        started.elapsed().as_secs_f64()
    );
}

/// Reads an HTTP status line from `stream` within `limit`; `None` if none came.
fn status_within(stream: &mut std::net::TcpStream, limit: Duration) -> Option<u16> {
    use std::io::Read as _;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1)?.parse().ok()
}

/// Review findings: a peer request's signature is checked on its head, before its body is
/// read (an unauthenticated client cannot make a node buffer bodies); a request meant for
/// another member is refused without being recorded (the member it was meant for still takes
/// it); gossip bodies are small.
#[test]
fn the_signature_is_checked_before_the_body_and_a_misdirected_request_is_not_recorded() {
    use std::io::Write as _;
    let cluster = Cluster::start(3, 0, &[]);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Unsigned, announcing 16 MB and sending none of it: refused at once, not after a body wait.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", n1.ports.peer.unwrap())).unwrap();
    let head = format!("POST {BATCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 16 << 20);
    stream.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    assert_eq!(status_within(&mut stream, Duration::from_secs(3)), Some(401), "refused on its head");
    let refused_in = started.elapsed();
    // A gossip body announcing more than 1 MiB, signed: refused before it is read.
    let big = format!(
        "POST /internal/v1/gossip HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{SIGNATURE_HEADER}: {}\r\n\r\n",
        2 << 20,
        sign_peer(n1, "/internal/v1/gossip", b"")
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", n1.ports.peer.unwrap())).unwrap();
    stream.write_all(big.as_bytes()).unwrap();
    assert_eq!(status_within(&mut stream, Duration::from_secs(3)), Some(413), "gossip bodies are small");
    // Signed for n2, sent to n1 first: refused there, and still taken by n2.
    let read = encode(&vec![Call::Read(ReadRequest::new(b"k".to_vec()))]);
    let for_n2 = sign_peer(n2, BATCH_PATH, &read);
    let c = client();
    let at_n1 = c.post(n1.url(BATCH_PATH)).header(SIGNATURE_HEADER, &for_n2).body(read.clone()).send().unwrap();
    assert_eq!(at_n1.status(), StatusCode::UNAUTHORIZED);
    let at_n2 = c.post(n2.url(BATCH_PATH)).header(SIGNATURE_HEADER, &for_n2).body(read).send().unwrap();
    assert_eq!(at_n2.status(), StatusCode::OK, "a misdirected request did not use up its signature at its destination");
    println!("an unsigned 16 MB request refused on its head in {:.0} ms", refused_in.as_secs_f64() * 1e3);
}

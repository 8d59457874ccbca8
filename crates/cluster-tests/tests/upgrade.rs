//! A rolling upgrade from the previous release, and a rolling restart, under load (`make
//! test-upgrade`, docs/operations.md#upgrading).
//!
//! `scripts/test-upgrade.sh` builds the previous release (RELEASES) in a git worktree and runs
//! this test with `KV_TEST_BIN_DIR` naming its binaries: the cluster starts on them, and each
//! process is replaced, one at a time, by this tree's binaries (next to this test's own
//! executable). Without `KV_TEST_BIN_DIR`, "old" and "new" are both this tree's binaries: a
//! rolling restart, which `make test-upgrade` runs first.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kv_testkit::{metric, statuses, Cluster, Proc};
use reqwest::blocking::Client;
use reqwest::StatusCode;

/// This tree's binary `name` (next to the test executable, whatever `KV_TEST_BIN_DIR` says).
fn new_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(std::path::Path::parent).unwrap().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins`", path.display());
    path
}

#[derive(Default)]
struct Load {
    /// Every acknowledged write: key → value.
    acked: Mutex<BTreeMap<String, String>>,
    requests: AtomicUsize,
    failures: Mutex<Vec<String>>,
    slowest_ms: AtomicUsize,
    /// What the test is doing now, for the failures' context.
    phase: Mutex<String>,
    /// The gateways the load balancer sends requests to (one leaves while it is replaced).
    in_rotation: [AtomicBool; 2],
}

impl Load {
    fn fail(&self, what: String) {
        let phase = self.phase.lock().unwrap().clone();
        self.failures.lock().unwrap().push(format!("{what} (during: {phase})"));
    }
}

/// A client of both gateways, as a load balancer in front of them (a Kubernetes Service): it
/// sends to the gateways in rotation, with keep-alive connections; a gateway being replaced
/// leaves the rotation first (a terminating pod leaves the Service's endpoints while its
/// preStop hook waits), and a request whose connection is refused goes to the other gateway.
fn send(
    client: &Client,
    load: &Load,
    gateways: &[String],
    first: usize,
    build: impl Fn(&Client, &str) -> reqwest::blocking::RequestBuilder,
) -> Result<(StatusCode, String), String> {
    let mut last = String::new();
    for attempt in 0..6 {
        let mut index = (first + attempt) % gateways.len();
        if !load.in_rotation[index].load(Ordering::Relaxed) {
            index = (index + 1) % gateways.len();
        }
        let base = &gateways[index];
        match build(client, base).send() {
            Ok(r) => {
                let status = r.status();
                return Ok((status, r.text().unwrap_or_default()));
            }
            Err(e) if e.is_connect() => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("{base}: {e}")),
        }
    }
    Err(format!("no gateway took the connection: {last}"))
}

/// Writes new keys and reads acknowledged ones through both gateways from 4 threads until
/// `stop`, at the default quorums.
fn run_load(load: &Load, gateways: &[String], stop: &AtomicBool) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                let client = Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (key, value) = (format!("u{t}-{i}"), format!("value {t} {i}"));
                    let started = Instant::now();
                    let put = send(&client, load, gateways, t + i, |c, base| {
                        c.put(format!("{base}/kv/{key}")).body(value.clone())
                    });
                    load.requests.fetch_add(1, Ordering::Relaxed);
                    match put {
                        Ok((StatusCode::NO_CONTENT, _)) => {
                            load.acked.lock().unwrap().insert(key.clone(), value);
                        }
                        Ok((status, body)) => load.fail(format!("PUT {key}: {status} {body}")),
                        Err(e) => load.fail(format!("PUT {key}: {e}")),
                    }
                    let old = (i > 1).then(|| format!("u{t}-{}", i / 2));
                    let expected = old.as_ref().and_then(|k| load.acked.lock().unwrap().get(k).cloned());
                    if let (Some(old), Some(expected)) = (old, expected) {
                        let get = send(&client, load, gateways, t + i + 1, |c, base| c.get(format!("{base}/kv/{old}")));
                        load.requests.fetch_add(1, Ordering::Relaxed);
                        match get {
                            Ok((StatusCode::OK, body)) if body == expected => {}
                            Ok((status, body)) => load.fail(format!("GET {old}: {status} {body}")),
                            Err(e) => load.fail(format!("GET {old}: {e}")),
                        }
                    }
                    load.slowest_ms.fetch_max(started.elapsed().as_millis() as usize, Ordering::Relaxed);
                }
            });
        }
    });
}

/// Waits until every running process sees the three nodes normal (a replaced node gossips
/// again), at most 30 s.
fn settle(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let procs: Vec<&Proc> = cluster.nodes.iter().chain(&cluster.gateways).collect();
    while Instant::now() < deadline {
        let all = procs.iter().all(|p| {
            let s = statuses(p);
            s.len() == 3 && s.values().all(|v| v == "normal")
        });
        if all {
            // A little more: the others learn the replaced node is back from its gossip.
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen: Vec<String> = procs.iter().map(|p| format!("{}: {:?}", p.address(), statuses(p))).collect();
    panic!("the cluster did not settle within 30 s: {seen:?}");
}

/// Replaces node `i` (or gateway `i` when `gateway`) by `program`, saying so in the phase.
fn replace(cluster: &mut Cluster, load: &Load, gateway: bool, i: usize, program: PathBuf, what: &str) -> String {
    *load.phase.lock().unwrap() = what.to_owned();
    if gateway {
        // Out of the rotation, then the chart's preStop wait (shortened): the requests it has
        // in flight finish, and no new one comes.
        load.in_rotation[i].store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
    }
    let proc = if gateway { &mut cluster.gateways[i] } else { &mut cluster.nodes[i] };
    let down = proc.replace_program(program);
    settle(cluster);
    if gateway {
        load.in_rotation[i].store(true, Ordering::Relaxed);
    }
    format!("{what} ({:.1} s down)", down.as_secs_f64())
}

/// 3 nodes and 2 gateways of the previous release (or this one) under a load of writes and
/// reads through both gateways; each node, then each gateway, replaced by this release's
/// binaries one at a time (SIGTERM, then the new binary on the same data directory); then one
/// node downgraded to the previous release and upgraded again. Not one client request may
/// fail, and every acknowledged write must be readable at the end.
#[test]
#[ignore = "make test-upgrade runs it (about a minute, and a build of the previous release)"]
fn a_rolling_upgrade_and_a_downgrade_fail_no_request_and_lose_no_write() {
    let previous = std::env::var("KV_TEST_BIN_DIR").ok();
    let mut cluster = Cluster::start(3, 2, &[]);
    let old_node = cluster.nodes[0].program().to_path_buf();
    let (new_node, new_gateway) = (new_binary("kvnode"), new_binary("kvgateway"));
    let gateways: Vec<String> = cluster.gateways.iter().map(|g| g.url("")).collect();
    let load = Load { in_rotation: [AtomicBool::new(true), AtomicBool::new(true)], ..Load::default() };
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut steps = Vec::new();
    let (mut upgraded_protocol, mut downgraded_protocol) = (Vec::new(), Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| run_load(&load, &gateways, &stop));
        std::thread::sleep(Duration::from_secs(3));
        for i in 0..3 {
            steps.push(replace(&mut cluster, &load, false, i, new_node.clone(), &format!("node n{} upgraded", i + 1)));
        }
        for i in 0..2 {
            steps.push(replace(&mut cluster, &load, true, i, new_gateway.clone(), &format!("gateway g{i} upgraded")));
        }
        upgraded_protocol = cluster_protocols(&cluster);
        steps.push(replace(&mut cluster, &load, false, 1, old_node.clone(), "node n2 downgraded"));
        downgraded_protocol = cluster_protocols(&cluster);
        steps.push(replace(&mut cluster, &load, false, 1, new_node.clone(), "node n2 upgraded again"));
        *load.phase.lock().unwrap() = "after the upgrade".into();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    // Every acknowledged write, read from every replica (r=3) through a gateway.
    let client = Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let acked = load.acked.lock().unwrap().clone();
    let lost: Vec<String> = acked
        .iter()
        .filter(|(key, value)| {
            let read = client.get(format!("{}/kv/{key}?r=3", gateways[0])).send();
            !read.is_ok_and(|r| r.status() == StatusCode::OK && r.text().is_ok_and(|t| &t == *value))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let failures = load.failures.lock().unwrap().clone();
    let releases: Vec<String> = statuses_with_release(&cluster.gateways[0]);
    println!(
        "cluster protocol (kv_cluster_protocol_version on n1, n2, n3): {upgraded_protocol:?} once all were upgraded, \
         {downgraded_protocol:?} with n2 downgraded (n2 itself then exports none); releases at the end: {releases:?}"
    );
    println!(
        "upgrade from {}: {} client requests in {:.1} s through 2 gateways while {}; {} failed, the slowest took {} ms; \
         {} acknowledged writes, {} lost",
        previous.as_deref().unwrap_or("this release (a rolling restart)"),
        load.requests.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        steps.join(", "),
        failures.len(),
        load.slowest_ms.load(Ordering::Relaxed),
        acked.len(),
        lost.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed client requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(lost.is_empty(), "{} acknowledged writes lost: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert!(acked.len() > 100, "too little load to mean anything: {} writes", acked.len());
    let current = f64::from(kv_proto_version());
    assert_eq!(upgraded_protocol, vec![current; 3], "every member upgraded speaks the new protocol");
    let expected = if previous.is_some() { 6.0 } else { current };
    // n2 itself runs the previous release then, which has no such metric.
    let others = [downgraded_protocol[0], downgraded_protocol[2]];
    assert_eq!(others, [expected; 2], "n1 and n3 with n2 downgraded: {downgraded_protocol:?}");
    assert!(releases.iter().all(|r| r.ends_with(env!("CARGO_PKG_VERSION"))), "{releases:?}");
}

/// Each node's `kv_cluster_protocol_version`.
fn cluster_protocols(cluster: &Cluster) -> Vec<f64> {
    cluster.nodes.iter().map(|p| metric(p, "kv_cluster_protocol_version", "")).collect()
}

/// `id release` of each member, as `proc` sees them.
fn statuses_with_release(proc: &Proc) -> Vec<String> {
    let members: serde_json::Value = proc.client().get(proc.url("/cluster/members")).send().unwrap().json().unwrap();
    members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("{} {}", m["id"].as_str().unwrap_or(""), m["release"].as_str().unwrap_or("")))
        .collect()
}

/// The newest peer protocol this release speaks.
fn kv_proto_version() -> u32 {
    kv_proto::PROTOCOL
}

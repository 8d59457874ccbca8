//! Replication with real processes: 3 kvnodes and kvgateways, started and killed by the tests.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kv_testkit::Cluster;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

fn client() -> Client {
    kv_testkit::http_client(Duration::from_secs(10))
}

/// Values a read shows: the value on 200, every live sibling on 300, nothing on 404.
fn visible_values(response: reqwest::blocking::Response) -> BTreeSet<String> {
    match response.status() {
        StatusCode::OK => [response.text().unwrap()].into(),
        StatusCode::MULTIPLE_CHOICES => {
            let body: Value = response.json().unwrap();
            body["siblings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["deleted"] != true)
                .map(|s| {
                    String::from_utf8(
                        base64::engine::general_purpose::STANDARD.decode(s["value"].as_str().unwrap()).unwrap(),
                    )
                    .unwrap()
                })
                .collect()
        }
        StatusCode::NOT_FOUND => BTreeSet::new(),
        other => panic!("read failed with {other}: {}", response.text().unwrap()),
    }
}

fn local_values(cluster: &Cluster, index: usize, key: &str) -> Vec<String> {
    cluster.local(index, key)["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v["value"].as_str().unwrap()).unwrap())
                .unwrap()
        })
        .collect()
}

/// Polls `check` for up to 10 s (background replication and repair are asynchronous).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn write_all_lands_on_every_replica_with_node_only_clocks() {
    let cluster = Cluster::start(3, 1, &[]);
    let c = client();
    let put = c.put(format!("{}?w=3", cluster.gateways[0].key_url("k"))).body("v1").send().unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    assert_eq!(put.headers()["x-replicas"], "3/3");
    for i in 0..3 {
        let local = cluster.local(i, "k");
        assert_eq!(local_values(&cluster, i, "k"), vec!["v1"], "node {i}");
        let clock = local["versions"][0]["clock"].as_object().unwrap();
        // Actors are storage nodes, each named after its id and its storage incarnation.
        assert!(
            clock.keys().all(|actor| ["n1~", "n2~", "n3~"].iter().any(|p| actor.starts_with(p)) && actor.len() == 19),
            "clock {clock:?} names a non-node"
        );
    }
}

#[test]
fn one_node_down_two_of_three_succeed_three_of_three_fail() {
    let mut cluster = Cluster::start(3, 1, &[]);
    cluster.node("n3").kill9();
    let c = client();
    // Through the gateway and through a node alike.
    for front in [cluster.gateways[0].url(""), cluster.nodes[0].url("")] {
        let url = |key: &str, q: &str| format!("{front}/kv/{key}?{q}");
        let ok = c.put(url("a", "w=2")).body("x").send().unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT, "{front}");
        assert_eq!(ok.headers()["x-replicas"], "2/3");
        let fail = c.put(url("b", "w=3")).body("x").send().unwrap();
        assert_eq!(fail.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = fail.json().unwrap();
        assert_eq!(
            (body["error"].as_str(), body["acks"].as_u64(), body["required"].as_u64()),
            (Some("quorum_not_met"), Some(2), Some(3))
        );
        let read = c.get(url("a", "r=2")).send().unwrap();
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(read.headers()["x-replicas"], "2/3");
        let read_all = c.get(url("a", "r=3")).send().unwrap();
        assert_eq!(read_all.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(read_all.json::<Value>().unwrap()["acks"], 2);
        let bad = c.get(url("a", "r=4")).send().unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let zero = c.put(url("a", "w=0")).body("x").send().unwrap();
        assert_eq!(zero.status(), StatusCode::BAD_REQUEST);
    }
}

/// Writers racing on one key, through the gateway and a node, all up and with one node of
/// three killed: every write succeeds, and each writer's last write survives. Each writes with
/// the context its own previous write answered, which a write whose version has concurrent
/// siblings does not give (`X-Siblings` instead): that version's clock names its actor's
/// counter, which covers other writers' versions of that actor the client never saw (when it
/// did, 8 writers ended with 3 of their 8 last writes). A replica whose previous version of the
/// key is still on its way to its own copy refuses to coordinate for a moment (rule 15 of
/// docs/consistency.md); the front asks the next replica or asks again shortly.
#[test]
fn concurrent_writers_to_one_key_all_succeed() {
    const WRITERS: usize = 8;
    // At most 96 versions in all: under the sibling limit even if none supersedes another.
    const WRITES: usize = 12;
    let mut cluster = Cluster::start(3, 1, &[]);
    for round in ["all up", "n3 killed"] {
        if round == "n3 killed" {
            cluster.node("n3").kill9();
        }
        let key = format!("hot-{}", round.len());
        let fronts = [cluster.gateways[0].url(""), cluster.nodes[0].url("")];
        let failures = Mutex::new(Vec::new());
        let lasts = Mutex::new(BTreeSet::new());
        std::thread::scope(|scope| {
            for w in 0..WRITERS {
                let (front, key, failures, lasts) = (&fronts[w % 2], &key, &failures, &lasts);
                scope.spawn(move || {
                    let c = client();
                    let mut context = String::new();
                    for i in 0..WRITES {
                        let value = format!("w{w}-{i}");
                        let mut put = c.put(format!("{front}/kv/{key}")).body(value.clone());
                        if !context.is_empty() {
                            put = put.header("x-context", &context);
                        }
                        let response = put.send().unwrap();
                        if response.status() == StatusCode::NO_CONTENT {
                            context = match response.headers().get("x-context") {
                                Some(c) => c.to_str().unwrap().to_owned(),
                                None => {
                                    assert!(response.headers().contains_key("x-siblings"));
                                    String::new()
                                }
                            };
                        } else {
                            let status = response.status();
                            failures.lock().unwrap().push(format!("{value}: {status} {}", response.text().unwrap()));
                        }
                    }
                    lasts.lock().unwrap().insert(format!("w{w}-{}", WRITES - 1));
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        let read = client().get(cluster.gateways[0].url(&format!("/kv/{key}?r=2"))).send().unwrap();
        let seen = visible_values(read);
        println!(
            "{round}: {WRITERS} writers x {WRITES} writes to one key: {} failed; the key holds {} siblings",
            failures.len(),
            seen.len()
        );
        assert!(failures.is_empty(), "{round}: {failures:?}");
        let lost: Vec<String> = lasts.into_inner().unwrap().difference(&seen).cloned().collect();
        assert!(lost.is_empty(), "{round}: acknowledged last writes superseded unseen: {lost:?}");
    }
}

#[test]
fn read_repair_brings_a_returning_replica_up_to_date() {
    // No hints and no anti-entropy round during the test: only the read can repair n3.
    let mut cluster = Cluster::start(3, 1, &["--hinted-handoff=false", "--anti-entropy-interval", "1h"]);
    let c = client();
    c.put(format!("{}?w=3", cluster.gateways[0].key_url("k"))).body("old").send().unwrap();
    cluster.node("n3").kill9();
    let read = c.get(cluster.gateways[0].key_url("k")).send().unwrap();
    let context = read.headers()["x-context"].to_str().unwrap().to_owned();
    let put = c.put(cluster.gateways[0].key_url("k")).header("x-context", context).body("new").send().unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    // The write's store to n3 may still be queued (it answered after W = 2); past its deadline
    // (one replica timeout, 2 s) a restarted n3 refuses it as too late.
    std::thread::sleep(Duration::from_millis(2_500));
    cluster.node("n3").restart();
    assert_eq!(local_values(&cluster, 2, "k"), vec!["old"], "n3 should have missed the write");
    // A read that touches n3 (reads ask all replicas) repairs it.
    let read = c.get(format!("{}?r=3", cluster.gateways[0].key_url("k"))).send().unwrap();
    assert_eq!(visible_values(read), ["new".to_owned()].into());
    eventually("n3 to be repaired", || local_values(&cluster, 2, "k") == vec!["new"]);
    // Counted once the repair's store returned to the gateway, which may be just after n3
    // shows the value.
    eventually("the gateway to count the read repair", || {
        let metrics = c.get(cluster.gateways[0].url("/metrics")).send().unwrap().text().unwrap();
        metrics.lines().find(|l| l.starts_with("kv_read_repairs_total")).is_some_and(|l| !l.ends_with(" 0"))
    });
}

#[test]
fn concurrent_blind_writes_through_two_gateways_become_siblings_until_resolved() {
    let cluster = Cluster::start(3, 2, &[]);
    let barrier = Arc::new(Barrier::new(2));
    std::thread::scope(|scope| {
        for (gateway, value) in cluster.gateways.iter().zip(["from-g0", "from-g1"]) {
            let barrier = barrier.clone();
            scope.spawn(move || {
                let c = client();
                barrier.wait();
                let put = c.put(gateway.key_url("shared")).body(value).send().unwrap();
                assert_eq!(put.status(), StatusCode::NO_CONTENT);
            });
        }
    });
    let c = client();
    let read = c.get(format!("{}?r=3", cluster.gateways[0].key_url("shared"))).send().unwrap();
    assert_eq!(read.status(), StatusCode::MULTIPLE_CHOICES);
    let body: Value = read.json().unwrap();
    let context = body["context"].as_str().unwrap().to_owned();
    let values: BTreeSet<String> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s["value"].as_str().unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(values, ["from-g0".to_owned(), "from-g1".to_owned()].into());
    // Each sibling says when it was written (a hint for resolvers): within this test's run.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for sibling in body["siblings"].as_array().unwrap() {
        let written = sibling["written_at"].as_u64().unwrap_or_default();
        assert!(now.saturating_sub(written) < 120_000 && written <= now + 1_000, "{sibling}");
    }
    let resolve =
        c.put(cluster.gateways[1].key_url("shared")).header("x-context", context).body("merged").send().unwrap();
    assert_eq!(resolve.status(), StatusCode::NO_CONTENT);
    for i in 0..3 {
        eventually("every replica to hold only the resolved value", || {
            local_values(&cluster, i, "shared") == vec!["merged"]
        });
    }
}

#[test]
fn two_blind_writes_through_one_node_both_survive() {
    let cluster = Cluster::start(3, 0, &[]);
    let c = client();
    for value in ["one", "two"] {
        assert_eq!(c.put(cluster.nodes[1].key_url("k")).body(value).send().unwrap().status(), StatusCode::NO_CONTENT);
    }
    // Read through another node: the siblings were replicated.
    let values = visible_values(c.get(cluster.nodes[2].key_url("k")).send().unwrap());
    assert_eq!(values, ["one".to_owned(), "two".to_owned()].into());
}

#[test]
fn a_value_written_through_one_node_reads_the_same_everywhere() {
    let cluster = Cluster::start(3, 1, &[]);
    let c = client();
    c.put(cluster.nodes[1].key_url("everywhere")).header("content-type", "text/plain").body("same").send().unwrap();
    for front in cluster.nodes.iter().chain(&cluster.gateways) {
        let read = c.get(front.key_url("everywhere")).send().unwrap();
        assert_eq!(read.status(), StatusCode::OK, "{}", front.address());
        assert_eq!(read.headers()["content-type"], "text/plain");
        assert_eq!(read.text().unwrap(), "same");
    }
    assert_eq!(c.delete(cluster.gateways[0].key_url("everywhere")).send().unwrap().status(), StatusCode::NO_CONTENT);
    for front in cluster.nodes.iter().chain(&cluster.gateways) {
        assert_eq!(c.get(front.key_url("everywhere")).send().unwrap().status(), StatusCode::NOT_FOUND);
    }
}

/// 2 writers × 2,000 keys at w=2 through the gateway; one node is killed with `kill -9` and
/// restarted mid-run. Every acknowledged value must be readable at r=2 afterwards.
#[test]
fn no_acknowledged_write_is_lost_when_a_node_is_killed_mid_run() {
    const KEYS: usize = 2000;
    let mut cluster = Cluster::start(3, 1, &[]);
    let gateway = cluster.gateways[0].url("");
    let acknowledged: Mutex<HashMap<String, Vec<String>>> = Mutex::new(HashMap::new());
    let progress = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for writer in 0..2 {
            let (gateway, acknowledged, progress, failed) = (&gateway, &acknowledged, &progress, &failed);
            scope.spawn(move || {
                let c = client();
                for i in 0..KEYS {
                    let key = format!("key-{i}");
                    let value = format!("w{writer}-{i}");
                    match c.put(format!("{gateway}/kv/{key}?w=2")).body(value.clone()).send() {
                        Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                            acknowledged.lock().unwrap().entry(key).or_default().push(value);
                        }
                        _ => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        // Kill n2 a quarter of the way in, bring it back at the half.
        while progress.load(std::sync::atomic::Ordering::Relaxed) < KEYS / 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        cluster.node("n2").kill9();
        while progress.load(std::sync::atomic::Ordering::Relaxed) < KEYS {
            std::thread::sleep(Duration::from_millis(5));
        }
        cluster.node("n2").restart();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    let c = client();
    let mut lost = Vec::new();
    let mut checked = 0;
    for (key, values) in &acknowledged {
        let visible = visible_values(c.get(format!("{gateway}/kv/{key}?r=2")).send().unwrap());
        for value in values {
            checked += 1;
            if !visible.contains(value) {
                lost.push(format!("{key}={value}"));
            }
        }
    }
    println!(
        "no-loss run: {checked} acknowledged writes of {} attempted ({} refused during the kill), all checked at r=2, {} lost",
        2 * KEYS,
        failed.load(std::sync::atomic::Ordering::Relaxed),
        lost.len()
    );
    assert!(checked > KEYS, "too few writes were acknowledged: {checked}");
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

#[test]
fn tombstones_are_purged_once_all_replicas_hold_them_after_the_grace_period() {
    let cluster = Cluster::start(3, 0, &["--tombstone-grace", "3s", "--gc-interval", "500ms"]);
    let c = client();
    let node = &cluster.nodes[0];
    c.put(format!("{}?w=3", node.key_url("doomed"))).body("v").send().unwrap();
    assert_eq!(c.delete(format!("{}?w=3", node.key_url("doomed"))).send().unwrap().status(), StatusCode::NO_CONTENT);
    for i in 0..3 {
        let local = cluster.local(i, "doomed");
        assert_eq!(local["versions"][0]["tombstone"], true, "node {i} holds the tombstone");
    }
    // Reads never purge: the tombstone is still everywhere within the grace, and a read at r=3
    // does not remove it; the nodes' collectors purge it once it is older than the grace.
    assert_eq!(c.get(format!("{}?r=3", node.key_url("doomed"))).send().unwrap().status(), StatusCode::NOT_FOUND);
    assert!((0..3).all(|i| !cluster.local(i, "doomed")["versions"].as_array().unwrap().is_empty()));
    // Grace, then two reads two replica timeouts (2 s each) apart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..3).all(|i| cluster.local(i, "doomed")["versions"].as_array().unwrap().is_empty()) {
        assert!(Instant::now() < deadline, "the tombstone was not purged from every replica");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.get(node.key_url("doomed")).send().unwrap().status(), StatusCode::NOT_FOUND);
}

/// SIGTERM reaches a node that has run longer than `--shutdown-timeout`, while writes are in
/// flight through it and one replica is frozen, so that the node's stores to it (background
/// replication: the writes are acknowledged by the node and the other replica) queue up. The
/// keys are ones the node coordinates itself, so the frozen replica holds up no request and the
/// drain ends at once. The shutdown deadline counts from the signal, and the batchers stop only
/// after background replication: every acknowledged write ends up on all three replicas.
#[test]
fn sigterm_after_a_long_run_finishes_background_replication() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let mut cluster = Cluster::start(3, 0, &["--shutdown-timeout", "3s"]);
    // Run longer than the shutdown timeout first.
    std::thread::sleep(TIMEOUT + Duration::from_secs(1));
    let ring = kv_ring::Ring::new(["n1", "n2", "n3"].map(|id| kv_ring::Node::new(id, "default"))).unwrap();
    let keys: Vec<String> = (0..)
        .map(|i| format!("term-{i}"))
        .filter(|k| ring.preference_list(k.as_bytes(), 3)[0].id == "n1")
        .take(20_000)
        .collect();
    let keys = Arc::new(keys);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let front = cluster.nodes[0].client_url("");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (front, stop, acked, keys, next) =
                (front.clone(), stop.clone(), acked.clone(), keys.clone(), next.clone());
            std::thread::spawn(move || {
                let c = client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some(key) = keys.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) else { return };
                    match c.put(format!("{front}/kv/{key}")).body(key.clone()).send() {
                        Ok(r) if r.status() == StatusCode::NO_CONTENT => acked.lock().unwrap().push(key.clone()),
                        Ok(_) => {}
                        // The node is gone: nothing more to write through it.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    cluster.nodes[2].pause();
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    cluster.nodes[0].send_term();
    // Resumed well within the replica timeout (2 s) and the shutdown timeout (3 s).
    std::thread::sleep(Duration::from_millis(1000));
    cluster.nodes[2].resume();
    let status = cluster.nodes[0].wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writers.into_iter().for_each(|w| w.join().unwrap());
    assert_eq!(status.code(), Some(0), "{}", cluster.nodes[0].log_text());
    assert!(took < TIMEOUT + Duration::from_secs(2), "shutdown took {took:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    cluster.nodes[0].restart();
    let mut missing = Vec::new();
    for key in &acked {
        for index in 0..3 {
            if !local_values(&cluster, index, key).contains(key) {
                missing.push(format!("{key} on n{}", index + 1));
            }
        }
    }
    println!(
        "SIGTERM after a run longer than --shutdown-timeout: {} writes acknowledged, {} replica copies missing; exit took {took:?}",
        acked.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lack a replica: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

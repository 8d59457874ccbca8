//! The metrics both binaries export, checked as Prometheus reads them: `promtool check
//! metrics` on the live `/metrics` of a node and of a gateway of a 3-node cluster under a
//! little load, and the gauges operators alert on (docs/operations.md, "Alerts") moving with
//! the cluster: ranges under-replicated when a node is down, ring ownership, siblings read.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_testkit::{load, metric, statuses, Cluster, Proc};

/// `promtool check metrics` on `proc`'s live exposition: its complaints (empty when clean).
fn promtool_check(proc: &Proc) -> String {
    let text = proc.client().get(proc.admin_url("/metrics")).send().unwrap().text().unwrap();
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("promtool not found ({e}): run scripts/install-deps.sh (Debian package prometheus)"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        complaints.trim().to_owned()
    } else {
        format!("promtool failed ({}): {complaints}", out.status)
    }
}

fn families(proc: &Proc) -> std::collections::BTreeSet<String> {
    let text = proc.client().get(proc.admin_url("/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn both_binaries_export_clean_metrics_that_follow_the_cluster() {
    let mut cluster = Cluster::start(3, 1, &[]);
    let gateway = cluster.gateways[0].client_url("");
    load(&gateway, 200, 4);
    // Siblings: two blind writes of one key (no context) are concurrent.
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    for value in ["a", "b"] {
        let r = client.put(cluster.gateways[0].key_url("conflict")).body(value).send().unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let r = client.get(cluster.gateways[0].key_url("conflict")).send().unwrap();
    assert_eq!(r.status().as_u16(), 300, "two blind writes read back as siblings");

    for proc in [&cluster.nodes[0], &cluster.gateways[0]] {
        let complaints = promtool_check(proc);
        assert!(complaints.is_empty(), "promtool check metrics on {}: {complaints}", proc.admin_url("/metrics"));
    }
    let node = families(&cluster.nodes[0]);
    let gw = families(&cluster.gateways[0]);
    for name in [
        "kv_http_requests_total",
        "kv_http_request_duration_seconds",
        "kv_quorum_failures_total",
        "kv_read_repairs_total",
        "kv_read_siblings",
        "kv_members",
        "kv_ring_ownership_ratio",
        "kv_ranges_under_replicated",
        "kv_workers",
        "kv_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(node.contains(name), "kvnode lacks {name}");
        assert!(gw.contains(name), "kvgateway lacks {name}");
    }
    for name in [
        "kv_hints_delivered_total",
        "kv_repair_oldest_sync_seconds",
        "kv_ranges_streaming",
        "kv_storage_keys",
        "kv_storage_disk_bytes",
        "kv_storage_disk_free_bytes",
        "kv_storage_disk_capacity_bytes",
        "kv_storage_fsync_duration_seconds",
        "kv_storage_group_commit_writes",
        "kv_storage_memtable_bytes",
        "kv_storage_block_cache_bytes",
        "kv_storage_flushes_pending",
    ] {
        assert!(node.contains(name), "kvnode lacks {name}");
    }
    println!("kvnode exports {} metric families, kvgateway {}; promtool check metrics: clean", node.len(), gw.len());

    // The sibling read shows in the histogram: one read returned 2 values.
    let g = &cluster.gateways[0];
    let reads = metric(g, "kv_read_siblings_count", "");
    let single = metric(g, "kv_read_siblings_bucket", "le=\"1\"");
    assert!(reads >= 1.0 && reads - single >= 1.0, "reads {reads}, of one value {single}");
    // Ownership shares sum to 1 with three members.
    let shares: f64 =
        (1..=3).map(|i| metric(&cluster.nodes[0], "kv_ring_ownership_ratio", &format!("member=\"n{i}\""))).sum();
    assert!((shares - 1.0).abs() < 1e-6, "ownership shares sum to {shares}");
    assert_eq!(metric(&cluster.nodes[0], "kv_ranges_under_replicated", ""), 0.0);
    // Each process names its node (a gateway its host name), and replica batches are timed
    // per peer on the coordinators, the gateway included.
    assert_eq!(metric(&cluster.nodes[0], "kv_build_info", "binary=\"kvnode\",node=\"n1\""), 1.0);
    assert_eq!(metric(&cluster.nodes[1], "kv_build_info", "binary=\"kvnode\",node=\"n2\""), 1.0);
    let n1_peer = format!("peer=\"{}\"", cluster.nodes[0].address());
    assert!(metric(g, "kv_peer_batch_duration_seconds_count", &n1_peer) >= 1.0, "the gateway times its batches to n1");
    assert!(metric(&cluster.nodes[0], "kv_storage_disk_capacity_bytes", "") > 0.0);
    assert!(metric(&cluster.nodes[0], "kv_storage_disk_free_bytes", "") > 0.0);

    // One node down: every range has a replica down (N = 3 of 3 nodes).
    cluster.nodes[2].terminate();
    wait_for(Duration::from_secs(30), "n3 down", || {
        statuses(&cluster.nodes[0]).get("n3").map(String::as_str) == Some("down")
    });
    wait_for(Duration::from_secs(10), "under-replicated ranges reported", || {
        metric(&cluster.nodes[0], "kv_ranges_under_replicated", "") > 0.0
            && metric(&cluster.gateways[0], "kv_ranges_under_replicated", "") > 0.0
    });
    let under = metric(&cluster.nodes[0], "kv_ranges_under_replicated", "");
    assert_eq!(metric(&cluster.nodes[0], "kv_members", "status=\"down\""), 1.0);
    cluster.nodes[2].restart();
    wait_for(Duration::from_secs(30), "no range under-replicated after n3's return", || {
        metric(&cluster.nodes[0], "kv_ranges_under_replicated", "") == 0.0
    });
    println!("with n3 down: {under} ranges under-replicated; 0 again after its restart");
}

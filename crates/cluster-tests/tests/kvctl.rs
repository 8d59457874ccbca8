//! `kvctl` against a real cluster: commands, output and exit codes.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use kv_testkit::{binary, Cluster, Proc};

/// Runs kvctl against `proc`'s client and admin listeners.
fn kvctl_at(proc: &Proc, args: &[&str]) -> Output {
    kvctl(&proc.client_url(""), &proc.admin_url(""), args)
}

fn kvctl(url: &str, admin: &str, args: &[&str]) -> Output {
    Command::new(binary("kvctl"))
        .env("KV_CLUSTER_SECRET", kv_testkit::secret())
        .args(["--url", url, "--admin-url", admin])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn put_get_siblings_resolve_delete_and_exit_codes() {
    let cluster = Cluster::start(3, 1, &[]);
    let g = &cluster.gateways[0];
    assert_eq!(kvctl_at(g, &["put", "k", "one"]).status.code(), Some(0));
    let got = kvctl_at(g, &["get", "k", "--r", "all"]);
    assert_eq!((got.status.code(), stdout(&got).as_str()), (Some(0), "one"));
    assert_eq!(kvctl_at(g, &["put", "k", "two", "--w", "3"]).status.code(), Some(0));
    let siblings = kvctl_at(g, &["get", "k"]);
    assert_eq!(siblings.status.code(), Some(3), "{}", stdout(&siblings));
    assert!(
        stdout(&siblings).contains("2 siblings")
            && stdout(&siblings).contains("one")
            && stdout(&siblings).contains("two")
    );
    // `kvctl siblings`: each with when it was written, newest first (one machine's clock here).
    let listed = kvctl_at(g, &["siblings", "k"]);
    let text = stdout(&listed);
    assert_eq!(listed.status.code(), Some(3), "{text}");
    assert!(text.contains("written at") && text.contains("kvctl put"), "{text}");
    assert!(text.find("two").unwrap() < text.find("one").unwrap(), "newest first: {text}");
    assert_eq!(kvctl_at(g, &["resolve", "k", "both"]).status.code(), Some(0));
    assert_eq!(stdout(&kvctl_at(g, &["get", "k"])), "both");
    assert_eq!(kvctl_at(g, &["delete", "k"]).status.code(), Some(0));
    assert_eq!(kvctl_at(g, &["get", "k"]).status.code(), Some(1));
    // Refused (4xx) and unavailable (no server) are told apart.
    assert_eq!(kvctl_at(g, &["get", "k", "--r", "9"]).status.code(), Some(4));
    let unreachable = kvctl("http://127.0.0.1:1", "http://127.0.0.1:1", &["get", "k"]);
    assert_eq!(unreachable.status.code(), Some(5));
    // The cause is said once, not once per wrapper.
    let said = String::from_utf8_lossy(&unreachable.stderr).into_owned();
    assert_eq!(said.matches("error sending request").count(), 0, "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("cannot reach") && said.to_lowercase().contains("refused"), "{said}");
    assert_eq!(kvctl_at(g, &["frobnicate"]).status.code(), Some(2));
    let members = kvctl_at(g, &["members"]);
    assert_eq!(members.status.code(), Some(0));
    assert!(["n1", "n2", "n3"].iter().all(|id| stdout(&members).contains(id)), "{}", stdout(&members));
    assert!(stdout(&members).contains("normal"), "{}", stdout(&members));
    // Every row's columns line up with the header's.
    let widths: Vec<usize> = stdout(&members).lines().map(|l| l.trim_end().len()).collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "misaligned:\n{}", stdout(&members));
    let ring = kvctl_at(g, &["ring"]);
    assert!(stdout(&ring).contains("N = 3"), "{}", stdout(&ring));
    // Removing a live member is refused (409) unless forced, saying which flag forces it.
    let node = &cluster.nodes[0];
    let live = kvctl_at(node, &["remove", "n2"]);
    assert_eq!(live.status.code(), Some(4));
    assert!(stderr(&live).contains("add --force"), "{}", stderr(&live));
    assert_eq!(kvctl_at(node, &["remove", "nobody"]).status.code(), Some(4));
    // A node's admin command sent to a gateway, and one without the secret: each says what to do.
    let at_gateway = kvctl_at(g, &["repair"]);
    assert_eq!(at_gateway.status.code(), Some(4));
    assert!(stderr(&at_gateway).contains("point --admin-url at a node"), "{}", stderr(&at_gateway));
    let unsigned = Command::new(binary("kvctl"))
        .env_remove("KV_CLUSTER_SECRET")
        .args(["--url", &node.client_url(""), "--admin-url", &node.admin_url(""), "repair"])
        .output()
        .unwrap();
    assert_eq!(unsigned.status.code(), Some(4), "{}", stderr(&unsigned));
    assert!(stderr(&unsigned).contains("--cluster-secret-file"), "{}", stderr(&unsigned));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kvbench_loads_runs_a_workload_and_reports_json() {
    let cluster = Cluster::start(3, 1, &[]);
    let out = Command::new(binary("kvbench"))
        .args(["--url", &cluster.gateways[0].url(""), "--workload", "a", "--keys", "200", "--ops", "400"])
        .args(["--concurrency", "8", "--json", "--label", "smoke"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["label"], "smoke");
    assert_eq!(result["ops"], 400, "{result}");
    assert!(result["errors"].as_object().unwrap().is_empty(), "{result}");
    assert!(result["p99_ms"].as_f64().unwrap() >= result["p50_ms"].as_f64().unwrap());
    // The load generator's own CPU time over the measured phase.
    assert!(result["loader_cpu_s"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result["loader_cores"].as_f64().unwrap() > 0.0, "{result}");
    // The no-op endpoint answers every method without touching storage.
    let noop = Command::new(binary("kvbench"))
        .args([
            "--url",
            &cluster.nodes[0].url("/noop"),
            "--protocol",
            "noop",
            "--workload",
            "w",
            "--ops",
            "100",
            "--json",
        ])
        .output()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&noop.stdout).unwrap();
    assert_eq!(result["ops"], 100, "{result}");
}

/// Acceptance (issue 22): `kvctl status` shows every member's status, zone, ownership, keys,
/// disk, hints and moving ranges through a gateway's admin URL; `kvctl leave --wait` shows the
/// hand-off's progress and returns once the node has left (it has exited, and the others no
/// longer count it).
#[test]
fn status_shows_each_members_load_and_leave_waits_until_the_node_has_left() {
    let mut cluster = Cluster::start(4, 1, &[]);
    kv_testkit::load(&cluster.gateways[0].client_url(""), 1_000, 4);
    let g = &cluster.gateways[0];
    let out = kvctl_at(g, &["status"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('n')).collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows.iter().all(|r| r.contains("normal") && r.contains("0.2.0")), "{text}");
    // Keys per node, as the table prints them (1,234): every key on N = 3 of the 4 nodes.
    let keys: u64 =
        rows.iter().map(|r| r.split_whitespace().nth(5).unwrap().replace(',', "").parse::<u64>().unwrap()).sum();
    assert!((2_700..=3_300).contains(&keys), "3 copies of 1,000 keys, the engine's estimate: {keys}\n{text}");
    let owns: f64 =
        rows.iter().map(|r| r.split_whitespace().nth(4).unwrap().trim_end_matches('%').parse::<f64>().unwrap()).sum();
    assert!((owns - 300.0).abs() < 1.0, "effective shares sum to N x 100%: {owns}\n{text}");
    println!("{text}");

    let n4 = &cluster.nodes[3];
    let started = std::time::Instant::now();
    let out = kvctl_at(n4, &["leave", "--wait"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("n4 has left"), "{text}");
    // Progress lines as it goes (with 1,000 keys the merge and hand-off take seconds).
    assert!(text.lines().filter(|l| l.starts_with('[')).count() >= 2, "progress lines: {text}");
    assert!(text.contains("ranges,"), "ranges done of all, and keys: {text}");
    println!("{text}leave --wait returned after {:.1} s", started.elapsed().as_secs_f64());
    let exit = cluster.nodes[3].wait_exit(std::time::Duration::from_secs(10));
    assert!(exit.success(), "n4 exits 0 once it has left: {exit}");
    // Once the gateway has heard that n4 left (gossip), it is no longer listed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let text = stdout(&kvctl_at(&cluster.gateways[0], &["status"]));
        if !text.lines().any(|l| l.starts_with("n4 ")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a member that left is still listed: {text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

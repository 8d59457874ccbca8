//! `kvctl backup DIR` and `kvctl restore DIR` (docs/operations.md, "Back up and restore")
//! against two real clusters: a backup of one, restored into the other, holds every key with
//! the same values, the same siblings and the same tombstones, read by parallel range scans.
//! `KV_BACKUP_KEYS` keys (default 2,000 in `make test`; `make test-long` runs 100,000).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kv_testkit::{binary, load, stored_keys, Cluster, Proc};
use reqwest::StatusCode;

fn kvctl(admin: &Proc, args: &[&str]) -> Output {
    Command::new(binary("kvctl"))
        .env("KV_CLUSTER_SECRET", kv_testkit::secret())
        .args(["--admin-url", &admin.admin_url("")])
        .args(args)
        .output()
        .unwrap()
}

/// A signed admin `POST` of `body` to `path` on `proc`: its status and answer.
fn signed_post(proc: &Proc, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let id: serde_json::Value = kv_testkit::http_client(Duration::from_secs(5))
        .get(proc.admin_url("/health/live"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let signature = kv_testkit::signer().sign("POST", path, id["id"].as_str().unwrap(), &body);
    let answer = kv_testkit::http_client(Duration::from_secs(30))
        .post(proc.admin_url(path))
        .header(kv_transport::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .unwrap();
    (answer.status(), answer.text().unwrap())
}

/// Restore batches sent by hand, as with curl (rule 16 holds on the server, not only in
/// kvctl): without a ticket, or with one that is not this cluster's, nothing is stored; a
/// cluster that holds records gives a ticket only when told to merge anyway.
fn restore_batches_need_a_ticket(target: &Cluster, backup_dir: &std::path::Path) {
    let front = &target.gateways[0];
    let file = std::fs::read_dir(backup_dir.join("data")).unwrap().next().unwrap().unwrap().path();
    let data = std::fs::read(file).unwrap();
    let length = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
    let mut entries: Vec<kv_proto::Entry> = kv_proto::decode(&data[4..4 + length]).unwrap();
    entries.truncate(1);
    entries[0].0 = b"restored/by-hand".to_vec();
    let body = kv_proto::encode(&entries);
    let stored = || stored_keys(&target.nodes[0]).contains("restored/by-hand");
    let (status, said) = signed_post(front, "/admin/restore", body.clone());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a batch without a ticket: {said}");
    assert!(said.contains("/admin/restore/begin"), "{said}");
    let (status, said) = signed_post(front, "/admin/restore?ticket=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", body.clone());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a forged ticket: {said}");
    assert!(!stored(), "a refused batch stored nothing");
    let (status, said) = signed_post(front, "/admin/restore/begin", Vec::new());
    assert_eq!(status, StatusCode::CONFLICT, "begin on a cluster that holds records: {said}");
    assert!(said.contains("holds records") && said.contains("into_non_empty"), "{said}");
    let (status, said) = signed_post(front, "/admin/restore/begin?into_non_empty=true", Vec::new());
    assert_eq!(status, StatusCode::OK, "{said}");
    let ticket: serde_json::Value = serde_json::from_str(&said).unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    // Sealed with the cluster secret: another process of the cluster (a node) takes it too.
    let (status, said) = signed_post(&target.nodes[1], &format!("/admin/restore?ticket={ticket}"), body);
    assert_eq!((status, said.as_str()), (StatusCode::OK, r#"{"keys":1}"#));
    assert!(stored(), "a batch with a ticket is stored");
}

#[test]
fn a_backup_restored_into_another_cluster_holds_the_same_records() {
    let keys: usize = std::env::var("KV_BACKUP_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    // Without hinted handoff, so that a replica that missed writes stays without them until the
    // backup (anti-entropy runs every 10 minutes).
    let mut source = Cluster::start(3, 1, &["--hinted-handoff", "false"]);
    let client = kv_testkit::http_client(Duration::from_secs(60));
    let gateway = &source.gateways[0];
    let started = Instant::now();
    load(&gateway.client_url(""), keys, 8);
    let loaded = started.elapsed();
    // Deleted keys (tombstones), and keys with siblings (two blind writes).
    for i in 0..50 {
        assert_eq!(
            client.delete(gateway.key_url(&format!("key-{i}"))).send().unwrap().status(),
            StatusCode::NO_CONTENT
        );
        for value in ["left", "right"] {
            let url = gateway.key_url(&format!("pair/{i}"));
            assert!(client.put(url).body(value).send().unwrap().status().is_success());
        }
    }
    // Writes one replica missed: n3 is down while they are acknowledged by n1 and n2 (W = 2;
    // no fallback in a 3-node cluster, no hint kept), then comes back without them (no read, no
    // anti-entropy round before the backup). A backup that read one replica per range would
    // lose those it read from n3.
    source.nodes[2].kill9();
    let n1 = source.nodes[0].client_url("");
    for i in 0..100 {
        let url = format!("{n1}/kv/missed%2F{i}");
        assert_eq!(client.put(url).body(format!("m{i}")).send().unwrap().status(), StatusCode::NO_CONTENT);
    }
    // Longer than --replica-timeout: no call to n3 is still in flight when it returns.
    std::thread::sleep(Duration::from_secs(3));
    source.nodes[2].restart();
    source.wait_for_members(3);
    let on_n3 = stored_keys(&source.nodes[2]);
    assert!((0..100).all(|i| !on_n3.contains(&format!("missed/{i}"))), "n3 came back without the writes it missed");
    let gateway = &source.gateways[0];
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    let backup_dir_text = backup_dir.display().to_string();
    let started = Instant::now();
    let out = kvctl(gateway, &["backup", &backup_dir_text]);
    let backup_took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["keys"].as_u64(), Some(keys as u64 + 150), "every key, deleted ones too: {manifest}");
    assert_eq!(manifest["deleted_keys"].as_u64(), Some(50), "{manifest}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("backup ["), "a progress bar");
    // Into an empty directory only.
    assert!(!kvctl(gateway, &["backup", &backup_dir_text]).status.success(), "a non-empty directory is refused");

    let target = Cluster::start(3, 1, &[]);
    let started = Instant::now();
    let out = kvctl(&target.gateways[0], &["restore", &backup_dir_text]);
    let restore_took = started.elapsed();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let restored = String::from_utf8_lossy(&out.stdout).into_owned();

    // A cluster that holds records is refused (a value deleted after the backup and purged
    // would come back), unless asked; merging again changes nothing.
    let again = kvctl(&target.gateways[0], &["restore", &backup_dir_text]);
    let refusal = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success() && refusal.contains("--into-non-empty"), "{refusal}");
    let merged = kvctl(&target.gateways[0], &["restore", "--into-non-empty", &backup_dir_text]);
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    // The same keys on the same nodes' worth of replicas: each node of either cluster stores
    // every key (N = 3 of 3), deleted ones included.
    let expected: BTreeSet<String> = stored_keys(&source.nodes[0]);
    assert_eq!(expected.len(), keys + 150);
    for node in &target.nodes {
        let held = stored_keys(node);
        assert_eq!(held.len(), expected.len(), "{} holds every record", node.arg("--node-id").unwrap_or("?"));
        assert_eq!(held, expected);
    }
    // Values, siblings and tombstones read back the same (a sample of the values, every pair).
    let front = &target.gateways[0];
    for i in (50..keys).step_by((keys / 500).max(1)) {
        let got = client.get(front.key_url(&format!("key-{i}"))).send().unwrap();
        assert_eq!(got.status(), StatusCode::OK, "key-{i}");
        assert_eq!(got.text().unwrap(), format!("value-{i}"));
    }
    for i in 0..50 {
        assert_eq!(client.get(front.key_url(&format!("key-{i}"))).send().unwrap().status(), StatusCode::NOT_FOUND);
        let local = target.local(0, &format!("key-{i}"));
        let versions = local["versions"].as_array().unwrap();
        assert!(!versions.is_empty() && versions.iter().all(|v| v["tombstone"] == true), "key-{i}: {local}");
        let pair = client.get(front.key_url(&format!("pair/{i}"))).send().unwrap();
        assert_eq!(pair.status(), StatusCode::MULTIPLE_CHOICES, "pair/{i} keeps its siblings");
    }
    for i in 0..100 {
        let got = client.get(front.key_url(&format!("missed/{i}"))).send().unwrap();
        assert_eq!((got.status(), got.text().unwrap()), (StatusCode::OK, format!("m{i}")), "missed/{i}");
    }
    // The same versions, dots included.
    assert_eq!(target.local(1, "key-77")["versions"], source.local(1, "key-77")["versions"]);
    restore_batches_need_a_ticket(&target, &backup_dir);
    println!(
        "backup round trip of {} keys: loaded in {:.1} s; {said}{restored}backup {:.1} s, restore {:.1} s",
        keys + 150,
        loaded.as_secs_f64(),
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64()
    );
}

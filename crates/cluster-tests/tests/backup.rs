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

/// A restore batch of one record of the backup, under another `key`.
fn one_record(backup_dir: &std::path::Path, key: &str) -> Vec<u8> {
    let file = std::fs::read_dir(backup_dir.join("data")).unwrap().next().unwrap().unwrap().path();
    let data = std::fs::read(file).unwrap();
    let length = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
    let mut entries: Vec<kv_proto::Entry> = kv_proto::decode(&data[4..4 + length]).unwrap();
    entries.truncate(1);
    entries[0].0 = key.as_bytes().to_vec();
    kv_proto::encode(&entries)
}

/// Restore batches sent by hand, as with curl (rule 16 holds on the server, not only in
/// kvctl): without a ticket, or with one that is not this cluster's, nothing is stored; a
/// cluster that holds records gives a ticket only when told to merge anyway.
fn restore_batches_need_a_ticket(target: &Cluster, backup_dir: &std::path::Path) -> String {
    let front = &target.gateways[0];
    let body = one_record(backup_dir, "restored/by-hand");
    let stored = || stored_keys(&target.nodes[0]).contains("restored/by-hand");
    let (status, said) = signed_post(front, "/admin/restore", body.clone());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a batch without a ticket: {said}");
    assert!(said.contains("/admin/restore/begin"), "{said}");
    let (status, said) = signed_post(front, "/admin/restore?ticket=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", body.clone());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a made-up ticket: {said}");
    let (status, said) = signed_post(front, "/admin/restore/begin", Vec::new());
    assert_eq!(status, StatusCode::CONFLICT, "begin on a cluster that holds records: {said}");
    assert!(said.contains("holds records") && said.contains("into_non_empty"), "{said}");
    let (status, said) = signed_post(front, "/admin/restore/begin?into_non_empty=true", Vec::new());
    assert_eq!(status, StatusCode::OK, "{said}");
    let ticket: serde_json::Value = serde_json::from_str(&said).unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    // The real ticket with one bit of its MAC changed.
    use base64::Engine as _;
    let mut forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(ticket).unwrap();
    *forged.last_mut().unwrap() ^= 0x01;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
    let (status, said) = signed_post(front, &format!("/admin/restore?ticket={forged}"), body.clone());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a forged ticket: {said}");
    assert!(said.contains("MAC"), "{said}");
    assert!(!stored(), "a refused batch stored nothing");
    // Sealed with the cluster secret: another process of the cluster (a node) takes it too.
    let (status, said) = signed_post(&target.nodes[1], &format!("/admin/restore?ticket={ticket}"), body);
    assert_eq!((status, said.as_str()), (StatusCode::OK, r#"{"keys":1}"#));
    assert!(stored(), "a batch with a ticket is stored");
    ticket.to_owned()
}

/// A restore ticket is good for its cluster's members only, for `--tombstone-grace` from its
/// issue; `begin` answers `503` while a member does not say whether it holds records. (A
/// second cluster that shares the test's secret, with a grace of 5 s.)
fn restore_tickets_expire_and_name_their_cluster(other_clusters_ticket: &str, body: Vec<u8>) {
    let mut short =
        Cluster::start_with(3, 1, &["--tombstone-grace", "5s", "--hint-max-age", "1s"], &["--tombstone-grace", "5s"]);
    let front = &short.gateways[0];
    let (status, said) = signed_post(front, "/admin/restore/begin", Vec::new());
    assert_eq!(status, StatusCode::OK, "an empty cluster: {said}");
    let begun: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(begun["valid_for_s"], 5, "{begun}");
    let ticket = begun["ticket"].as_str().unwrap().to_owned();
    let issued = Instant::now();
    let (status, said) = signed_post(front, &format!("/admin/restore?ticket={other_clusters_ticket}"), body.clone());
    assert_eq!(status, StatusCode::CONFLICT, "another cluster's ticket (the same secret): {said}");
    assert!(said.contains("other members"), "{said}");
    let (status, said) = signed_post(front, &format!("/admin/restore?ticket={ticket}"), body.clone());
    assert_eq!(status, StatusCode::OK, "{said}");
    std::thread::sleep(Duration::from_millis(5_500).saturating_sub(issued.elapsed()));
    let (status, said) = signed_post(&short.nodes[0], &format!("/admin/restore?ticket={ticket}"), body);
    assert_eq!(status, StatusCode::CONFLICT, "a batch after the grace: {said}");
    assert!(said.contains("expired"), "{said}");
    // A member that does not answer cannot say it holds nothing.
    short.nodes[0].kill9();
    let (status, said) = signed_post(front, "/admin/restore/begin", Vec::new());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{said}");
    assert!(said.contains("did not say whether it holds records"), "{said}");
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
    // A retry under the first restore's ticket (what kvctl prints for a restore that fails).
    let printed = String::from_utf8_lossy(&out.stderr).into_owned();
    let first_ticket = printed.split("--ticket ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap();
    let retried = kvctl(&target.nodes[2], &["restore", "--ticket", first_ticket, &backup_dir_text]);
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
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
    let ticket = restore_batches_need_a_ticket(&target, &backup_dir);
    restore_tickets_expire_and_name_their_cluster(&ticket, one_record(&backup_dir, "restored/short"));
    println!(
        "backup round trip of {} keys: loaded in {:.1} s; {said}{restored}backup {:.1} s, restore {:.1} s",
        keys + 150,
        loaded.as_secs_f64(),
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64()
    );
}

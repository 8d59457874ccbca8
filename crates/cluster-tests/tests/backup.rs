//! `scripts/backup.py` (docs/operations.md, "Back up and restore") against two real clusters:
//! a backup of one, restored into the other, holds the same live keys with the same values and
//! siblings, and no deleted key.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use kv_testkit::{binary, Cluster};

fn script(args: &[&str]) -> std::process::Output {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let kv_bin = binary("kvctl").parent().unwrap().display().to_string();
    Command::new("python3")
        .current_dir(root)
        .arg("scripts/backup.py")
        .args(args)
        .env("KV_BIN", kv_bin)
        .output()
        .unwrap()
}

#[test]
fn a_backup_restored_into_another_cluster_holds_the_same_values_and_siblings() {
    let source = Cluster::start(3, 1, &[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let gateway = &source.gateways[0];
    for i in 0..100 {
        assert!(client
            .put(gateway.key_url(&format!("key {i}/x")))
            .body(format!("value {i}"))
            .send()
            .unwrap()
            .status()
            .is_success());
    }
    for value in ["one", "two"] {
        client.put(gateway.key_url("conflict")).header("content-type", "text/plain").body(value).send().unwrap();
    }
    assert!(client.delete(gateway.key_url("key 7/x")).send().unwrap().status().is_success());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, kv_testkit::secret()).unwrap();
    let backup = dir.path().join("backup.jsonl");
    let admin_urls: Vec<String> = source.nodes.iter().map(|n| n.admin_url("")).collect();
    let out = script(&[
        "backup",
        "--admin-urls",
        &admin_urls.join(","),
        "--url",
        &gateway.client_url(""),
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "backup: {report}");
    assert!(report.contains("100 keys written") && report.contains("1 deleted keys skipped"), "{report}");

    let target = Cluster::start(3, 1, &[]);
    let out = script(&["restore", "--url", &target.gateways[0].client_url(""), "--in", backup.to_str().unwrap()]);
    let restored = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "restore: {restored}");
    assert!(restored.contains("100 keys, 101 values written, 0 failed"), "{restored}");
    let get = |key: &str| client.get(target.gateways[0].key_url(key)).send().unwrap();
    for i in (0..100).filter(|i| *i != 7) {
        assert_eq!(get(&format!("key {i}/x")).text().unwrap(), format!("value {i}"));
    }
    assert_eq!(get("key 7/x").status().as_u16(), 404, "a deleted key is not restored");
    let siblings: serde_json::Value = get("conflict").json().unwrap();
    assert_eq!(siblings["siblings"].as_array().unwrap().len(), 2, "{siblings}");
    println!("backup: {}restore: {}", report.lines().last().unwrap_or(""), restored.trim());
}

//! Crash safety: every write acknowledged before a `kill -9` is readable after restart.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use kv_testkit::start_node;
use reqwest::StatusCode;

const KEYS: usize = 1000;
const WRITERS: usize = 8;

/// Writes KEYS keys from WRITERS threads (so group commit batches), kills the node with SIGKILL
/// right after the last 204, restarts it and reads every key back.
fn acknowledged_writes_survive_kill_9(engine: &str, sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = start_node(&data, &["--node-id", "n1", "--engine", engine, "--sync", sync]);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..WRITERS {
            scope.spawn(|| {
                let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= KEYS {
                        break;
                    }
                    let response =
                        client.put(node.key_url(&format!("key-{i}"))).body(format!("value-{i}")).send().unwrap();
                    assert_eq!(response.status(), StatusCode::NO_CONTENT);
                }
            });
        }
    });
    node.kill9();
    node.restart();
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let mut missing = Vec::new();
    for i in 0..KEYS {
        let response = client.get(node.key_url(&format!("key-{i}"))).send().unwrap();
        if response.status() != StatusCode::OK || response.text().unwrap() != format!("value-{i}") {
            missing.push(i);
        }
    }
    assert!(
        missing.is_empty(),
        "{engine}/{sync}: {} acknowledged keys lost after kill -9, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    println!("{engine} --sync {sync}: {KEYS} acknowledged keys all readable after kill -9");
}

#[test]
fn fjall_batch_survives_kill_9() {
    acknowledged_writes_survive_kill_9("fjall", "batch");
}

#[test]
fn fjall_always_survives_kill_9() {
    acknowledged_writes_survive_kill_9("fjall", "always");
}

#[test]
fn sled_batch_survives_kill_9() {
    acknowledged_writes_survive_kill_9("sled", "batch");
}

#[test]
fn sled_always_survives_kill_9() {
    acknowledged_writes_survive_kill_9("sled", "always");
}

//! The async Rust client (`kv-client`) against real processes: values, siblings and resolvers,
//! failover from a dead endpoint and a node that goes down, `Retry-After`, tokens and TLS, and
//! the blocking wrapper.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kv_client::{blocking, newest_wins, Client, Error, Read, Resolution};
use kv_testkit::tls::TestCa;
use kv_testkit::{free_port, Cluster};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn values_siblings_resolvers_and_failover() {
    let mut cluster = Cluster::start(3, 1, &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.client_url("")).collect();
    let gateway = cluster.gateways[0].client_url("");
    runtime().block_on(async {
        // The first endpoint refuses connections: the client moves on.
        let client = Client::builder([dead.as_str(), gateway.as_str()]).build().unwrap();
        assert!(client.put("a/b c", "one", "text/plain", None).await.unwrap().is_some());
        match client.get("a/b c").await.unwrap() {
            Read::Value { value, content_type, .. } => {
                assert_eq!((&value[..], content_type.as_str()), (&b"one"[..], "text/plain"))
            }
            other => panic!("{other:?}"),
        }
        assert!(client.retried() >= 1, "failed over from the dead endpoint");
        // Siblings, a merge, newest wins, a delete.
        client.put("colour", "red", "text/plain", None).await.unwrap();
        assert_eq!(client.put("colour", "blue", "text/plain", None).await.unwrap(), None, "a sibling: no context");
        let Read::Siblings { siblings, .. } = client.get("colour").await.unwrap() else { panic!("siblings") };
        assert_eq!(siblings.len(), 2);
        assert!(siblings.iter().all(|s| s.written_at_ms > 0));
        let merged = client
            .resolve("colour", |s| {
                let mut v: Vec<_> = s.iter().map(|s| String::from_utf8_lossy(&s.value).into_owned()).collect();
                v.sort();
                Resolution::Keep(v.join("+").into(), "text/plain".into())
            })
            .await
            .unwrap();
        assert!(matches!(merged, Read::Value { ref value, .. } if &value[..] == b"blue+red"), "{merged:?}");
        client.put("last", "first", "text/plain", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.put("last", "second", "text/plain", None).await.unwrap();
        let kept = client.resolve("last", newest_wins).await.unwrap();
        assert!(matches!(kept, Read::Value { ref value, .. } if &value[..] == b"second"), "{kept:?}");
        client.delete("last", None).await.unwrap();
        assert!(matches!(client.get("last").await.unwrap(), Read::NotFound { .. }));
        // A typed refusal is not retried.
        let refused = client.put("k", "v", "text/plain", Some("forged")).await.unwrap_err();
        assert!(matches!(refused, Error::Server { status: 400, ref code, .. } if code == "bad_context"), "{refused}");
    });
    // A node down: a client of the three nodes fails no request.
    cluster.nodes[0].kill9();
    runtime().block_on(async {
        let client = Client::builder(&nodes).timeout(Duration::from_secs(5)).build().unwrap();
        let (mut failed, mut slowest) = (0, Duration::ZERO);
        for i in 0..50 {
            let started = Instant::now();
            let key = format!("down-{i}");
            let ok = client.put(&key, i.to_string(), "text/plain", None).await.is_ok()
                && matches!(client.get(&key).await, Ok(Read::Value { .. }));
            failed += usize::from(!ok);
            slowest = slowest.max(started.elapsed());
        }
        assert_eq!(failed, 0);
        println!(
            "rust client, n1 down: 100 requests, 0 failed, slowest {} ms, {} failovers",
            slowest.as_millis(),
            client.retried()
        );
    });
    // The blocking wrapper, from a thread with no runtime.
    let client = blocking::Client::new(Client::builder([gateway.as_str()])).unwrap();
    client.put("plain", "text", "text/plain", None).unwrap();
    assert!(matches!(client.get("plain").unwrap(), Read::Value { ref value, .. } if &value[..] == b"text"));
}

#[test]
fn retries_honour_retry_after_until_the_cluster_forms() {
    // Two nodes expected, one started: 503 cluster_forming with Retry-After: 1.
    let mut cluster = Cluster::start(1, 0, &["--expect-nodes", "2"]);
    let url = cluster.nodes[0].client_url("");
    runtime().block_on(async {
        let once = Client::builder([url.as_str()]).retries(0).build().unwrap();
        let refused = once.put("k", "v", "text/plain", None).await.unwrap_err();
        assert!(
            matches!(refused, Error::Server { status: 503, ref code, .. } if code == "cluster_forming"),
            "{refused}"
        );
    });
    let patient = std::thread::spawn(move || {
        runtime().block_on(async {
            let client = Client::builder([url.as_str()]).retries(30).build().unwrap();
            let started = Instant::now();
            client.put("formed", "yes", "text/plain", None).await.unwrap();
            (started.elapsed(), client.retried())
        })
    });
    std::thread::sleep(Duration::from_millis(1500));
    cluster.add_node(&["--expect-nodes", "2"]);
    let (took, retried) = patient.join().unwrap();
    assert!(retried >= 1 && took >= Duration::from_millis(900 * retried as u64), "{retried} retries in {took:?}");
    println!(
        "rust client: answered after {:.1} s and {retried} retries, one Retry-After second each",
        took.as_secs_f64()
    );
}

#[test]
fn tokens_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "rust-client");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "read reader-0123456789abcdef\nwrite writer-0123456789abcdef\n").unwrap();
    let mut node_args: Vec<String> = ca.args(dir.path(), "node");
    node_args.extend(["--client-tokens-file".into(), tokens.display().to_string()]);
    let args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let cluster = Cluster::start(3, 0, &args);
    let url = cluster.nodes[0].client_url("");
    assert!(url.starts_with("https://"), "{url}");
    let pem = std::fs::read(&ca.ca_file).unwrap();
    runtime().block_on(async {
        let client = |token: Option<&str>, pem: Option<Vec<u8>>| {
            Client::builder([url.as_str()]).token(token.map(str::to_owned)).ca_pem(pem).retries(0).build().unwrap()
        };
        let writer = client(Some("writer-0123456789abcdef"), Some(pem.clone()));
        writer.put("k", "v", "text/plain", None).await.unwrap();
        let reader = client(Some("reader-0123456789abcdef"), Some(pem.clone()));
        assert!(matches!(reader.get("k").await.unwrap(), Read::Value { .. }));
        let refused = reader.put("k", "w", "text/plain", None).await.unwrap_err();
        assert!(matches!(refused, Error::Server { status: 403, .. }), "{refused}");
        let anonymous = client(None, Some(pem.clone())).get("k").await.unwrap_err();
        assert!(matches!(anonymous, Error::Server { status: 401, .. }), "{anonymous}");
        // Without the cluster's CA the server is not trusted.
        let untrusting = client(Some("writer-0123456789abcdef"), None).get("k").await.unwrap_err();
        assert!(matches!(untrusting, Error::Transport { .. }), "{untrusting}");
    });
}

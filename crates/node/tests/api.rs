//! The client API of a single real kvnode process.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use kv_testkit::{start_node, Proc};

fn kvnode() -> std::process::Command {
    let mut command = std::process::Command::new(kv_testkit::binary("kvnode"));
    command.env("KV_CLUSTER_SECRET", kv_testkit::secret());
    command
}
use reqwest::StatusCode;
use serde_json::Value;

fn start(extra: &[&str]) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--node-id", "n1"];
    args.extend_from_slice(extra);
    let node = start_node(&dir.path().join("data"), &args);
    (dir, node)
}

fn context(response: &reqwest::blocking::Response) -> String {
    response.headers()["x-context"].to_str().unwrap().to_owned()
}

#[test]
fn every_byte_value_and_a_non_ascii_key_round_trip() {
    let (_dir, node) = start(&[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let value: Vec<u8> = (0..=255u8).collect();
    let key = "clé-ключ-鍵 🔑/with slash?&";
    let put =
        client.put(node.key_url(key)).header("content-type", "application/x-test").body(value.clone()).send().unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    assert!(!context(&put).is_empty());
    let got = client.get(node.key_url(key)).send().unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "application/x-test");
    assert!(!context(&got).is_empty());
    assert_eq!(got.bytes().unwrap().to_vec(), value);
}

#[test]
fn blind_writes_are_siblings_until_a_write_with_their_context() {
    let (_dir, node) = start(&[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let url = node.key_url("cart");
    for value in ["apples", "pears"] {
        assert_eq!(client.put(&url).body(value).send().unwrap().status(), StatusCode::NO_CONTENT);
    }
    let conflict = client.get(&url).send().unwrap();
    assert_eq!(conflict.status(), StatusCode::MULTIPLE_CHOICES);
    let body: Value = conflict.json().unwrap();
    let mut values: Vec<Vec<u8>> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| base64::engine::general_purpose::STANDARD.decode(s["value"].as_str().unwrap()).unwrap())
        .collect();
    values.sort();
    assert_eq!(values, vec![b"apples".to_vec(), b"pears".to_vec()]);
    let token = body["context"].as_str().unwrap();
    let resolve = client.put(&url).header("x-context", token).body("apples+pears").send().unwrap();
    assert_eq!(resolve.status(), StatusCode::NO_CONTENT);
    let resolved = client.get(&url).send().unwrap();
    assert_eq!(resolved.status(), StatusCode::OK);
    assert_eq!(resolved.text().unwrap(), "apples+pears");
}

#[test]
fn delete_then_get_is_not_found() {
    let (_dir, node) = start(&[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let url = node.key_url("gone");
    client.put(&url).body("v").send().unwrap();
    assert_eq!(client.delete(&url).send().unwrap().status(), StatusCode::NO_CONTENT);
    let got = client.get(&url).send().unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND);
    assert_eq!(got.json::<Value>().unwrap()["error"], "not_found");
    // A delete with a stale context leaves the concurrent write as a sibling of the tombstone.
    let first = client.put(node.key_url("k2")).body("a").send().unwrap();
    let stale = context(&first);
    client.put(node.key_url("k2")).body("b").send().unwrap();
    client.delete(node.key_url("k2")).header("x-context", stale).send().unwrap();
    let both = client.get(node.key_url("k2")).send().unwrap();
    assert_eq!(both.status(), StatusCode::MULTIPLE_CHOICES);
    let siblings: Value = both.json().unwrap();
    assert_eq!(siblings["siblings"].as_array().unwrap().len(), 2);
    assert!(siblings["siblings"].as_array().unwrap().iter().any(|s| s["deleted"] == true));
}

#[test]
fn bad_requests_get_clear_4xx() {
    let (_dir, node) = start(&["--max-value-bytes", "1000"]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let too_large = client.put(node.key_url("big")).body(vec![0u8; 1001]).send().unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.json::<Value>().unwrap()["error"], "value_too_large");
    assert_eq!(client.put(node.key_url("fits")).body(vec![0u8; 1000]).send().unwrap().status(), StatusCode::NO_CONTENT);

    let garbage = client.put(node.key_url("k")).header("x-context", "not a token!").body("v").send().unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(garbage.json::<Value>().unwrap()["error"], "bad_context");
    let truncated = client.put(node.key_url("k")).header("x-context", "AQECbjEB").body("v").send().unwrap();
    assert_eq!(truncated.status(), StatusCode::BAD_REQUEST);

    let long_key = "k".repeat(1025);
    let rejected = client.put(node.key_url(&long_key)).body("v").send().unwrap();
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    assert_eq!(rejected.json::<Value>().unwrap()["error"], "bad_key");
    assert_eq!(client.put(node.key_url(&"k".repeat(1024))).body("v").send().unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(client.get(node.url("/kv/%FF%FE")).send().unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(client.get(node.url("/kv/")).send().unwrap().status(), StatusCode::BAD_REQUEST);

    let no_route = client.get(node.url("/nope")).send().unwrap();
    assert_eq!(no_route.status(), StatusCode::NOT_FOUND);
    assert_eq!(no_route.json::<Value>().unwrap()["error"], "no_route");
    let wrong_method = client.post(node.key_url("k")).body("v").send().unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.json::<Value>().unwrap()["error"], "method_not_allowed");
}

#[test]
fn health_and_metrics_report() {
    let (_dir, node) = start(&[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    client.put(node.key_url("m")).body("v").send().unwrap();
    client.get(node.key_url("m")).send().unwrap();
    let live: Value = client.get(node.url("/health/live")).send().unwrap().json().unwrap();
    assert_eq!(live["status"], "live");
    let ready: Value = client.get(node.url("/health/ready")).send().unwrap().json().unwrap();
    assert_eq!(ready["status"], "ready");
    let workers: Value = node.admin(reqwest::Method::GET, "/admin/workers").send().unwrap().json().unwrap();
    let names: Vec<&str> = workers["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    for expected in ["gossip", "ownership", "rebalancer", "dropper", "batch local"] {
        assert!(names.contains(&expected), "{expected} missing from {workers}");
    }
    assert!(workers["workers"].as_array().unwrap().iter().all(|w| w["state"] != "stopped"), "{workers}");
    let text = client.get(node.url("/metrics")).send().unwrap().text().unwrap();
    for needle in [
        r#"kv_http_requests_total{listener="client",method="PUT",route="/kv/{key}",status="204"} 1"#,
        r#"kv_http_requests_total{listener="client",method="GET",route="/kv/{key}",status="200"} 1"#,
        r#"kv_workers{state="idle"}"#,
        r#"kv_peer_requests_total{outcome="ok",request="gossip"}"#,
        r#"kv_peer_bytes_total{direction="sent",request="batch"}"#,
        "kv_http_request_duration_seconds_bucket",
        "kv_storage_fsync_duration_seconds_count",
        r#"kv_storage_operations_total{op="put",outcome="ok"} 1"#,
        "kv_storage_disk_bytes",
        "kv_storage_group_commit_writes_bucket",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

#[test]
fn sigterm_drains_syncs_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = start_node(&data, &["--node-id", "n1", "--sync", "none"]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    for i in 0..50 {
        client.put(node.key_url(&format!("k{i}"))).body("v").send().unwrap();
    }
    let status = node.terminate();
    assert_eq!(status.code(), Some(0), "{}", node.log_text());
    // With --sync none only the shutdown sync made these durable.
    let node = start_node(&data, &["--sync", "none"]);
    for i in 0..50 {
        assert_eq!(client.get(node.key_url(&format!("k{i}"))).send().unwrap().status(), StatusCode::OK);
    }
}

#[test]
fn bad_configuration_exits_with_status_2_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--engine".into(), "rocks".into()], "--engine"),
        (vec!["--listen".into(), "not-an-address".into()], "--listen"),
        (vec!["--no-such-flag".into()], "no-such-flag"),
        (vec!["--config".into(), dir.path().join("missing.toml").display().to_string()], "cannot read config file"),
    ];
    for (args, needle) in cases {
        let out = kvnode().args(&args).arg("--data-dir").arg(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "node-id = \"n1\"\nsurprise = true\n").unwrap();
    let out = kvnode().arg("--config").arg(&bad_file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
    // The environment is read, and a bad value there is as clear as a bad flag.
    let out = kvnode().env("KV_SYNC", "later").arg("--data-dir").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sync"));
}

#[test]
fn config_file_env_and_flags_layer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "node-id = \"from-file\"\nzone = \"file-zone\"\n").unwrap();
    let ports = kv_testkit::Ports::node();
    let mut child = kvnode()
        .arg("--config")
        .arg(&file)
        .args(ports.args())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("KV_NODE_ID", "from-env")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let mut members = None;
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{}/cluster/members", ports.admin)).send() {
            members = Some(r.json::<Value>().unwrap());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    let members = members.expect("node served");
    assert_eq!(members["members"][0]["id"], "from-env", "{members}");
    assert_eq!(members["members"][0]["zone"], "file-zone", "{members}");
}

#[test]
fn internal_batches_answer_each_call_in_order_and_refuse_bad_batches() {
    use kv_proto::{
        decode, encode, Call, CoordinateRequest, ReadRequest, Refusal, Reply, StoreRequest, Ticket, Write, BATCH_PATH,
        MAX_BATCH_CALLS,
    };
    use kv_testkit::sign_peer;
    use kv_transport::{Secrets, Signer, SIGNATURE_HEADER};
    let ticket = |write_id: u128| Ticket { write_id, deadline_ms: kv_coordinator::now_ms() + 60_000 };
    let (_dir, node) = start(&[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let post = |calls: &[Call]| {
        let body = encode(&calls.to_vec());
        client
            .post(node.url(BATCH_PATH))
            .header(SIGNATURE_HEADER, sign_peer(&node, BATCH_PATH, &body))
            .body(body)
            .send()
            .unwrap()
    };
    let write = Write {
        value: b"v".to_vec().into(),
        content_type: "text/plain".into(),
        context: kv_vclock::VClock::new(),
        tombstone: false,
    };
    let calls = [
        Call::Coordinate(CoordinateRequest::new(b"a".to_vec(), write.clone(), ticket(1))),
        Call::Read(ReadRequest::new(Vec::new())),
        Call::Store(StoreRequest::new(vec![b'k'; 2000], Vec::new(), None, 0)),
        Call::Coordinate(CoordinateRequest::new(
            b"a".to_vec(),
            Write { value: b"w".to_vec().into(), ..write.clone() },
            ticket(2),
        )),
        Call::Read(ReadRequest::new(b"a".to_vec())),
    ];
    let response = post(&calls);
    assert_eq!(response.status(), StatusCode::OK);
    let replies: Vec<Reply> = decode(&response.bytes().unwrap()).unwrap();
    assert_eq!(replies.len(), calls.len());
    // The value stays with the front: the call carried its length, the version comes back
    // without it, and the front puts it in before it stores the set.
    let first = match &replies[0] {
        Reply::Coordinated(c) if c.created_version().is_some_and(|v| v.value.is_empty()) => c.clone(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(&replies[1], Reply::Refused(Refusal::Malformed(_))), "empty key fails alone: {:?}", replies[1]);
    assert!(matches!(&replies[2], Reply::Refused(Refusal::Malformed(_))), "long key fails alone: {:?}", replies[2]);
    // A coordinate call stores nothing, and no second dot is issued for the key until the
    // first version is stored here (rule 15 of docs/consistency.md): the front asks another
    // replica.
    assert!(matches!(&replies[3], Reply::Refused(Refusal::Outstanding(_))), "{:?}", replies[3]);
    assert!(matches!(&replies[4], Reply::Read(versions) if versions.is_empty()), "{:?}", replies[4]);
    // The front's store of the set, then the second write in the same batch: two blind writes
    // through one node are siblings.
    let store = |c: &kv_proto::CoordinateResponse, value: &'static [u8]| {
        let mut versions = c.record.versions().to_vec();
        versions.iter_mut().filter(|v| v.dot == c.created).for_each(|v| v.value = value.into());
        Call::Store(StoreRequest::new(b"a".to_vec(), versions, Some(c.created.clone()), 0))
    };
    let replies: Vec<Reply> = decode(&post(&[store(&first, b"v"), calls[3].clone()]).bytes().unwrap()).unwrap();
    assert!(matches!(&replies[0], Reply::Stored), "{replies:?}");
    let second = match &replies[1] {
        Reply::Coordinated(c) if c.record.len() == 2 => c.clone(),
        other => panic!("{other:?}"),
    };
    let replies: Vec<Reply> = decode(&post(&[store(&second, b"w")]).bytes().unwrap()).unwrap();
    assert!(matches!(&replies[0], Reply::Stored), "{replies:?}");
    let replies: Vec<Reply> = decode(&post(&calls[4..]).bytes().unwrap()).unwrap();
    assert!(matches!(&replies[..], [Reply::Read(versions)] if versions.len() == 2), "{replies:?}");
    // The same write again (a front's retry, same write id) reuses its version, value and all
    // (it is stored here now); a write whose deadline passed is not applied.
    let again = Call::Coordinate(CoordinateRequest::new(
        b"a".to_vec(),
        Write { value: b"different".to_vec().into(), ..write.clone() },
        ticket(1),
    ));
    let late = Call::Coordinate(CoordinateRequest::new(
        b"a".to_vec(),
        Write { value: b"late".to_vec().into(), ..write.clone() },
        Ticket { write_id: 3, deadline_ms: kv_coordinator::now_ms() - 1 },
    ));
    let replies: Vec<Reply> = decode(&post(&[again, late]).bytes().unwrap()).unwrap();
    assert!(
        matches!(&replies[0], Reply::Coordinated(c) if c.created_version().unwrap().value == b"v"[..] && c.record.len() == 2),
        "{replies:?}"
    );
    assert!(matches!(&replies[1], Reply::Refused(Refusal::TooLate(_))), "{replies:?}");

    let too_many = vec![Call::Read(ReadRequest::new(b"a".to_vec())); MAX_BATCH_CALLS + 1];
    assert_eq!(post(&too_many).status(), StatusCode::BAD_REQUEST);
    let garbage = client
        .post(node.url(BATCH_PATH))
        .header(SIGNATURE_HEADER, sign_peer(&node, BATCH_PATH, b"\xff\xff"))
        .body(&b"\xff\xff"[..])
        .send()
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let unsigned = client.post(node.url(BATCH_PATH)).body(encode(&calls.to_vec())).send().unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    // One byte changed after signing: refused at the transport's check, before any handler
    // (the read below would otherwise succeed).
    let read = encode(&vec![Call::Read(ReadRequest::new(b"a".to_vec()))]);
    let signature = sign_peer(&node, BATCH_PATH, &read);
    let honest = client.post(node.url(BATCH_PATH)).header(SIGNATURE_HEADER, &signature).body(read.clone()).send();
    assert_eq!(honest.unwrap().status(), StatusCode::OK);
    let mut tampered = read.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let resigned = sign_peer(&node, BATCH_PATH, &read);
    let refused = client.post(node.url(BATCH_PATH)).header(SIGNATURE_HEADER, &resigned).body(tampered).send().unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.json::<Value>().unwrap()["message"].as_str().unwrap().contains("bad signature"));
    // Signed by a process with another key: refused too.
    let other = Secrets::parse(&"another-clusters-secret-".repeat(2)).unwrap();
    let foreign = Signer::new(&other).sign("POST", BATCH_PATH, &node.address(), &read);
    let refused =
        client.post(node.url(BATCH_PATH)).header(SIGNATURE_HEADER, foreign).body(read.clone()).send().unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // The honest request replayed as it was: refused.
    let replayed = client.post(node.url(BATCH_PATH)).header(SIGNATURE_HEADER, &signature).body(read).send().unwrap();
    assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn each_listener_serves_only_its_routes() {
    let (_dir, node) = start(&[]);
    let client = kv_testkit::http_client(std::time::Duration::from_secs(60));
    let on = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    let (client_port, peer_port, admin_port) = (node.ports.client, node.ports.peer.unwrap(), node.ports.admin);
    assert_eq!(client.put(on(client_port, "/kv/k")).body("v").send().unwrap().status(), StatusCode::NO_CONTENT);
    // The client port: /kv only.
    for path in [
        "/internal/v1/batch",
        "/internal/v1/gossip",
        "/admin/keys",
        "/admin/workers",
        "/admin/leave",
        "/metrics",
        "/cluster/members",
        "/health/ready",
    ] {
        let get = client.get(on(client_port, path)).send().unwrap();
        assert_eq!(get.status(), StatusCode::NOT_FOUND, "client port serves {path}");
        assert_eq!(get.json::<Value>().unwrap()["error"], "no_route");
        assert_eq!(client.post(on(client_port, path)).send().unwrap().status(), StatusCode::NOT_FOUND, "POST {path}");
    }
    // The peer port: /internal only; it answers nothing unsigned (401), and a signed request
    // for anything else finds no route.
    for path in ["/kv/k", "/admin/keys", "/metrics", "/cluster/members"] {
        assert_eq!(client.get(on(peer_port, path)).send().unwrap().status(), StatusCode::UNAUTHORIZED, "{path}");
        let signature = kv_testkit::signer().sign("GET", path, &node.address(), b"");
        let signed = client.get(on(peer_port, path)).header(kv_transport::SIGNATURE_HEADER, signature).send().unwrap();
        assert_eq!(signed.status(), StatusCode::NOT_FOUND, "peer port serves {path}");
    }
    // The admin port: no keys, no internal traffic.
    for path in ["/kv/k", "/internal/v1/batch"] {
        assert_eq!(
            client.get(on(admin_port, path)).send().unwrap().status(),
            StatusCode::NOT_FOUND,
            "admin serves {path}"
        );
        assert_eq!(
            client.post(on(admin_port, path)).send().unwrap().status(),
            StatusCode::NOT_FOUND,
            "admin serves {path}"
        );
    }
    for path in ["/metrics", "/health/live", "/health/ready", "/cluster/members", "/cluster/ring"] {
        assert_eq!(client.get(on(admin_port, path)).send().unwrap().status(), StatusCode::OK, "admin lacks {path}");
    }
    // Its /admin/* routes answer signed requests only.
    for path in ["/admin/workers", "/admin/keys"] {
        assert_eq!(client.get(on(admin_port, path)).send().unwrap().status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            node.admin(reqwest::Method::GET, path).send().unwrap().status(),
            StatusCode::OK,
            "admin lacks {path}"
        );
    }
}

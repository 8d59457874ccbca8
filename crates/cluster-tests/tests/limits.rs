//! Hostile clients against a real node (docs/security.md, "Limits"): slow-loris connections,
//! 10,000 idle connections and a flood of oversized bodies, all at once, while a normal client
//! keeps reading and writing. Every normal request must succeed; the test prints their p99 and
//! the node's resident memory during the attack.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_testkit::{metric, start_node, Proc};
use reqwest::StatusCode;

/// Resident memory of a process, in MB.
fn rss_mb(proc: &Proc) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid().unwrap())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

/// Normal traffic: writes and reads of small values, one at a time, until `stop`; each
/// request's latency, and every failure.
fn normal_client(base: &str, stop: &AtomicBool) -> (Vec<Duration>, Vec<String>) {
    let c = kv_testkit::http_client(Duration::from_secs(10));
    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let url = format!("{base}/kv/normal-{}", i % 100);
        let started = Instant::now();
        let result = if i.is_multiple_of(2) { c.put(&url).body(format!("v{i}")).send() } else { c.get(&url).send() };
        latencies.push(started.elapsed());
        match result {
            Ok(r) if [StatusCode::NO_CONTENT, StatusCode::OK, StatusCode::NOT_FOUND].contains(&r.status()) => {}
            Ok(r) => failures.push(format!("{url}: {}", r.status())),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    (latencies, failures)
}

/// Acceptance: a slow-loris client, 10,000 idle connections and a flood of oversized bodies
/// leave a node serving normal requests (p99 printed) with bounded memory (RSS printed).
#[test]
fn slow_loris_idle_connections_and_oversized_bodies_leave_a_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("data"), &["--node-id", "n1"]);
    let port = node.ports.client;
    let base = node.client_url("");
    let rss_before = rss_mb(&node);
    // A baseline of the normal client alone.
    let stop = AtomicBool::new(false);
    let (baseline, _) = std::thread::scope(|s| {
        let h = s.spawn(|| normal_client(&base, &stop));
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    let stop = AtomicBool::new(false);
    let attack = AtomicBool::new(true);
    let (idle_open, loris_sent, big_refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let peak_rss = AtomicU64::new(0);
    let ((mut during, failures), held_at_end) = std::thread::scope(|s| {
        // 10,000 idle connections, opened as fast as the node accepts them, held.
        let idle = s.spawn(|| {
            let mut held = Vec::new();
            for _ in 0..10_000 {
                if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                    held.push(stream);
                    idle_open.fetch_add(1, Ordering::Relaxed);
                }
            }
            while attack.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            // How many the node still holds: a closed one reads end-of-file.
            held.iter_mut()
                .filter_map(|s| {
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 1];
                    matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock).then_some(())
                })
                .count()
        });
        // Slow loris: 200 connections, each sending its request head one byte a second.
        for _ in 0..4 {
            s.spawn(|| {
                let mut streams: Vec<TcpStream> =
                    (0..50).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
                let head = b"PUT /kv/loris HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                let mut sent = 0;
                while attack.load(Ordering::Relaxed) {
                    for stream in &mut streams {
                        let byte = head.get(sent).copied().unwrap_or(b'a');
                        if stream.write_all(&[byte]).is_ok() {
                            loris_sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
        // Oversized bodies: 4 clients sending 4 MB values (the limit is 1 MiB) as fast as the
        // node refuses them.
        for _ in 0..4 {
            s.spawn(|| {
                let c = kv_testkit::http_client(Duration::from_secs(10));
                let big = vec![b'x'; 4 << 20];
                while attack.load(Ordering::Relaxed) {
                    if let Ok(r) = c.put(format!("{}/kv/big", node.client_url(""))).body(big.clone()).send() {
                        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                            big_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            while attack.load(Ordering::Relaxed) {
                peak_rss.fetch_max(rss_mb(&node) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // Let the attack build up, then measure the normal client for 15 s under it.
        std::thread::sleep(Duration::from_secs(3));
        let normal = s.spawn(|| normal_client(&base, &stop));
        std::thread::sleep(Duration::from_secs(15));
        stop.store(true, Ordering::Relaxed);
        let result = normal.join().unwrap();
        let open = metric(&node, "kv_connections", "listener=\"client\"");
        attack.store(false, Ordering::Relaxed);
        (result, (idle.join().unwrap(), open))
    });
    let (held_at_end, open_at_end) = held_at_end;
    let mut baseline = baseline;
    baseline.sort();
    during.sort();
    let evicted = metric(&node, "kv_connections_closed_total", "reason=\"evicted\"");
    let refused = metric(&node, "kv_connections_closed_total", "reason=\"refused\"");
    let peak = peak_rss.load(Ordering::Relaxed);
    println!(
        "under attack (10,000 idle connections opened: {} accepted, {held_at_end} still held by the node at the end (its gauge: {open_at_end} open); \
         200 slow-loris connections, {} bytes trickled; {} oversized bodies refused 413): {} normal requests, all \
         answered; p50 {:.1} ms, p99 {:.1} ms (alone before: p50 {:.1} ms, p99 {:.1} ms, {} requests); node RSS {:.0} MB \
         before, {peak} MB at most during; connections evicted {evicted}, refused {refused}",
        idle_open.load(Ordering::Relaxed),
        loris_sent.load(Ordering::Relaxed),
        big_refused.load(Ordering::Relaxed),
        during.len(),
        percentile(&during, 0.5).as_secs_f64() * 1e3,
        percentile(&during, 0.99).as_secs_f64() * 1e3,
        percentile(&baseline, 0.5).as_secs_f64() * 1e3,
        percentile(&baseline, 0.99).as_secs_f64() * 1e3,
        baseline.len(),
        rss_before
    );
    assert!(
        failures.is_empty(),
        "{} normal requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(during.len() >= 50, "the normal client got few requests through: {}", during.len());
    assert!(open_at_end <= 4096.0, "the node held {open_at_end} connections, above its cap of 4096");
    assert!(big_refused.load(Ordering::Relaxed) > 0);
    assert!(peak < 1024, "resident memory grew to {peak} MB");
}

/// Limits answer with clear JSON errors: a write past `--max-siblings` (409), too many headers
/// (431), a value over the limit (413), a request beyond `--max-in-flight` (503 overloaded
/// with Retry-After, at once, while a slow upload holds the only slot).
#[test]
fn limits_refuse_with_clear_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        start_node(&dir.path().join("data"), &["--node-id", "n1", "--max-siblings", "3", "--max-buffered-mb", "16"]);
    let c = kv_testkit::http_client(Duration::from_secs(10));
    let url = node.key_url("k");
    let json = |r: reqwest::blocking::Response| -> (StatusCode, serde_json::Value) {
        (r.status(), r.json().unwrap_or_default())
    };
    for i in 0..3 {
        assert_eq!(c.put(&url).body(format!("v{i}")).send().unwrap().status(), StatusCode::NO_CONTENT);
    }
    let (status, body) = json(c.put(&url).body("v3").send().unwrap());
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("too_many_siblings")), "{body}");
    let read = c.get(&url).send().unwrap();
    assert_eq!(read.status(), StatusCode::MULTIPLE_CHOICES);
    let context = read.headers()["x-context"].to_str().unwrap().to_owned();
    assert_eq!(c.put(&url).header("x-context", context).body("one").send().unwrap().status(), StatusCode::NO_CONTENT);
    let mut request = c.get(&url);
    for i in 0..70 {
        request = request.header(format!("x-extra-{i}"), "v");
    }
    let (status, body) = json(request.send().unwrap());
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Some("headers_too_large"))
    );
    let (status, body) = json(c.put(&url).body(vec![0u8; 2 << 20]).send().unwrap());
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("value_too_large")), "{body}");
    let limit = "the body is larger than the limit of 1048576 bytes";
    assert_eq!(body["message"].as_str(), Some(limit), "the --max-value-bytes default, as configured");
    // A body declared over the limit is refused at once, before any of it is sent, with the
    // same limit in the same words.
    let mut declared = TcpStream::connect(("127.0.0.1", node.ports.client)).unwrap();
    declared.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let head = format!("PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", (1 << 20) + 1);
    declared.write_all(head.as_bytes()).unwrap();
    let asked = Instant::now();
    let mut answer = vec![0u8; 4096];
    let read = std::io::Read::read(&mut declared, &mut answer).expect("answered without the body being sent");
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains(limit), "{answer}");
    println!("413 for a declared length in {:.0} ms", asked.elapsed().as_secs_f64() * 1e3);
    // One byte over, streamed without a declared length: the same message.
    let chunked = c.put(&url).body(reqwest::blocking::Body::new(std::io::Cursor::new(vec![1u8; (1 << 20) + 1])));
    let (status, body) = json(chunked.send().unwrap());
    assert_eq!((status, body["message"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some(limit)), "{body}");
    // Uploads in progress hold the listener's 16 MiB budget of bodies in memory (sixteen of
    // them, 1 MiB each, not finished): the next body is shed at once.
    let slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", node.ports.client)).unwrap();
            let head = format!("PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 1 << 20);
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&vec![b'x'; (1 << 20) - 16]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let shed = c.put(node.key_url("another")).body(vec![b'y'; 64 << 10]).send().unwrap();
    let retry_after = shed.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = json(shed);
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(5), "shed at once, not queued");
    drop(slow);
    println!("refusals: 409 too_many_siblings, 431 headers_too_large, 413 value_too_large, 503 overloaded with Retry-After: 1 in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
}

/// Review finding: requests whose bodies stall hold no connection slot a real client needs: a
/// connection still sending its request counts as idle, so the cap closes it for a new one, and
/// a stalled body is refused after 5 s (408).
#[test]
fn stalled_request_bodies_do_not_lock_out_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("data"), &["--node-id", "n1", "--max-connections", "16"]);
    let port = node.ports.client;
    let mut stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"PUT /kv/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly some").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let c = kv_testkit::http_client(Duration::from_secs(10));
    let started = Instant::now();
    for i in 0..20 {
        let r = c.put(node.key_url(&format!("real-{i}"))).body("v").send().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "a real client got through the stalled connections");
    }
    let real_took = started.elapsed();
    // Every stalled connection ends: closed for a new one, or answered 408 after the stall.
    let answered = stalled.iter_mut().last().map(|s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "a stalled body got {text:?}");
        if n == 0 {
            "closed".to_owned()
        } else {
            "408".to_owned()
        }
    });
    let evicted = metric(&node, "kv_connections_closed_total", "reason=\"evicted\"");
    println!(
        "40 connections stalled mid-body (cap 16): 20 real writes answered in {:.0} ms; {evicted} connections \
         evicted; the last stalled one: {}",
        real_took.as_secs_f64() * 1e3,
        answered.unwrap_or_default()
    );
    assert!(evicted >= 24.0, "the stalled connections were closed for the new ones: {evicted}");
}

/// Reads from `stream` until it is closed by the node (end of file or reset), for at most
/// `within`; how long that took, or `None` if it stayed open.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// `--idle-timeout` (1 s here) closes a connection with no request, and one trickling a request
/// head it never finishes (slow loris), by one watchdog per connection; a connection that keeps
/// sending requests stays open however long it lives, and so does one whose request is in
/// progress.
#[test]
fn idle_and_slow_head_connections_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("data"), &["--node-id", "n1", "--idle-timeout", "1s"]);
    let port = node.ports.client;
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut loris = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut busy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        let loris = s.spawn(move || {
            // One byte every 200 ms, never a whole head.
            let head = b"GET /kv/loris HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            for i in 0.. {
                let byte = head.get(i).copied().unwrap_or(b'a');
                if loris.write_all(&[byte]).is_err() || started.elapsed() > Duration::from_secs(10) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            started.elapsed()
        });
        // A request every 300 ms for 4 s (four idle timeouts) on one keep-alive connection.
        let busy = s.spawn(move || {
            let request = b"GET /kv/busy HTTP/1.1\r\nHost: x\r\n\r\n";
            let mut answered = 0;
            busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            while started.elapsed() < Duration::from_secs(4) {
                busy.write_all(request).unwrap();
                let mut buf = [0u8; 4096];
                let n = busy.read(&mut buf).unwrap();
                assert!(n > 0, "the busy connection was closed after {answered} answers");
                assert!(buf.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&buf[..n]));
                answered += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            answered
        });
        let idle_closed = closed_within(&mut idle, Duration::from_secs(10)).expect("the idle connection stayed open");
        let loris_closed = loris.join().unwrap();
        let answered = busy.join().unwrap();
        println!(
            "idle timeout 1 s: an idle connection closed after {:.2} s, a slow-loris head after {:.2} s; a \
             connection with a request every 300 ms answered {answered} over 4 s and stayed open",
            idle_closed.as_secs_f64(),
            loris_closed.as_secs_f64()
        );
        assert!(idle_closed >= Duration::from_millis(900), "closed too early: {idle_closed:?}");
        assert!(idle_closed < Duration::from_secs(4), "closed too late: {idle_closed:?}");
        assert!(loris_closed < Duration::from_secs(5), "the slow loris was held {loris_closed:?}");
        assert!(answered >= 8, "only {answered} answers");
    });
}

/// A connection with no request begun (idle, or trickling a head it never finishes) does not
/// hold up a shutdown: SIGTERM closes it at once, and the node exits well within
/// `--shutdown-timeout` without cutting its workers short.
#[test]
fn a_slow_head_does_not_hold_up_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_node(&dir.path().join("data"), &["--node-id", "n1", "--shutdown-timeout", "20s"]);
    let port = node.ports.client;
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut loris = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stop = AtomicBool::new(false);
    let took = std::thread::scope(|s| {
        s.spawn(|| {
            let head = b"GET /kv/loris HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            for i in 0.. {
                let byte = head.get(i).copied().unwrap_or(b'a');
                if stop.load(Ordering::Relaxed) || loris.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        node.send_term();
        let status = node.wait_exit(Duration::from_secs(30));
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        assert!(status.success(), "{status:?}");
        took
    });
    let log = node.log_text();
    println!("SIGTERM with an idle connection and a slow-loris head open: exited 0 after {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert!(!log.contains("drain deadline passed") && !log.contains("aborted"), "{log}");
}

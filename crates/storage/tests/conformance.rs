//! The storage conformance suite: every engine must pass every case here.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use kv_storage::{open, Compression, Engine, EngineKind, Options, Record, StorageMetrics, SyncMode, Version};
use kv_vclock::{Dot, VClock, Versioned};

const ENGINES: [EngineKind; 3] = [EngineKind::Fjall, EngineKind::Sled, EngineKind::Memory];

fn options(kind: EngineKind) -> Options {
    Options { engine: kind, sync: SyncMode::Batch, compression: Compression::Lz4, cache_bytes: 8 << 20 }
}

fn open_engine(kind: EngineKind, dir: &Path) -> Arc<dyn Engine> {
    let options = options(kind);
    // sled releases its directory lock only when its background flusher, which outlives the
    // dropped handle by a moment, lets go: a reopen in the same process may have to wait.
    for _ in 0..100 {
        match open(dir, &options, StorageMetrics::unregistered()) {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            result => return result.unwrap(),
        }
    }
    panic!("{kind}: {} stayed locked", dir.display())
}

/// Runs `case` once per engine, each in a fresh directory.
fn each_engine(case: impl Fn(EngineKind, &Path, Arc<dyn Engine>)) {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_engine(kind, dir.path());
        case(kind, dir.path(), engine);
    }
}

/// A write coordinated by `node`: the new version's counter is above every counter of `node`
/// already stored, as a coordinator builds it.
fn coordinate(engine: &dyn Engine, key: &[u8], node: &str, context: &VClock, value: &[u8], tombstone: bool) -> Record {
    let context = context.clone();
    let value = value.to_vec();
    engine
        .update(key, &mut |current| {
            let counter = current.max_counter(node).max(context.get(node)) + 1;
            vec![Version {
                dot: Dot { node: node.into(), counter, timestamp: counter },
                context: context.clone(),
                value: value.clone().into(),
                content_type: "application/octet-stream".into(),
                tombstone,
                written_at: 1,
                write_id: 0,
            }]
        })
        .unwrap()
}

fn values(record: &Record) -> BTreeSet<Vec<u8>> {
    record.versions().iter().map(|v| v.value.to_vec()).collect()
}

#[test]
fn absent_key_is_empty() {
    each_engine(|kind, _, engine| {
        assert!(engine.get(b"nothing").unwrap().is_empty(), "{kind}");
    });
}

#[test]
fn round_trips_every_byte_value_and_content_type() {
    each_engine(|kind, _, engine| {
        let value: Vec<u8> = (0..=255u8).cycle().take(2048).collect();
        let key = "clé/ü/🔑".as_bytes();
        coordinate(&*engine, key, "n1", &VClock::new(), &value, false);
        let record = engine.get(key).unwrap();
        assert_eq!(record.len(), 1, "{kind}");
        assert_eq!(record.versions()[0].value, value, "{kind}");
        assert_eq!(record.versions()[0].content_type, "application/octet-stream");
    });
}

#[test]
fn blind_writes_become_siblings_and_a_context_resolves_them() {
    each_engine(|kind, _, engine| {
        coordinate(&*engine, b"k", "n1", &VClock::new(), b"one", false);
        let both = coordinate(&*engine, b"k", "n1", &VClock::new(), b"two", false);
        assert_eq!(values(&both), [b"one".to_vec(), b"two".to_vec()].into(), "{kind}");
        let resolved = coordinate(&*engine, b"k", "n2", &both.context(), b"three", false);
        assert_eq!(values(&resolved), [b"three".to_vec()].into(), "{kind}");
        assert_eq!(values(&engine.get(b"k").unwrap()), [b"three".to_vec()].into(), "{kind}");
    });
}

#[test]
fn put_versions_drops_only_obsolete_versions() {
    each_engine(|kind, _, engine| {
        let first = coordinate(&*engine, b"k", "n1", &VClock::new(), b"v1", false);
        let v1 = first.versions()[0].clone();
        // A replica copy of the same version changes nothing.
        let again = engine.put_versions(b"k", vec![v1.clone()]).unwrap();
        assert_eq!(again, first, "{kind}");
        // A version from another node that saw v1 replaces it.
        let v2 = Version {
            dot: Dot { node: "n2".into(), counter: 1, timestamp: 2 },
            context: v1.clock(),
            value: b"v2".to_vec().into(),
            ..v1.clone()
        };
        let merged = engine.put_versions(b"k", vec![v2.clone()]).unwrap();
        assert_eq!(merged.versions(), std::slice::from_ref(&v2), "{kind}");
        // v1 arriving late (read repair from a stale replica) must not come back.
        assert_eq!(engine.put_versions(b"k", vec![v1]).unwrap().versions(), std::slice::from_ref(&v2), "{kind}");
        // A concurrent version from a third node is kept beside v2.
        let v3 = Version {
            dot: Dot { node: "n3".into(), counter: 1, timestamp: 3 },
            context: VClock::new(),
            value: b"v3".to_vec().into(),
            ..v2
        };
        assert_eq!(engine.put_versions(b"k", vec![v3]).unwrap().len(), 2, "{kind}");
    });
}

#[test]
fn tombstones_are_versions() {
    each_engine(|kind, _, engine| {
        let live = coordinate(&*engine, b"k", "n1", &VClock::new(), b"v", false);
        let deleted = coordinate(&*engine, b"k", "n1", &live.context(), b"", true);
        assert_eq!(deleted.len(), 1, "{kind}");
        assert!(engine.get(b"k").unwrap().versions()[0].tombstone, "{kind}");
    });
}

#[test]
fn purge_removes_only_the_exact_tombstones() {
    each_engine(|kind, _, engine| {
        let live = coordinate(&*engine, b"k", "n1", &VClock::new(), b"v", false);
        assert!(
            !engine.purge_tombstones(b"k", &[live.versions()[0].dot.clone()]).unwrap(),
            "{kind}: purged a live value"
        );
        let dead = coordinate(&*engine, b"k", "n1", &live.context(), b"", true);
        let dots: Vec<Dot> = dead.versions().iter().map(|v| v.dot.clone()).collect();
        // A tombstone the caller did not see is not purged.
        assert!(!engine.purge_tombstones(b"k", &[Dot { node: "n9".into(), counter: 1, timestamp: 0 }]).unwrap());
        assert!(engine.purge_tombstones(b"k", &dots).unwrap(), "{kind}");
        assert!(engine.get(b"k").unwrap().is_empty(), "{kind}");
    });
}

#[test]
fn put_batch_merges_every_key() {
    each_engine(|kind, _, engine| {
        coordinate(&*engine, b"a", "n1", &VClock::new(), b"old", false);
        let theirs = |value: &str| Version {
            dot: Dot { node: "n2".into(), counter: 1, timestamp: 1 },
            context: VClock::new(),
            value: value.as_bytes().to_vec().into(),
            content_type: "text/plain".into(),
            tombstone: false,
            written_at: 1,
            write_id: 0,
        };
        engine.put_batch(vec![(b"a".to_vec(), vec![theirs("new")]), (b"b".to_vec(), vec![theirs("b")])]).unwrap();
        assert_eq!(values(&engine.get(b"a").unwrap()), [b"new".to_vec(), b"old".to_vec()].into(), "{kind}");
        assert_eq!(values(&engine.get(b"b").unwrap()), [b"b".to_vec()].into(), "{kind}");
    });
}

#[test]
fn update_many_builds_each_key_in_order_and_sees_earlier_writes() {
    each_engine(|kind, _, engine| {
        coordinate(&*engine, b"a", "n1", &VClock::new(), b"stored", false);
        // The same key twice: the second build sees the first one's version.
        let keys: [&[u8]; 3] = [b"a", b"b", b"a"];
        let mut seen = Vec::new();
        let results = engine.update_many(&keys, &mut |i, current| {
            seen.push((i, current.len()));
            let counter = current.max_counter("n1") + 1;
            let mut next = current.clone();
            next.insert(Version {
                dot: Dot { node: "n1".into(), counter, timestamp: counter },
                context: VClock::new(),
                value: format!("batch{i}").into_bytes().into(),
                content_type: "text/plain".into(),
                tombstone: false,
                written_at: 1,
                write_id: 0,
            });
            next
        });
        assert_eq!(seen, [(0, 1), (1, 0), (2, 2)], "{kind}");
        let records: Vec<Record> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(records[1].len(), 1, "{kind}");
        let expected: BTreeSet<Vec<u8>> = [b"stored".to_vec(), b"batch0".to_vec(), b"batch2".to_vec()].into();
        assert_eq!(values(&records[2]), expected, "{kind}");
        assert_eq!(values(&engine.get(b"a").unwrap()), expected, "{kind}");
        assert_eq!(values(&engine.get(b"b").unwrap()), [b"batch1".to_vec()].into(), "{kind}");
    });
}

#[test]
fn scan_returns_a_hash_range_in_order_and_pages() {
    each_engine(|kind, _, engine| {
        let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
        for key in &keys {
            coordinate(&*engine, key.as_bytes(), "n1", &VClock::new(), key.as_bytes(), false);
        }
        let (lo, hi) = (u64::MAX / 4, u64::MAX / 4 * 3);
        let mut expected: Vec<(u64, String)> = keys
            .iter()
            .map(|k| (kv_ring::hash_key(k.as_bytes()), k.clone()))
            .filter(|(h, _)| (lo..=hi).contains(h))
            .collect();
        expected.sort();
        let mut got = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = engine.scan(lo, hi, after.as_deref(), 7).unwrap();
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().0.clone());
            for (key, record) in page {
                assert_eq!(record.versions()[0].value, key, "{kind}");
                got.push(String::from_utf8(key).unwrap());
            }
        }
        assert_eq!(got, expected.into_iter().map(|(_, k)| k).collect::<Vec<_>>(), "{kind}");
        let everything = engine.scan(0, u64::MAX, None, 10_000).unwrap();
        assert_eq!(everything.len(), keys.len(), "{kind}");
    });
}

#[test]
fn concurrent_blind_writes_to_one_key_are_all_kept() {
    each_engine(|kind, _, engine| {
        std::thread::scope(|scope| {
            for t in 0..8 {
                let engine = engine.clone();
                scope.spawn(move || {
                    for i in 0..10 {
                        coordinate(&*engine, b"hot", "n1", &VClock::new(), format!("{t}-{i}").as_bytes(), false);
                    }
                });
            }
        });
        assert_eq!(engine.get(b"hot").unwrap().len(), 80, "{kind}: a concurrent write was lost");
    });
}

#[test]
fn disk_engines_keep_data_across_reopen() {
    for kind in [EngineKind::Fjall, EngineKind::Sled] {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open_engine(kind, dir.path());
            for i in 0..100 {
                coordinate(&*engine, format!("k{i}").as_bytes(), "n1", &VClock::new(), b"v", false);
            }
            engine.sync().unwrap();
        }
        let engine = open_engine(kind, dir.path());
        for i in 0..100 {
            assert_eq!(engine.get(format!("k{i}").as_bytes()).unwrap().len(), 1, "{kind} lost k{i}");
        }
    }
}

#[test]
fn every_sync_mode_acknowledges_writes() {
    for kind in ENGINES {
        for sync in [SyncMode::Always, SyncMode::Batch, SyncMode::None] {
            let dir = tempfile::tempdir().unwrap();
            let options = Options { engine: kind, sync, compression: Compression::None, cache_bytes: 8 << 20 };
            let engine = open(dir.path(), &options, StorageMetrics::unregistered()).unwrap();
            std::thread::scope(|scope| {
                for t in 0..4 {
                    let engine = engine.clone();
                    scope.spawn(move || {
                        for i in 0..25 {
                            coordinate(&*engine, format!("{t}/{i}").as_bytes(), "n1", &VClock::new(), b"v", false);
                        }
                    });
                }
            });
            assert_eq!(engine.scan(0, u64::MAX, None, 1000).unwrap().len(), 100, "{kind}/{sync}");
        }
    }
}

#[test]
fn identity_survives_reopen_on_disk_and_counters_only_rise() {
    for kind in [EngineKind::Fjall, EngineKind::Sled] {
        let dir = tempfile::tempdir().unwrap();
        let (incarnation, last, lease) = {
            let engine = open_engine(kind, dir.path());
            let identity = engine.identity();
            assert!(identity.fresh, "{kind}: a new store draws its incarnation");
            let mut last = 0;
            for _ in 0..10 {
                let c = engine.issue_counter(0).unwrap();
                assert!(c > last, "{kind}");
                assert!(engine.counter_lease() > c, "{kind}: a counter was issued beyond the recorded lease");
                last = c;
            }
            (identity.incarnation, last, engine.counter_lease())
        };
        let engine = open_engine(kind, dir.path());
        assert!(engine.counter_lease() > lease, "{kind}: every open records a new lease (a copy has an older one)");
        assert_eq!(engine.identity().incarnation, incarnation, "{kind}: same store, same actor");
        assert!(!engine.identity().fresh, "{kind}");
        assert!(engine.issue_counter(0).unwrap() > last, "{kind}: a counter was reissued after reopen");
    }
    // Memory keeps nothing: every open is a new actor.
    let dir = tempfile::tempdir().unwrap();
    let a = open_engine(EngineKind::Memory, dir.path()).identity();
    let b = open_engine(EngineKind::Memory, dir.path()).identity();
    assert!(a.fresh && b.fresh);
    assert_ne!(a.incarnation, b.incarnation);
}

#[test]
fn metadata_is_kept_apart_from_records_and_keys_can_be_removed() {
    each_engine(|kind, _, engine| {
        for i in 0..20 {
            coordinate(&*engine, format!("k{i}").as_bytes(), "n1", &VClock::new(), b"v", false);
        }
        engine.put_meta("drop", b"some bytes").unwrap();
        assert_eq!(engine.get_meta("drop").unwrap().as_deref(), Some(&b"some bytes"[..]), "{kind}");
        assert_eq!(engine.get_meta("other").unwrap(), None, "{kind}");
        let all = engine.scan(0, u64::MAX, None, 1000).unwrap();
        assert_eq!(all.len(), 20, "{kind}: scans return records only, never metadata");
        let gone: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i}").into_bytes()).chain([b"never".to_vec()]).collect();
        assert_eq!(engine.remove(&gone).unwrap(), 10, "{kind}");
        assert_eq!(engine.scan(0, u64::MAX, None, 1000).unwrap().len(), 10, "{kind}");
        assert!(engine.get(b"k3").unwrap().is_empty(), "{kind}");
        assert_eq!(engine.get(b"k13").unwrap().len(), 1, "{kind}");
        // A record stored after the metadata keys (they sort among hashes 0xff..): a page of
        // one record from just below them holds it. Short of it, every caller took the page for
        // the range's end and stopped (joins, fills and backups missed the arc's later records).
        let late =
            (0u32..).map(|i| format!("late-{i}")).find(|k| kv_ring::hash_key(k.as_bytes()) >= 0xfff0 << 48).unwrap();
        coordinate(&*engine, late.as_bytes(), "n1", &VClock::new(), b"v", false);
        let page = engine.scan(0xff00 << 48, u64::MAX, None, 1).unwrap();
        // An unbounded scan (anti-entropy reads a bucket whole) allocates for what it finds.
        assert_eq!(engine.scan(0, u64::MAX, None, usize::MAX).unwrap().len(), 11, "{kind}");
        assert_eq!(page.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [late.as_bytes()], "{kind}");
    });
}

fn hint(key: &str, value: &[u8], created_ms: u64) -> kv_storage::Hint {
    kv_storage::Hint {
        key: key.as_bytes().to_vec(),
        versions: vec![Version {
            dot: Dot { node: "n1".into(), counter: 1, timestamp: 1 },
            context: VClock::new(),
            value: value.to_vec().into(),
            content_type: "text/plain".into(),
            tombstone: false,
            written_at: created_ms,
            write_id: 1,
        }],
        created_ms,
    }
}

const HINT_LIMITS: kv_storage::HintLimits = kv_storage::HintLimits { max_bytes_per_target: 4096, max_age_ms: 60_000 };

#[test]
fn hints_are_kept_per_target_in_order_apart_from_records() {
    use kv_storage::Added;
    each_engine(|kind, _, engine| {
        coordinate(&*engine, b"record", "n1", &VClock::new(), b"r", false);
        let hints = engine.open_hints(HINT_LIMITS).unwrap();
        let added = hints.add("n2", &[hint("a", b"1", 10), hint("b", b"2", 20)]).unwrap();
        assert!(matches!(added[..], [Added::Stored(_), Added::Stored(_)]), "{kind}: {added:?}");
        hints.add("n3", &[hint("c", b"3", 30)]).unwrap();
        let page = hints.page("n2", None, 10).unwrap();
        let keys: Vec<&[u8]> = page.iter().map(|(_, h)| h.key.as_slice()).collect();
        assert_eq!(keys, [b"a".as_slice(), b"b"], "{kind}");
        assert_eq!(hints.page("n2", Some(page[0].0), 10).unwrap().len(), 1, "{kind}");
        let pending = hints.pending();
        assert_eq!((pending["n2"].count, pending["n2"].oldest_ms), (2, Some(10)), "{kind}");
        assert_eq!(pending["n3"].count, 1, "{kind}");
        // The records never see a hint, and the hints never see a record.
        let records = engine.scan(0, u64::MAX, None, 100).unwrap();
        assert_eq!(records.len(), 1, "{kind}");
        assert!(hints.page("record", None, 10).unwrap().is_empty());
        // Delivered hints go; the rest stay.
        hints.remove("n2", &[page[0].0]).unwrap();
        assert_eq!(hints.pending()["n2"].count, 1, "{kind}");
        assert_eq!(hints.drop_target("n3").unwrap(), 1, "{kind}");
        assert!(!hints.pending().contains_key("n3"), "{kind}");
    });
}

#[test]
fn hints_are_bounded_in_bytes_and_age() {
    use kv_storage::Added;
    each_engine(|kind, _, engine| {
        let hints = engine.open_hints(HINT_LIMITS).unwrap();
        let big = vec![b'x'; 1500];
        let added = hints.add("n2", &[hint("a", &big, 10), hint("b", &big, 10), hint("c", &big, 10)]).unwrap();
        assert!(matches!(added[..], [Added::Stored(_), Added::Stored(_), Added::Full]), "{kind}: {added:?}");
        assert!(hints.pending()["n2"].bytes <= HINT_LIMITS.max_bytes_per_target, "{kind}");
        // Another target has its own bound.
        assert!(matches!(hints.add("n3", &[hint("d", &big, 50_000)]).unwrap()[..], [Added::Stored(_)]));
        let dropped = hints.expire(65_000).unwrap();
        assert_eq!(dropped.get("n2").map(Vec::len), Some(2), "{kind}: {dropped:?}");
        assert_eq!(dropped["n2"], vec![b"a".to_vec(), b"b".to_vec()], "{kind}");
        assert_eq!(dropped.get("n3"), None, "{kind}");
        assert!(!hints.pending().contains_key("n2"), "{kind}");
        assert_eq!(hints.pending()["n3"].count, 1, "{kind}");
    });
}

#[test]
fn disk_engines_keep_hints_across_reopen_and_sequence_numbers_rise() {
    use kv_storage::Added;
    for kind in [EngineKind::Fjall, EngineKind::Sled] {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let engine = open_engine(kind, dir.path());
            let hints = engine.open_hints(HINT_LIMITS).unwrap();
            let added = hints.add("n2", &[hint("a", b"1", 10), hint("b", b"2", 20)]).unwrap();
            hints
                .remove(
                    "n2",
                    &[match added[0] {
                        Added::Stored(seq) => seq,
                        Added::Full => panic!("{kind}: full"),
                    }],
                )
                .unwrap();
            match added[1] {
                Added::Stored(seq) => seq,
                Added::Full => panic!("{kind}: full"),
            }
        };
        let engine = open_engine(kind, dir.path());
        let hints = engine.open_hints(HINT_LIMITS).unwrap();
        let page = hints.page("n2", None, 10).unwrap();
        assert_eq!(page.len(), 1, "{kind}");
        assert_eq!((page[0].0, page[0].1.key.as_slice()), (first, b"b".as_slice()), "{kind}");
        let next = hints.add("n2", &[hint("c", b"3", 30)]).unwrap();
        assert!(matches!(next[0], Added::Stored(seq) if seq > first), "{kind}: {next:?}");
        assert_eq!(engine.scan(0, u64::MAX, None, 100).unwrap().len(), 0, "{kind}: hints are not records");
    }
}

#[test]
fn fjall_reports_its_memtables_and_block_cache_on_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = StorageMetrics::unregistered();
    let engine = open(dir.path(), &options(EngineKind::Fjall), metrics.clone()).unwrap();
    engine.refresh_gauges();
    let empty = metrics.memtable_bytes.get();
    for i in 0..2_000u32 {
        coordinate(&*engine, format!("key{i}").as_bytes(), "a", &VClock::new(), &[7; 100], false);
    }
    engine.refresh_gauges();
    // 2,000 records of more than 100 bytes each are in the memtable, none flushed yet.
    assert!(metrics.memtable_bytes.get() >= empty + 200_000, "memtable {} bytes", metrics.memtable_bytes.get());
    assert_eq!(metrics.flushes_pending.get(), 0);
    assert!(metrics.block_cache_bytes.get() <= 8 << 20);
}

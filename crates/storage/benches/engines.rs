//! Storage benchmark: put and get throughput for every engine and sync mode, plus the effect of
//! compression and cache size. Prints Markdown tables for docs/benchmarks.md and docs/storage.md.
//!
//! `cargo bench -p kv-storage --bench engines` (or `make bench-storage`). `BENCH_SECS` sets the
//! time per cell (default 2). Numbers are from one run on whatever machine runs it: compare rows
//! of the same run, not runs of different days.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_storage::{open, Compression, Engine, EngineKind, Options, StorageMetrics, SyncMode, Version};
use kv_vclock::{Dot, VClock};

const VALUE_BYTES: usize = 100;
const PUT_THREADS: usize = 16;
const GET_THREADS: usize = 2;
const PRELOAD_KEYS: u64 = 100_000;

fn cell_duration() -> Duration {
    let secs = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn version(counter: u64, value: Vec<u8>) -> Version {
    Version {
        dot: Dot { node: "bench".into(), counter, timestamp: counter },
        context: VClock::new(),
        value: value.into(),
        content_type: "application/octet-stream".into(),
        tombstone: false,
        written_at: counter,
        write_id: 0,
    }
}

fn value(i: u64, bytes: usize, compressible: bool) -> Vec<u8> {
    if compressible {
        let text = format!("{{\"user\":{i},\"name\":\"user-{i}\",\"tags\":[\"a\",\"b\",\"c\"],\"active\":true}}");
        text.bytes().cycle().take(bytes).collect()
    } else {
        // xorshift noise: incompressible.
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("user:{i:010}").into_bytes()
}

/// Runs `threads` workers calling `op(worker, i)` until the cell's time is up; returns ops/s.
fn run(threads: usize, op: impl Fn(usize, u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (stop, done, op) = (&stop, &done, &op);
            scope.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(t, i);
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(cell_duration());
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn open_engine(
    engine: EngineKind,
    sync: SyncMode,
    compression: Compression,
    cache_bytes: u64,
) -> (tempfile::TempDir, Arc<dyn Engine>) {
    let (dir, store, _) = open_measured(engine, sync, compression, cache_bytes);
    (dir, store)
}

fn open_measured(
    engine: EngineKind,
    sync: SyncMode,
    compression: Compression,
    cache_bytes: u64,
) -> (tempfile::TempDir, Arc<dyn Engine>, StorageMetrics) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { engine, sync, compression, cache_bytes };
    let metrics = StorageMetrics::unregistered();
    let store = open(dir.path(), &options, metrics.clone()).unwrap();
    (dir, store, metrics)
}

/// Mean fsync time (µs) and writes per fsync since `before` = (count, sum, batch sum).
fn fsync_stats(m: &StorageMetrics, before: (u64, f64, f64)) -> String {
    let count = m.fsync_seconds.get_sample_count() - before.0;
    if count == 0 {
        return "-".to_owned();
    }
    let secs = m.fsync_seconds.get_sample_sum() - before.1;
    let writes = m.group_commit_writes.get_sample_sum() - before.2;
    format!("{:.0} µs, {:.1} writes", secs / count as f64 * 1e6, writes / count as f64)
}

fn snapshot(m: &StorageMetrics) -> (u64, f64, f64) {
    (m.fsync_seconds.get_sample_count(), m.fsync_seconds.get_sample_sum(), m.group_commit_writes.get_sample_sum())
}

fn puts(engine: &Arc<dyn Engine>, threads: usize, bytes: usize, compressible: bool) -> f64 {
    let counter = AtomicU64::new(1);
    run(threads, |t, i| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let k = key((t as u64) << 40 | i);
        engine.put_versions(&k, vec![version(n, value(n, bytes, compressible))]).unwrap();
    })
}

fn preload(engine: &Arc<dyn Engine>, keys: u64, bytes: usize, compressible: bool) {
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            scope.spawn(move || {
                let mut i = t;
                while i < keys {
                    engine.put_versions(&key(i), vec![version(i + 1, value(i, bytes, compressible))]).unwrap();
                    i += 4;
                }
            });
        }
    });
    engine.sync().unwrap();
}

fn gets(engine: &Arc<dyn Engine>, keys: u64) -> f64 {
    run(GET_THREADS, |t, i| {
        // Spread reads uniformly over the keyspace with a cheap hash of (t, i).
        let k = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t as u64) << 32) % keys;
        assert_eq!(engine.get(&key(k)).unwrap().len(), 1);
    })
}

fn main() {
    let engines = [EngineKind::Fjall, EngineKind::Sled, EngineKind::Memory];
    println!("Storage engines: {VALUE_BYTES}-byte values, {}s per cell", cell_duration().as_secs_f64());
    println!();
    println!(
        "| engine | sync | put ops/s, 1 writer | put ops/s, {PUT_THREADS} writers | per fsync, {PUT_THREADS} writers | get ops/s, {GET_THREADS} readers, {PRELOAD_KEYS} keys |"
    );
    println!("|---|---|---:|---:|---|---:|");
    for engine in engines {
        for sync in [SyncMode::Always, SyncMode::Batch, SyncMode::None] {
            if engine == EngineKind::Memory && sync != SyncMode::None {
                continue; // nothing to sync: identical to `none`
            }
            let (_dir, store, metrics) = open_measured(engine, sync, Compression::Lz4, 64 << 20);
            let one = puts(&store, 1, VALUE_BYTES, false);
            let before = snapshot(&metrics);
            let many = puts(&store, PUT_THREADS, VALUE_BYTES, false);
            let per_fsync = fsync_stats(&metrics, before);
            let get = if sync == SyncMode::None {
                let (_dir, fresh) = open_engine(engine, SyncMode::None, Compression::Lz4, 64 << 20);
                preload(&fresh, PRELOAD_KEYS, VALUE_BYTES, false);
                format!("{:.0}", gets(&fresh, PRELOAD_KEYS))
            } else {
                "(same as none)".to_owned()
            };
            println!("| {engine} | {sync} | {one:.0} | {many:.0} | {per_fsync} | {get} |");
        }
    }

    println!();
    println!("Compression (fjall, sync none, 100,000 keys of 1,000-byte JSON-like values):");
    println!();
    println!("| compression | disk bytes after load | put ops/s, {PUT_THREADS} writers | get ops/s |");
    println!("|---|---:|---:|---:|");
    for compression in [Compression::None, Compression::Lz4] {
        let (dir, store) = open_engine(EngineKind::Fjall, SyncMode::None, compression, 64 << 20);
        preload(&store, PRELOAD_KEYS, 1000, true);
        drop(store);
        let disk = dir_bytes(dir.path());
        let (_dir2, store) = open_engine(EngineKind::Fjall, SyncMode::None, compression, 64 << 20);
        let put = puts(&store, PUT_THREADS, 1000, true);
        let (_dir3, loaded) = open_engine(EngineKind::Fjall, SyncMode::None, compression, 64 << 20);
        preload(&loaded, PRELOAD_KEYS, 1000, true);
        let get = gets(&loaded, PRELOAD_KEYS);
        println!("| {compression} | {disk} | {put:.0} | {get:.0} |");
    }

    println!();
    println!("Cache size (fjall, 300,000 keys of 1,000-byte incompressible values, ~300 MB, uniform gets):");
    println!();
    println!("| cache | get ops/s |");
    println!("|---|---:|");
    for cache_mb in [1u64, 64, 512] {
        let (_dir, store) = open_engine(EngineKind::Fjall, SyncMode::None, Compression::None, cache_mb << 20);
        preload(&store, 300_000, 1000, false);
        println!("| {cache_mb} MiB | {:.0} |", gets(&store, 300_000));
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
        }
    }
    total
}

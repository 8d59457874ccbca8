//! [`Store`]: versioned records over any [`Backend`], with per-key locks and group commit.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use kv_vclock::Siblings;
use parking_lot::{Mutex, RwLock};

use crate::backend::Backend;
use crate::commit::GroupCommit;
use crate::identity::DotCounter;
use crate::metrics::StorageMetrics;
use crate::version::{decode, encode};
use crate::{
    meta_key, storage_hash, storage_key, storage_key_at, user_key, Compression, Engine, EngineKind, Identity, Record,
    Result, SyncMode, Version, META_KEYS_MAX, RESERVED_KEY_MAX,
};

/// Number of lock stripes. Two keys share a lock with probability 1/4096, which costs only a
/// little waiting; a lock per key would need a map that grows with the key set.
const LOCK_STRIPES: usize = 4096;

/// Versioned records over a backend. The one [`Engine`] implementation; backends differ only
/// in how bytes reach the disk.
pub struct Store {
    kind: EngineKind,
    backend: Box<dyn Backend>,
    locks: Vec<Mutex<()>>,
    commit: GroupCommit,
    compression: Compression,
    metrics: StorageMetrics,
    counter: DotCounter,
    /// Told of every change to a record, under the key's lock ([`Engine::observe`]).
    observer: std::sync::OnceLock<Arc<dyn crate::Observer>>,
    /// Held shared while a change is applied and reported, exclusively by
    /// [`Engine::while_paused`]: what a paused reader sees and what the observer was told agree.
    applying: RwLock<()>,
}

impl Store {
    /// Wraps `backend`, loading the store's identity (or drawing a new one for an empty store).
    pub fn open(
        kind: EngineKind,
        backend: Box<dyn Backend>,
        sync: SyncMode,
        compression: Compression,
        metrics: StorageMetrics,
    ) -> Result<Arc<Self>> {
        let counter = DotCounter::open(&*backend)?;
        Ok(Arc::new(Store {
            kind,
            backend,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            commit: GroupCommit::new(sync),
            compression,
            metrics,
            counter,
            observer: std::sync::OnceLock::new(),
            applying: RwLock::new(()),
        }))
    }

    /// Reports the identity as fresh (a preset memory store is as new as a random one).
    pub(crate) fn mark_fresh(&self) {
        self.counter.mark_fresh();
    }

    fn read(&self, skey: &[u8]) -> Result<Record> {
        match self.backend.get(skey)? {
            Some(bytes) => decode(&bytes),
            None => Ok(Siblings::new()),
        }
    }

    fn timed<T>(&self, op: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let result = f();
        self.metrics.operation_seconds.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.operations.with_label_values(&[op, outcome]).inc();
        result
    }
}

impl Store {
    /// Under the key's lock: read, merge what `build` returns, write if anything changed.
    /// Returns the merged versions and the ticket to wait on for durability.
    fn merge_one(&self, key: &[u8], build: &mut dyn FnMut(&Record) -> Vec<Version>) -> Result<(Record, u64)> {
        self.apply_one(kv_ring::hash_key(key), key, &mut |current| {
            let mut merged = current.clone();
            merged.merge(build(current));
            merged
        })
    }

    /// Under the key's lock: read, replace with what `apply` returns, write if it changed.
    fn apply_one(&self, hash: u64, key: &[u8], apply: &mut dyn FnMut(&Record) -> Record) -> Result<(Record, u64)> {
        let skey = storage_key_at(hash, key);
        let _guard = self.locks[hash as usize % LOCK_STRIPES].lock();
        let current = self.read(&skey)?;
        let merged = apply(&current);
        if merged == current {
            // Nothing new, but what we read may be another writer's not-yet-synced write: do
            // not answer before it is durable.
            Ok((merged, self.commit.latest()))
        } else {
            let _applying = self.applying.read();
            self.backend.put(&skey, &encode(&merged, self.compression))?;
            self.changed(key, hash, &current, &merged);
            Ok((merged, self.commit.written()))
        }
    }

    fn changed(&self, key: &[u8], hash: u64, old: &Record, new: &Record) {
        if let Some(observer) = self.observer.get() {
            observer.changed(key, hash, old, new);
        }
    }
}

impl Engine for Store {
    fn kind(&self) -> EngineKind {
        self.kind
    }

    fn get(&self, key: &[u8]) -> Result<Record> {
        self.get_at(kv_ring::hash_key(key), key)
    }

    fn get_at(&self, hash: u64, key: &[u8]) -> Result<Record> {
        self.timed("get", || self.read(&storage_key_at(hash, key)))
    }

    fn update(&self, key: &[u8], build: &mut dyn FnMut(&Record) -> Vec<Version>) -> Result<Record> {
        self.timed("put", || {
            self.commit.check()?;
            let (merged, ticket) = self.merge_one(key, build)?;
            self.commit.wait(ticket, &self.metrics, || self.backend.sync())?;
            Ok(merged)
        })
    }

    fn update_many(&self, keys: &[&[u8]], apply: &mut dyn FnMut(usize, &Record) -> Record) -> Vec<Result<Record>> {
        let keys: Vec<(u64, &[u8])> = keys.iter().map(|key| (kv_ring::hash_key(key), *key)).collect();
        self.update_many_at(&keys, apply)
    }

    fn update_many_at(
        &self,
        keys: &[(u64, &[u8])],
        apply: &mut dyn FnMut(usize, &Record) -> Record,
    ) -> Vec<Result<Record>> {
        let started = Instant::now();
        if let Err(e) = self.commit.check() {
            return keys.iter().map(|_| Err(e.clone())).collect();
        }
        let mut ticket = 0;
        let mut results: Vec<Result<Record>> = keys
            .iter()
            .enumerate()
            .map(|(i, (hash, key))| {
                let (merged, t) = self.apply_one(*hash, key, &mut |current| apply(i, current))?;
                ticket = ticket.max(t);
                Ok(merged)
            })
            .collect();
        if let Err(e) = self.commit.wait(ticket, &self.metrics, || self.backend.sync()) {
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(e.clone());
            }
        }
        // Per key, as `update` counts them: the batch's time is each write's latency.
        let seconds = started.elapsed().as_secs_f64();
        for result in &results {
            self.metrics.operation_seconds.with_label_values(&["put"]).observe(seconds);
            let outcome = if result.is_ok() { "ok" } else { "error" };
            self.metrics.operations.with_label_values(&["put", outcome]).inc();
        }
        results
    }

    fn put_batch(&self, entries: Vec<(Vec<u8>, Vec<Version>)>) -> Result<()> {
        self.timed("put_batch", || {
            self.commit.check()?;
            let mut ticket = 0;
            for (key, versions) in entries {
                let mut versions = Some(versions);
                let (_, t) = self.merge_one(&key, &mut |_| versions.take().unwrap_or_default())?;
                ticket = ticket.max(t);
            }
            self.commit.wait(ticket, &self.metrics, || self.backend.sync())
        })
    }

    fn scan(
        &self,
        first_hash: u64,
        last_hash: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>> {
        self.timed("scan", || {
            let lo = first_hash.to_be_bytes();
            let after_key = after.map(storage_key);
            let start = match &after_key {
                Some(k) if k.as_slice() >= lo.as_slice() => Bound::Excluded(k.as_slice()),
                _ => Bound::Included(lo.as_slice()),
            };
            let hi = last_hash.checked_add(1).map(u64::to_be_bytes);
            let end = match &hi {
                Some(h) => Bound::Excluded(h.as_slice()),
                None => Bound::Unbounded,
            };
            // A cursor past the range: nothing left (a backend's range with its start past its
            // end may panic).
            if let (Some(k), Some(h)) = (&after_key, &hi) {
                if k.as_slice() >= h.as_slice() {
                    return Ok(Vec::new());
                }
            }
            // Metadata keys share the keyspace (they sort among records whose hash begins with
            // 0xff): read past as many as there can be, so that `limit` records come back whenever
            // the range holds them. A page one short of `limit` reads as the range's end to every
            // caller (`paged`): a join, a fill or a backup would stop before the records after a
            // metadata key.
            let mut out = Vec::with_capacity(limit.min(1024));
            for (skey, bytes) in self.backend.scan(start, end, limit.saturating_add(META_KEYS_MAX))? {
                if skey.len() <= RESERVED_KEY_MAX {
                    continue; // metadata, not a record
                }
                if out.len() == limit {
                    break;
                }
                let key = user_key(&skey).ok_or_else(|| crate::Error::Corrupt("short storage key".into()))?;
                out.push((key.to_vec(), decode(&bytes)?));
            }
            Ok(out)
        })
    }

    fn purge_tombstones(&self, key: &[u8], dots: &[kv_vclock::Dot]) -> Result<bool> {
        self.timed("purge", || {
            self.commit.check()?;
            let skey = storage_key(key);
            let hash = storage_hash(&skey);
            let _guard = self.locks[hash as usize % LOCK_STRIPES].lock();
            let current = self.read(&skey)?;
            let exact = !current.is_empty()
                && current.len() == dots.len()
                && current.versions().iter().all(|v| v.tombstone && dots.contains(&v.dot));
            if exact {
                let _applying = self.applying.read();
                self.backend.delete(&skey)?;
                self.changed(key, hash, &current, &Siblings::new());
            }
            Ok(exact)
        })
    }

    fn remove(&self, keys: &[Vec<u8>]) -> Result<usize> {
        self.timed("remove", || {
            self.commit.check()?;
            let mut removed = 0;
            let mut ticket = 0;
            for key in keys {
                let skey = storage_key(key);
                let hash = storage_hash(&skey);
                let _guard = self.locks[hash as usize % LOCK_STRIPES].lock();
                if let Some(bytes) = self.backend.get(&skey)? {
                    // Decoded before the delete: a record that cannot be decoded stays, rather
                    // than vanish unreported to the observer.
                    let old = if self.observer.get().is_some() { Some(decode(&bytes)?) } else { None };
                    let _applying = self.applying.read();
                    self.backend.delete(&skey)?;
                    if let Some(old) = old {
                        self.changed(key, hash, &old, &Siblings::new());
                    }
                    removed += 1;
                    ticket = self.commit.written();
                }
            }
            self.commit.wait(ticket, &self.metrics, || self.backend.sync())?;
            Ok(removed)
        })
    }

    fn counter_ceiling(&self) -> u64 {
        self.counter.ceiling()
    }

    fn counter_lease(&self) -> u64 {
        self.counter.lease_end()
    }

    fn identity(&self) -> Identity {
        self.counter.identity()
    }

    fn issue_counter(&self, floor: u64) -> Result<u64> {
        self.counter.issue(floor, &*self.backend)
    }

    fn mark_clean(&self) -> Result<()> {
        self.commit.check()?;
        self.backend.sync()?;
        self.counter.mark_clean(&*self.backend)
    }

    fn begin_run(&self) -> Result<()> {
        self.counter.begin_run(&*self.backend)
    }

    fn observe_counter(&self, seen: u64) -> Result<bool> {
        self.counter.observe(seen, &*self.backend)
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.backend.get(&meta_key(name))
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.commit.check()?;
        self.backend.put(&meta_key(name), value)?;
        self.backend.sync()
    }

    fn sync(&self) -> Result<()> {
        self.backend.sync()
    }

    fn refresh_gauges(&self) {
        let gauge = |g: &prometheus::IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        let (keys, disk_bytes) = self.size();
        gauge(&self.metrics.disk_bytes, disk_bytes);
        gauge(&self.metrics.keys, keys);
        let memory = self.backend.memory();
        gauge(&self.metrics.memtable_bytes, memory.memtable_bytes);
        gauge(&self.metrics.block_cache_bytes, memory.block_cache_bytes);
        gauge(&self.metrics.flushes_pending, memory.flushes_pending);
    }

    fn size(&self) -> (u64, u64) {
        (self.backend.approximate_len(), self.backend.disk_bytes())
    }

    fn observe(&self, observer: Arc<dyn crate::Observer>) -> bool {
        self.observer.set(observer).is_ok()
    }

    fn while_paused(&self, f: &mut dyn FnMut()) {
        let _paused = self.applying.write();
        f();
    }

    fn read_durable(&self, f: &mut dyn FnMut()) -> Result<()> {
        // A change takes its ticket while it holds `applying`, after it is written and
        // reported: with no change in progress, every change `f` sees has a ticket at most
        // `latest`.
        let ticket = {
            let _paused = self.applying.write();
            f();
            self.commit.latest()
        };
        self.commit.wait(ticket, &self.metrics, || self.backend.sync())
    }

    fn open_hints(&self, limits: crate::HintLimits) -> Result<crate::HintStore> {
        crate::HintStore::open(self.backend.open_space(crate::hints::HINTS_SPACE)?, limits)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use kv_vclock::{Dot, VClock};
    use parking_lot::Mutex;

    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::{Backend, Pairs};

    /// A memory backend whose fsyncs, once `armed`, wait until the test lets them through.
    struct GatedSync {
        inner: MemoryBackend,
        armed: Arc<AtomicBool>,
        /// Told when an fsync starts; the fsync then waits for one message on `release`.
        started: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Backend for GatedSync {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
            self.inner.put(key, value)
        }
        fn delete(&self, key: &[u8]) -> Result<()> {
            self.inner.delete(key)
        }
        fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Pairs> {
            self.inner.scan(start, end, limit)
        }
        fn sync(&self) -> Result<()> {
            if !self.armed.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.started.lock().send(()).unwrap();
            self.release.lock().recv().unwrap();
            Ok(())
        }
        fn disk_bytes(&self) -> u64 {
            0
        }
        fn approximate_len(&self) -> u64 {
            self.inner.approximate_len()
        }
        fn open_space(&self, name: &str) -> Result<Box<dyn Backend>> {
            self.inner.open_space(name)
        }
    }

    fn version(value: &[u8]) -> Version {
        Version {
            dot: Dot { node: "n1".into(), counter: 1, timestamp: 1 },
            context: VClock::default(),
            value: value.to_vec().into(),
            content_type: "application/octet-stream".into(),
            tombstone: false,
            written_at: 1,
            write_id: 0,
        }
    }

    /// Rule 7 of docs/consistency.md: a Merkle answer (what `read_durable` reads) vouches only
    /// for writes already durable, because an old owner drops its copy of what compared equal.
    /// A write applied but not yet synced is visible to the read, so the read must not return
    /// before that write's fsync has ended.
    #[test]
    fn read_durable_returns_only_once_what_it_read_is_durable() {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let armed = Arc::new(AtomicBool::new(false));
        let backend = GatedSync {
            inner: MemoryBackend::default(),
            armed: armed.clone(),
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
        };
        let store = Store::open(
            EngineKind::Memory,
            Box::new(backend),
            SyncMode::Batch,
            Compression::None,
            StorageMetrics::unregistered(),
        )
        .unwrap();
        armed.store(true, Ordering::SeqCst);
        // A writer applies its version, then waits in its fsync.
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.update(b"k", &mut |_| vec![version(b"v")]).unwrap())
        };
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        // The read sees the version, and waits for it to be durable.
        let (seen, returned) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let reader = {
            let (store, seen, returned) = (store.clone(), seen.clone(), returned.clone());
            std::thread::spawn(move || {
                store
                    .read_durable(&mut || {
                        let record = store.backend.get(&storage_key(b"k")).unwrap();
                        seen.store(record.is_some(), Ordering::SeqCst);
                    })
                    .unwrap();
                returned.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(seen.load(Ordering::SeqCst), "the read saw the applied, not yet durable write");
        assert!(!returned.load(Ordering::SeqCst), "read_durable returned before the write's fsync ended");
        // The fsync ends: both return (a second release in case the read syncs once more).
        release.send(()).unwrap();
        release.send(()).unwrap();
        writer.join().unwrap();
        reader.join().unwrap();
        assert!(returned.load(Ordering::SeqCst));
    }
}

//! The default backend: fjall, an LSM tree.
//!
//! This is the seed's write and read path: a write appends to the journal (commit log) and
//! lands in the memtable; full memtables are flushed to sorted table files; reads check the
//! memtable, then tables newest first, skipping tables whose bloom filter rules the key out.
//! Durability: fjall fsyncs its journal only when asked. `persist(PersistMode::SyncAll)` does
//! it while holding the journal's writer lock, so every insert waits for the fsync and group
//! commit can hardly batch (measured here: 16 writers, 19,700 puts/s). [`Backend::sync`]
//! instead hands buffered journal bytes to the OS with `persist(PersistMode::Buffer)` and then
//! fsyncs the active journal file through its own handle, outside fjall's lock, so writers keep
//! appending while one fsync covers them. This is sound because fjall fsyncs a journal and its
//! directory itself when it rotates to a new one, so only the newest `<id>.jnl` can hold
//! unsynced bytes. A memtable flush briefly stalls inserts (about 110 ms once per million
//! inserts measured here): it shows in tail latency, not in throughput.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Backend, Pairs};
use crate::{Error, Result};

/// Keyspace holding the versioned records.
const RECORDS: &str = "records";

/// The size at which a keyspace's memtable is sealed and flushed to a table file (fjall's
/// default is 64 MiB). While keys stream in at full speed (a load, a join's pull), a sealed
/// memtable waits for its flush beside the next active one, and both count in the process's
/// memory: with 64 MiB, one node loading 10,000,000 keys of 100 bytes peaked at 360 MB
/// resident, 316 MB with 48 MiB (the performance issue asks for under 350 MB; later loads
/// peaked at 303 to 352 MB, and the storage gauges then saw one memtable at a time, so most of
/// what varies is memory the allocator keeps, not memtables). 32 MiB peaked
/// at 289 MB, but three nodes wrote a median 0.78x with it in alternating rows, unexplained
/// (docs/benchmarks.md). fjall records the size when it creates a keyspace: a data directory
/// created by an earlier release keeps the size it was created with.
const MEMTABLE_BYTES: u64 = 48 << 20;

fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// A fjall database and one of its keyspaces (the records, or another from
/// [`Backend::open_space`]).
pub struct FjallBackend {
    db: Database,
    records: Keyspace,
    dir: PathBuf,
    /// The newest journal file we know of, opened for fsync; shared by every keyspace of the
    /// database (they share the journal).
    journal: Arc<Mutex<Option<(u64, File)>>>,
}

impl FjallBackend {
    /// Opens or creates the database under `path` with a block cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let open_err =
            |e: fjall::Error| Error::Open { engine: "fjall", path: path.display().to_string(), reason: e.to_string() };
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            // Group commit decides when to fsync; fjall only needs to hand writes to the OS.
            .manual_journal_persist(false)
            .open()
            .map_err(open_err)?;
        let records = db.keyspace(RECORDS, keyspace_options).map_err(open_err)?;
        Ok(FjallBackend { db, records, dir: path.to_owned(), journal: Arc::new(Mutex::new(None)) })
    }

    /// fsyncs the active journal file, following rotations.
    fn sync_journal(&self) -> std::io::Result<()> {
        let mut journal = self.journal.lock();
        let mut id = match journal.as_ref() {
            Some((id, _)) => *id,
            None => newest_journal(&self.dir)?,
        };
        // A rotation creates `<id + 1>.jnl`; the files before it were fsynced by fjall.
        while self.dir.join(format!("{}.jnl", id + 1)).exists() {
            id += 1;
        }
        if journal.as_ref().map(|(known, _)| *known) != Some(id) {
            *journal = Some((id, File::open(self.dir.join(format!("{id}.jnl")))?));
        }
        match journal.as_ref() {
            Some((_, file)) => file.sync_data(),
            None => Ok(()),
        }
    }
}

/// The highest journal id in `dir`.
fn newest_journal(dir: &Path) -> std::io::Result<u64> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".jnl")).and_then(|n| n.parse::<u64>().ok()) {
            newest = newest.max(Some(id));
        }
    }
    newest.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no journal file in the fjall directory"))
}

fn io(e: fjall::Error) -> Error {
    Error::Io(e.to_string())
}

impl Backend for FjallBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.records.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.records.insert(key, value).map_err(io)
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.records.remove(key).map_err(io)
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Pairs> {
        let mut out = Vec::new();
        for guard in self.records.range::<&[u8], _>((start, end)).take(limit) {
            let (k, v) = guard.into_inner().map_err(io)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        self.db.persist(PersistMode::Buffer).map_err(io)?;
        self.sync_journal().map_err(|e| Error::Io(format!("fsync fjall journal: {e}")))
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn approximate_len(&self) -> u64 {
        self.records.approximate_len() as u64
    }

    // fjall marks these accessors experimental (hidden from its docs); they are what it
    // counts for its own write stalls and cache eviction.
    fn memory(&self) -> super::EngineMemory {
        super::EngineMemory {
            memtable_bytes: self.db.write_buffer_size(),
            block_cache_bytes: self.db.cache_size(),
            flushes_pending: self.db.outstanding_flushes() as u64,
        }
    }

    fn open_space(&self, name: &str) -> Result<Box<dyn Backend>> {
        let keyspace = self.db.keyspace(name, keyspace_options).map_err(io)?;
        Ok(Box::new(FjallBackend {
            db: self.db.clone(),
            records: keyspace,
            dir: self.dir.clone(),
            journal: self.journal.clone(),
        }))
    }
}

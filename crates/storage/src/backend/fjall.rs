//! The default backend: fjall, an LSM tree.
//!
//! This is the seed's write and read path: a write appends to the journal (commit log) and
//! lands in the memtable; full memtables are flushed to sorted table files; reads check the
//! memtable, then tables newest first, skipping tables whose bloom filter rules the key out.
//! Durability: fjall only fsyncs its journal on `persist(PersistMode::SyncAll)`, which
//! [`Backend::sync`] calls. A memtable flush briefly stalls inserts (about 110 ms once per
//! million inserts measured here): it shows in tail latency, not in throughput.

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Backend, Pairs};
use crate::{Error, Result};

/// Keyspace holding the versioned records.
const RECORDS: &str = "records";

/// A fjall database with one keyspace for records.
pub struct FjallBackend {
    db: Database,
    records: Keyspace,
}

impl FjallBackend {
    /// Opens or creates the database under `path` with a block cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let open_err = |e: fjall::Error| Error::Open {
            engine: "fjall",
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            // Group commit decides when to fsync; fjall only needs to hand writes to the OS.
            .manual_journal_persist(false)
            .open()
            .map_err(open_err)?;
        let records = db.keyspace(RECORDS, KeyspaceCreateOptions::default).map_err(open_err)?;
        Ok(FjallBackend { db, records })
    }
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
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn approximate_len(&self) -> u64 {
        self.records.approximate_len() as u64
    }
}

//! The sled backend (sled 0.34.7, the last stable release).
//!
//! Caveats, stated plainly:
//! - sled's own `flush()` writes its buffers with `sync_file_range`, which does not persist file
//!   metadata and is not a durability barrier on every file system. [`Backend::sync`] therefore
//!   calls `flush()` and then `fsync`s sled's data file itself.
//! - sled 0.34 has open reports of corruption and failed recovery after unclean stops (power loss,
//!   `kill -9` during heavy writes), and its on-disk format is unstable between releases. Use it
//!   where a replica can be rebuilt from the others; prefer `fjall` for anything else.
//! - sled keeps a large page cache and background flusher of its own; its memory use is higher.

use std::fs::File;
use std::ops::Bound;
use std::path::Path;

use super::{Backend, Pairs};
use crate::{Error, Result};

/// Tree holding the versioned records.
const RECORDS: &str = "records";

/// A sled database with one tree for records.
pub struct SledBackend {
    db: sled::Db,
    records: sled::Tree,
    /// sled's data file, kept open so that `sync` can fsync it.
    data_file: File,
}

impl SledBackend {
    /// Opens or creates the database under `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let open_err = |reason: String| Error::Open { engine: "sled", path: path.display().to_string(), reason };
        let db =
            sled::Config::new().path(path).cache_capacity(cache_bytes).open().map_err(|e| open_err(e.to_string()))?;
        let records = db.open_tree(RECORDS).map_err(|e| open_err(e.to_string()))?;
        let data_file = File::open(path.join("db")).map_err(|e| open_err(format!("data file: {e}")))?;
        Ok(SledBackend { db, records, data_file })
    }
}

fn io(e: sled::Error) -> Error {
    Error::Io(e.to_string())
}

fn bound(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.records.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.records.insert(key, value).map(drop).map_err(io)
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.records.remove(key).map(drop).map_err(io)
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Pairs> {
        let mut out = Vec::new();
        for item in self.records.range((bound(start), bound(end))).take(limit) {
            let (k, v) = item.map_err(io)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(io)?;
        self.data_file.sync_all().map_err(|e| Error::Io(format!("fsync sled data file: {e}")))
    }

    fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn approximate_len(&self) -> u64 {
        self.records.len() as u64
    }

    fn open_space(&self, name: &str) -> Result<Box<dyn Backend>> {
        let tree = self.db.open_tree(name).map_err(io)?;
        let data_file = self.data_file.try_clone().map_err(|e| Error::Io(format!("sled data file: {e}")))?;
        Ok(Box::new(SledBackend { db: self.db.clone(), records: tree, data_file }))
    }
}

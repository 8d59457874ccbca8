//! An in-memory backend for tests: a `BTreeMap` behind a lock. Nothing survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{Backend, Pairs};
use crate::Result;

/// One in-memory keyspace.
type Map = Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// In-memory ordered map. `sync` is a no-op: there is nothing to make durable.
#[derive(Default)]
pub struct MemoryBackend {
    map: Map,
    /// Every keyspace of this "database" by name, shared by all of its backends.
    spaces: Arc<Mutex<HashMap<String, Map>>>,
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.map.write().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.map.write().remove(key);
        Ok(())
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Pairs> {
        let map = self.map.read();
        Ok(map.range::<[u8], _>((start, end)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn approximate_len(&self) -> u64 {
        self.map.read().len() as u64
    }

    fn open_space(&self, name: &str) -> Result<Box<dyn Backend>> {
        let map = self.spaces.lock().entry(name.to_owned()).or_default().clone();
        Ok(Box::new(MemoryBackend { map, spaces: self.spaces.clone() }))
    }
}

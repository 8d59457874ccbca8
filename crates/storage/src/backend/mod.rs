//! The raw ordered byte stores under [`crate::Store`]: fjall, sled and an in-memory map.
//!
//! A backend knows nothing of versions: it maps byte keys to byte values in key order, and can
//! make everything written so far durable ([`Backend::sync`]). Locking, merging, group commit
//! and encoding live once, in [`crate::Store`], so every backend gets the same semantics.

use std::ops::Bound;

use crate::Result;

pub mod fjall;
pub mod memory;
pub mod sled;

/// Key/value pairs returned by a scan.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What [`Backend::memory`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMemory {
    /// Bytes in memtables, active and sealed.
    pub memtable_bytes: u64,
    /// Bytes in the block cache.
    pub block_cache_bytes: u64,
    /// Sealed memtables waiting for their flush.
    pub flushes_pending: u64,
}

/// An ordered, persistent byte map.
pub trait Backend: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Stores `value` under `key`; visible to readers at once, durable after [`Backend::sync`].
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes `key`.
    fn delete(&self, key: &[u8]) -> Result<()>;
    /// Up to `limit` pairs with keys in `(start, end)`, in key order.
    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Pairs>;
    /// Makes every completed `put`/`delete` durable: returns only after an fsync of the log.
    fn sync(&self) -> Result<()>;
    /// Bytes on disk (0 for memory).
    fn disk_bytes(&self) -> u64;
    /// Approximate number of keys.
    fn approximate_len(&self) -> u64;
    /// Where the engine's own memory goes: bytes in memtables, bytes in the block cache, and
    /// sealed memtables waiting for a flush. Zeros for an engine that does not say.
    fn memory(&self) -> EngineMemory {
        EngineMemory::default()
    }
    /// Another keyspace of the same database, named `name` (created if new): its keys never
    /// mix with this one's (a scan of one never sees the other's), and [`Backend::sync`] on
    /// either makes both durable (one journal). The same name gives the same keyspace.
    fn open_space(&self, name: &str) -> Result<Box<dyn Backend>>;
}

//! # Storage: a key's sibling versions, durably
//!
//! A replica stores, per key, the set of live versions ([`Record`], a
//! [`kv_vclock::Siblings`] of [`Version`]s): value bytes, content type, causal identity (dot and
//! context), a tombstone flag and the write time. The one way to change a key is
//! [`Engine::update`] (or its shorthand [`Engine::put_versions`]): under the key's lock it reads
//! the stored versions, merges the new ones in, drops only versions that another version has
//! seen, and writes the result back. A concurrent version is never lost.
//!
//! ## Layout on disk
//!
//! Records live under `hash(key) ++ key`, with the hash big-endian, using the ring's hash
//! ([`kv_ring::hash_key`]). Keys are therefore ordered by ring position, and the keys of a ring
//! range are one contiguous scan ([`Engine::scan`]) for Merkle trees and rebalancing. The value
//! is a format byte and the postcard encoding of the versions, each value optionally LZ4
//! compressed ([`Compression`]).
//!
//! ## Durability
//!
//! [`SyncMode`] decides when a write is acknowledged: `always` fsyncs for every write, `batch`
//! (default) shares fsyncs between concurrent writers by eager group commit (see [`commit`]),
//! and `none` never waits for the disk (for benchmarks: a crash loses recent acknowledged
//! writes). After a failed fsync the store refuses writes until restarted.
//!
//! ## Identity
//!
//! Every store has an [`Identity`]: a random incarnation drawn when it is first opened and kept
//! inside it, and a dot counter that only rises, across all keys and restarts
//! ([`Engine::issue_counter`]). The node names its vector-clock actor after them, so a wiped
//! disk is a new actor and no dot is ever issued twice; see [`identity`] and
//! docs/consistency.md. Small named metadata (the identity, the ranges a node is dropping) lives
//! under reserved keys beside the records ([`Engine::put_meta`]), so it is lost exactly when the
//! records are.
//!
//! ## Engines
//!
//! All engines share [`Store`] and differ only in their [`backend::Backend`]: `fjall` (an LSM
//! tree: commit log, memtable, sorted files with bloom filters; default), `sled` (see its
//! caveats in [`backend::sled`]) and `memory` (tests). One conformance suite
//! (`tests/conformance.rs`) runs against each.
//!
//! # Layout
//! - [`backend`] — the raw byte stores.
//! - [`commit`] — group commit.
//! - [`hints`] — [`HintStore`]: durable, bounded hints for hinted handoff.
//! - [`identity`] — [`Identity`] and the leased dot counter.
//! - [`store`] — [`Store`], the [`Engine`] implementation.
//! - [`version`] — [`Version`] and the record encoding.
//! - [`metrics`] — [`StorageMetrics`].
//! - [`error`] — [`Error`].

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub mod backend;
pub mod commit;
pub mod error;
pub mod format;
pub mod hints;
pub mod identity;
pub mod metrics;
pub mod store;
pub mod version;

pub use error::{Error, Result};
pub use hints::{Added, Hint, HintLimits, HintStore, Pending};
pub use identity::Identity;
pub use metrics::StorageMetrics;
pub use store::Store;
pub use version::{Record, Version};

/// A store of versioned records. Implemented by [`Store`] for every backend.
pub trait Engine: Send + Sync {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// The live versions of `key`; empty when never written (tombstones are versions too).
    fn get(&self, key: &[u8]) -> Result<Record>;

    /// [`Engine::get`] of a key whose ring hash ([`kv_ring::hash_key`]) the caller carries: a
    /// store places records by it, and does not hash the key again.
    fn get_at(&self, hash: u64, key: &[u8]) -> Result<Record> {
        let _ = hash;
        self.get(key)
    }

    /// Atomically: read `key`'s versions, call `build` with them, merge what it returns, store
    /// the result, and return it once durable under the store's [`SyncMode`].
    fn update(&self, key: &[u8], build: &mut dyn FnMut(&Record) -> Vec<Version>) -> Result<Record>;

    /// Many keys, one durability wait: `apply` is called under each key's lock with the key's
    /// index in `keys` and its stored versions and returns the key's new versions, which replace
    /// the stored ones (when they differ); the records come back in the same order once all of
    /// them are durable. Unlike [`Engine::update`], `apply` decides what is dropped: callers
    /// merge (and so drop only what another version has seen), except for the one sanctioned
    /// removal, a second version of one client write (see `kv_replica::replica`).
    /// Concurrent writers coalesce this way into one fsync and one blocking hand-off.
    fn update_many(&self, keys: &[&[u8]], apply: &mut dyn FnMut(usize, &Record) -> Record) -> Vec<Result<Record>>;

    /// [`Engine::update_many`] of keys whose ring hashes the caller carries (not hashed again).
    fn update_many_at(
        &self,
        keys: &[(u64, &[u8])],
        apply: &mut dyn FnMut(usize, &Record) -> Record,
    ) -> Vec<Result<Record>> {
        let keys: Vec<&[u8]> = keys.iter().map(|(_, key)| *key).collect();
        self.update_many(&keys, apply)
    }

    /// The counter [`Engine::issue_counter`] would issue next without a floor: every counter
    /// this store has issued is below it.
    fn counter_ceiling(&self) -> u64;

    /// The store's recorded counter lease: every counter it has issued, or will issue before it
    /// records another lease, is below it; it only grows. A copy of the store taken earlier has
    /// a smaller one, which is how peers tell a restored copy from the store itself.
    fn counter_lease(&self) -> u64;

    /// Merges `incoming` into `key`'s versions (dropping only obsolete ones) and returns the
    /// merged set once durable.
    fn put_versions(&self, key: &[u8], incoming: Vec<Version>) -> Result<Record> {
        let mut incoming = Some(incoming);
        self.update(key, &mut |_| incoming.take().unwrap_or_default())
    }

    /// Merges many keys' versions (a range being streamed in) and returns once all of them are
    /// durable: one durability wait for the whole batch instead of one per key.
    fn put_batch(&self, entries: Vec<(Vec<u8>, Vec<Version>)>) -> Result<()>;

    /// Up to `limit` records whose key hash is in `first_hash..=last_hash`, in hash order,
    /// starting after key `after` (a cursor: the last key of the previous page).
    fn scan(
        &self,
        first_hash: u64,
        last_hash: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>>;

    /// Removes `key` if its versions are exactly the tombstones `dots` (in any order), checked
    /// under the key's lock so that a write that arrived meanwhile is never dropped. Returns
    /// whether the key was removed.
    fn purge_tombstones(&self, key: &[u8], dots: &[kv_vclock::Dot]) -> Result<bool>;

    /// Removes `keys` (a range this node no longer owns, once its new owners hold it) and
    /// returns once the removal is durable. Returns how many existed.
    fn remove(&self, keys: &[Vec<u8>]) -> Result<usize>;

    /// This store's identity as a writer of vector-clock events.
    fn identity(&self) -> Identity;

    /// A dot counter above `floor` and above every counter this store issued before, for any
    /// key, before or after a restart (see [`identity`]).
    fn issue_counter(&self, floor: u64) -> Result<u64>;

    /// Records that this run ended with every dot it issued accounted for (its versions stored
    /// here, or superseded): the next open keeps the actor's epoch. Without it, the next open
    /// starts a new epoch ([`Identity::epoch`]), a new actor. Call last, after the final writes.
    fn mark_clean(&self) -> Result<()>;

    /// Starts a new run of this store in place, as a reopen would: a new epoch unless the last
    /// run was marked clean, and a new lease (the deterministic simulation's restart).
    fn begin_run(&self) -> Result<()>;

    /// Makes every future [`Engine::issue_counter`] exceed `seen`, a counter of this store's
    /// actor found in a version from elsewhere. Returns whether that moved the counter (the
    /// store had issued it and forgot: it was restored from an old copy).
    fn observe_counter(&self, seen: u64) -> Result<bool>;

    /// Small named metadata stored beside the records; `name` is 1 to 7 bytes.
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Stores metadata durably (returns after an fsync).
    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()>;

    /// Makes all completed writes durable (shutdown, tests).
    fn sync(&self) -> Result<()>;

    /// Refreshes size gauges (disk bytes, key count) in the metrics.
    fn refresh_gauges(&self);

    /// The store's size now: `(keys, disk bytes)`, the key count an estimate (live and deleted
    /// keys).
    fn size(&self) -> (u64, u64);

    /// Registers the store's one observer, told of every change to a record from now on
    /// (merges, purges, removals), under the key's lock, after the change is written and before
    /// it is durable. Returns `false` if one is registered already. Anti-entropy keeps its
    /// Merkle trees this way, incrementally, whoever made the change (clients, repair, streams).
    fn observe(&self, observer: Arc<dyn Observer>) -> bool;

    /// Runs `f` while no change is applied (writers wait), so that `f` can read a range with
    /// [`Engine::scan`] and summarise it consistently with what the observer is told next: a
    /// change is either in what `f` reads or reported after `f` returns, never both. `f` must
    /// not write to the store (it would wait forever). Writers wait for as long as `f` runs.
    fn while_paused(&self, f: &mut dyn FnMut());

    /// Runs `f` as [`Engine::while_paused`] does, then returns once every change `f` could
    /// have seen is durable (under the store's [`SyncMode`]; at once if it already is). For
    /// answers a peer acts on as if they were durable: a Merkle tree an old owner compares with
    /// its own before it removes its copy instead of handing it over.
    fn read_durable(&self, f: &mut dyn FnMut()) -> Result<()>;

    /// The store's hints, kept in their own keyspace of the same database (see [`hints`]).
    /// Open it once per store.
    fn open_hints(&self, limits: HintLimits) -> Result<HintStore>;
}

/// Told of every change to a record ([`Engine::observe`]).
pub trait Observer: Send + Sync {
    /// `key`, at ring position `hash`, changed from `old` to `new` (an empty record: the key
    /// is gone).
    fn changed(&self, key: &[u8], hash: u64, old: &Record, new: &Record);
}

/// Which backend stores the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// fjall LSM tree (default).
    Fjall,
    /// sled 0.34.7; see [`backend::sled`] for its caveats.
    Sled,
    /// In memory; nothing survives a restart.
    Memory,
}

/// When writes are acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync before acknowledging every write.
    Always,
    /// Eager group commit: acknowledged after an fsync that started after the write.
    Batch,
    /// Never wait for fsync. For benchmarks: a crash loses acknowledged writes.
    None,
}

/// How values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// As they are.
    None,
    /// LZ4 for values of 64 bytes or more, when it makes them smaller.
    Lz4,
}

macro_rules! named_enum {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+) => {
        impl $ty {
            /// All names accepted by `FromStr`.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
            /// The name used in flags and metrics.
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s { $($name => Ok($ty::$variant),)+
                    other => Err(format!("unknown {} {other:?}; expected one of {}", $what, Self::NAMES.join(", "))) }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

named_enum!(EngineKind, "engine", Fjall => "fjall", Sled => "sled", Memory => "memory");
named_enum!(SyncMode, "sync mode", Always => "always", Batch => "batch", None => "none");
named_enum!(Compression, "compression", None => "none", Lz4 => "lz4");

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Backend.
    pub engine: EngineKind,
    /// Durability mode.
    pub sync: SyncMode,
    /// Value compression.
    pub compression: Compression,
    /// Engine cache for hot data, in bytes (fjall block cache, sled page cache).
    pub cache_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: EngineKind::Fjall,
            sync: SyncMode::Batch,
            compression: Compression::Lz4,
            cache_bytes: 64 << 20,
        }
    }
}

/// Opens the engine under `dir` (created if missing; ignored for memory).
pub fn open(dir: &Path, options: &Options, metrics: StorageMetrics) -> Result<Arc<dyn Engine>> {
    let backend: Box<dyn backend::Backend> = match options.engine {
        EngineKind::Fjall => Box::new(backend::fjall::FjallBackend::open(dir, options.cache_bytes)?),
        EngineKind::Sled => Box::new(backend::sled::SledBackend::open(dir, options.cache_bytes)?),
        EngineKind::Memory => Box::<backend::memory::MemoryBackend>::default(),
    };
    Ok(Store::open(options.engine, backend, options.sync, options.compression, metrics)?)
}

/// A memory store whose incarnation is `incarnation` instead of a random one: the model checker
/// replays a history exactly from its seed. Reported as fresh, like any new memory store.
pub fn open_memory(incarnation: u64, sync: SyncMode, metrics: StorageMetrics) -> Result<Arc<dyn Engine>> {
    let backend = backend::memory::MemoryBackend::default();
    identity::DotCounter::preset(&backend, incarnation)?;
    let store = Store::open(EngineKind::Memory, Box::new(backend), sync, Compression::None, metrics)?;
    store.mark_fresh();
    Ok(store)
}

/// Storage keys of this length or shorter are reserved for metadata: a record's storage key is
/// an 8-byte hash followed by a key of at least one byte.
pub(crate) const RESERVED_KEY_MAX: usize = 8;

/// Most metadata keys a store holds (identity, lease, run, ownership, restore marker, ...):
/// a scan reads this many items past its limit, so that metadata never shortens a page.
pub(crate) const META_KEYS_MAX: usize = 32;

/// The storage key of metadata `name` (at most 7 bytes, so it is never a record's key).
pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![0xff];
    key.extend(name.as_bytes().iter().take(RESERVED_KEY_MAX - 1));
    key
}

/// Where `key` is stored: its ring hash, big-endian, then the key.
pub fn storage_key(key: &[u8]) -> Vec<u8> {
    storage_key_at(kv_ring::hash_key(key), key)
}

/// [`storage_key`] of a key whose ring hash is known.
pub fn storage_key_at(hash: u64, key: &[u8]) -> Vec<u8> {
    debug_assert_eq!(hash, kv_ring::hash_key(key), "a key carried with another key's hash");
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&hash.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The ring hash a storage key starts with (the key is hashed once per operation).
pub fn storage_hash(storage_key: &[u8]) -> u64 {
    storage_key.get(..8).and_then(|h| h.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// The user key inside a storage key; `None` when it is too short to hold the hash.
pub fn user_key(storage_key: &[u8]) -> Option<&[u8]> {
    storage_key.get(8..)
}

//! The local replica: this node's storage, serving replica calls and coordinating writes.
//!
//! A write is coordinated here as Dynamo's coordinator does it: under the key's lock, read the
//! stored versions, build the new version ([`kv_coordinator::wire::build_version`]) and store it
//! beside every version its context did not see. The whole resulting sibling set goes back to
//! the caller, which replicates it to the other replicas.

use std::sync::Arc;

use kv_coordinator::wire::build_version;
use kv_coordinator::{now_ms, Write};
use kv_storage::{Engine, Record, Version};
use kv_vclock::Dot;

use crate::error::ApiError;

/// This node's storage, as a replica and a coordinator.
#[derive(Clone)]
pub struct Replica {
    node_id: String,
    engine: Arc<dyn Engine>,
}

impl Replica {
    /// A replica named `node_id` over `engine`.
    pub fn new(node_id: String, engine: Arc<dyn Engine>) -> Self {
        Replica { node_id, engine }
    }

    /// This node's id (the name in vector clocks).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The engine, for shutdown and metrics.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The stored versions of `key`.
    pub async fn read(&self, key: Vec<u8>) -> Result<Record, ApiError> {
        let engine = self.engine.clone();
        blocking(move || engine.get(&key)).await
    }

    /// Merges `versions` into `key` and returns the result once durable.
    pub async fn store(&self, key: Vec<u8>, versions: Vec<Version>) -> Result<Record, ApiError> {
        let engine = self.engine.clone();
        blocking(move || engine.put_versions(&key, versions)).await
    }

    /// Merges many keys' versions (a range hand-off) in one blocking task.
    pub async fn store_batch(&self, entries: Vec<(Vec<u8>, Vec<Version>)>) -> Result<(), ApiError> {
        let engine = self.engine.clone();
        blocking(move || engine.put_batch(entries)).await
    }

    /// Up to `limit` records with key hashes in `first..=last`, after key `after`.
    pub async fn scan(
        &self,
        first: u64,
        last: u64,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<Version>)>, ApiError> {
        let engine = self.engine.clone();
        blocking(move || {
            let page = engine.scan(first, last, after.as_deref(), limit)?;
            Ok(page.into_iter().map(|(k, record)| (k, record.into_versions())).collect())
        })
        .await
    }

    /// Drops `key` if its only versions are the tombstones `dots`.
    pub async fn purge(&self, key: Vec<u8>, dots: Vec<Dot>) -> Result<bool, ApiError> {
        let engine = self.engine.clone();
        blocking(move || engine.purge_tombstones(&key, &dots)).await
    }

    /// Creates a new version of `key` from `write` and stores it. Returns the merged versions
    /// and the new version.
    pub async fn coordinate(&self, key: Vec<u8>, write: Write) -> Result<(Record, Version), ApiError> {
        let engine = self.engine.clone();
        let node = self.node_id.clone();
        blocking(move || {
            let mut created = None;
            let record = engine.update(&key, &mut |current| {
                let version = build_version(&node, current, &write, now_ms());
                created = Some(version.clone());
                vec![version]
            })?;
            let created = created.ok_or_else(|| kv_storage::Error::Io("update did not build a version".into()))?;
            Ok((record, created))
        })
        .await
    }
}

/// Runs blocking storage work (which may wait for an fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> kv_storage::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(format!("storage task failed: {e}"))),
    }
}

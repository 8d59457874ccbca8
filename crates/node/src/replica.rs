//! The local replica: reads and coordinates writes on this node's storage.
//!
//! A write is coordinated here as Dynamo's coordinator does it: under the key's lock, read the
//! stored versions, give the new version a dot whose counter is above every counter of this node
//! seen so far (in storage or in the client's context), so that two writes through this node
//! never share a dot, and store it beside every version its context did not see.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kv_storage::{Engine, Record, Version};
use kv_vclock::{Dot, VClock, DEFAULT_MAX_ENTRIES};

use crate::error::ApiError;

/// A write as the client asked for it.
#[derive(Debug, Clone)]
pub struct Write {
    /// The value bytes (owned: never a view into a request buffer).
    pub value: Vec<u8>,
    /// Content-Type to echo on reads.
    pub content_type: String,
    /// What the client read before writing; empty for a blind write.
    pub context: VClock,
    /// Whether this is a delete.
    pub tombstone: bool,
}

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
    pub async fn get(&self, key: Vec<u8>) -> Result<Record, ApiError> {
        let engine = self.engine.clone();
        blocking(move || engine.get(&key)).await
    }

    /// Creates a new version of `key` from `write` and stores it. Returns the merged versions
    /// and the new version.
    pub async fn coordinate(&self, key: Vec<u8>, write: Write) -> Result<(Record, Version), ApiError> {
        let engine = self.engine.clone();
        let node = self.node_id.clone();
        blocking(move || {
            let mut created = None;
            let record = engine.update(&key, &mut |current| {
                let version = new_version(&node, current, &write);
                created = Some(version.clone());
                vec![version]
            })?;
            let created = created.ok_or_else(|| kv_storage::Error::Io("update did not build a version".into()))?;
            Ok((record, created))
        })
        .await
    }

    /// The context a client should send to supersede everything in `record`.
    pub fn context_of(record: &Record) -> VClock {
        record.context()
    }
}

/// The version a write through `node` creates on top of `current`.
fn new_version(node: &str, current: &Record, write: &Write) -> Version {
    let now = now_ms();
    let counter = current.max_counter(node).max(write.context.get(node)) + 1;
    let mut context = write.context.clone();
    context.prune(DEFAULT_MAX_ENTRIES, Some(node));
    Version {
        dot: Dot { node: node.to_owned(), counter, timestamp: now },
        context,
        value: write.value.clone(),
        content_type: write.content_type.clone(),
        tombstone: write.tombstone,
        written_at: now,
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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

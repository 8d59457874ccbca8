//! The local replica: this node's storage, serving replica calls and coordinating writes.
//!
//! A write is coordinated here as Dynamo's coordinator does it: under the key's lock, read the
//! stored versions, build the new version ([`kv_coordinator::wire::build_version`]) and store it
//! beside every version its context did not see. The whole resulting sibling set goes back to
//! the caller, which replicates it to the other replicas.
//!
//! Replica calls arrive in batches ([`Replica::execute`], from `/internal/v1/batch` or from
//! this node's own coordinator): one blocking task and one fsync serve the whole batch.

use std::sync::Arc;

use kv_coordinator::wire::{build_version, Call, CoordinateResponse, Reply};
use kv_coordinator::{now_ms, Write};
use kv_storage::{Engine, Record, Version};

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

    /// Runs a batch of replica calls in one blocking task: reads and purges one by one, all
    /// writes (coordinate and store calls) through [`Engine::update_many`], so the batch waits
    /// for one fsync. Replies come in call order; a failed call fails alone. The calls of a
    /// batch are concurrent requests, so their order inside it is not an ordering promise:
    /// reads run before the batch's writes.
    pub async fn execute(&self, calls: Vec<Call>) -> Vec<Reply> {
        let engine = self.engine.clone();
        let node = self.node_id.clone();
        let count = calls.len();
        match tokio::task::spawn_blocking(move || execute_blocking(&*engine, &node, calls)).await {
            Ok(replies) => replies,
            Err(e) => {
                let message = format!("storage task failed: {e}");
                tracing::error!(error = %message, "replica batch failed");
                (0..count).map(|_| Reply::Failed { status: 500, message: message.clone() }).collect()
            }
        }
    }
}

/// What a write call of a batch asks for, once its key is split off.
enum WriteCall {
    Coordinate(Write),
    Store(Vec<Version>),
}

fn execute_blocking(engine: &dyn Engine, node: &str, calls: Vec<Call>) -> Vec<Reply> {
    let mut replies: Vec<Option<Reply>> = Vec::with_capacity(calls.len());
    // Write calls, split into parallel lists: call index, key, what to write.
    let mut indexes = Vec::new();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut payloads: Vec<Option<WriteCall>> = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = match call {
            Call::Read(c) => Some(engine.get(&c.key).map_or_else(failed, |r| Reply::Read(r.into_versions()))),
            Call::Purge(c) => {
                Some(engine.purge_tombstones(&c.key, &c.tombstones).map_or_else(failed, |_| Reply::Purged))
            }
            Call::Coordinate(c) => {
                indexes.push(i);
                keys.push(c.key);
                payloads.push(Some(WriteCall::Coordinate(c.write)));
                None
            }
            Call::Store(c) => {
                indexes.push(i);
                keys.push(c.key);
                payloads.push(Some(WriteCall::Store(c.versions)));
                None
            }
        };
        replies.push(reply);
    }
    if !keys.is_empty() {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut created: Vec<Option<Version>> = vec![None; keys.len()];
        let now = now_ms();
        let results = engine.update_many(&keys, &mut |j, current| match payloads[j].take() {
            Some(WriteCall::Coordinate(write)) => {
                let version = build_version(node, current, &write, now);
                created[j] = Some(version.clone());
                vec![version]
            }
            Some(WriteCall::Store(versions)) => versions,
            None => Vec::new(),
        });
        for ((j, result), i) in results.into_iter().enumerate().zip(indexes) {
            replies[i] = Some(match (result, created[j].take()) {
                (Ok(record), Some(created)) => Reply::Coordinated(CoordinateResponse { record, created }),
                (Ok(_), None) => Reply::Stored,
                (Err(e), _) => failed(e),
            });
        }
    }
    replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Reply::Failed { status: 500, message: "call was not run".into() }))
        .collect()
}

fn failed(e: kv_storage::Error) -> Reply {
    let error = ApiError::from(e);
    Reply::Failed { status: error.status(), message: error.detail() }
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

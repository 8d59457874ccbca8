//! The local replica: this node's storage, serving replica calls and coordinating writes.
//!
//! The rules (ownership, who coordinates, dots, write ids, what an acknowledgement vouches for)
//! live in [`kv_replica::replica::ReplicaCore`], shared with the model checker; this module
//! runs them off the async workers. Replica calls arrive in batches ([`Replica::execute`], from
//! `/internal/v1/batch` or from this node's own coordinator): one blocking task and one fsync
//! serve the whole batch.

use std::sync::Arc;

use kv_coordinator::now_ms;
use kv_coordinator::wire::{Call, Reply};
use kv_replica::replica::ReplicaCore;
use kv_storage::{Engine, Record, Version};

use kv_api::ApiError;

/// This node's storage, as a replica and a coordinator.
#[derive(Clone)]
pub struct Replica {
    node_id: String,
    core: Arc<ReplicaCore>,
}

impl Replica {
    /// A replica named `node_id` over `core`.
    pub fn new(node_id: String, core: Arc<ReplicaCore>) -> Self {
        Replica { node_id, core }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The shared replica logic and its view.
    pub fn core(&self) -> &Arc<ReplicaCore> {
        &self.core
    }

    /// The engine, for shutdown and metrics.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        self.core.engine()
    }

    /// The stored versions of `key`, whatever the node's ownership (admin and tests).
    pub async fn read(&self, key: Vec<u8>) -> Result<Record, ApiError> {
        let engine = self.engine().clone();
        blocking(move || engine.get(&key).map_err(from_storage)).await
    }

    /// Merges many keys' versions (a range streamed in) in one blocking task; refused unless
    /// every key is this node's to hold.
    pub async fn store_batch(&self, entries: Vec<(Vec<u8>, Vec<Version>)>, deadline_ms: u64) -> Result<(), ApiError> {
        let core = self.core.clone();
        blocking(move || core.store_stream_until(entries, deadline_ms, kv_coordinator::now_ms()).map_err(from_refusal))
            .await
    }

    /// Up to `limit` records with key hashes in `first..=last`, after key `after`; refused unless
    /// this node serves the whole range.
    pub async fn scan(
        &self,
        first: u64,
        last: u64,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<Version>)>, ApiError> {
        let core = self.core.clone();
        blocking(move || core.scan(first, last, after.as_deref(), limit).map_err(from_refusal)).await
    }

    /// Every record in `first..=last` after `after`, whatever the node's ownership: for ranges it
    /// is dropping and for operators.
    pub async fn scan_any(
        &self,
        first: u64,
        last: u64,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, ApiError> {
        let engine = self.engine().clone();
        blocking(move || engine.scan(first, last, after.as_deref(), limit).map_err(from_storage)).await
    }

    /// Removes `keys` durably.
    pub async fn remove(&self, keys: Vec<Vec<u8>>) -> Result<usize, ApiError> {
        let engine = self.engine().clone();
        blocking(move || engine.remove(&keys).map_err(from_storage)).await
    }

    /// Runs a batch of replica calls in one blocking task; replies come in call order.
    pub async fn execute(&self, calls: Vec<Call>) -> Vec<Reply> {
        let core = self.core.clone();
        let count = calls.len();
        match tokio::task::spawn_blocking(move || core.execute(calls, now_ms())).await {
            Ok(replies) => replies,
            Err(e) => {
                let message = format!("storage task failed: {e}");
                tracing::error!(error = %message, "replica batch failed");
                (0..count).map(|_| Reply::Failed { status: 500, message: message.clone() }).collect()
            }
        }
    }
}

/// Runs blocking storage work (which may wait for an fsync) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(ApiError::Internal(format!("storage task failed: {e}"))),
    }
}

/// The error a replica's refusal becomes.
pub fn from_refusal(refusal: kv_replica::replica::Refusal) -> ApiError {
    match refusal.status {
        kv_replica::replica::MISDIRECTED => ApiError::Misdirected(refusal.message),
        503 => ApiError::Unavailable(refusal.message),
        _ => ApiError::Internal(refusal.message),
    }
}

/// The error a storage failure becomes: retryable ones are `503`, the rest `500`.
pub fn from_storage(e: kv_storage::Error) -> ApiError {
    if e.is_retryable() {
        ApiError::Unavailable(e.to_string())
    } else {
        ApiError::Internal(e.to_string())
    }
}

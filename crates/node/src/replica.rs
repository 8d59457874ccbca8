//! The local replica: this node's storage, serving replica calls and coordinating writes.
//!
//! The rules (ownership, who coordinates, dots, write ids, what an acknowledgement vouches for)
//! live in [`kv_replica::replica::ReplicaCore`], shared with the model checker; this module
//! runs them off the async workers. Replica calls arrive in batches ([`Replica::execute`], from
//! `/internal/v1/batch` or from this node's own coordinator): one blocking task and one fsync
//! serve the whole batch.

use std::sync::Arc;

use kv_coordinator::now_ms;
use kv_proto::{Call, Refusal, Reply};
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

    /// A page of the records with key hashes in `first..=last` after key `after`: up to `limit`
    /// records and about [`PAGE_BYTES`] of values (a page ends after the record that passes
    /// it); refused unless this node serves the whole range. Empty once the range is done.
    pub async fn scan(
        &self,
        first: u64,
        last: u64,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<Version>)>, ApiError> {
        Ok(self.scan_page(first, last, after, limit).await?.0)
    }

    /// [`Replica::scan`], and whether the range is done (no record after the page).
    pub async fn scan_page(
        &self,
        first: u64,
        last: u64,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<Version>)>, bool), ApiError> {
        let core = self.core.clone();
        blocking(move || {
            paged(
                after,
                limit,
                |after, n| core.scan(first, last, after, n).map_err(from_refusal),
                |versions| versions.iter().map(|v| v.value.len()).sum(),
            )
        })
        .await
    }

    /// A page of every record in `first..=last` after `after`, whatever the node's ownership
    /// (for ranges it is dropping, and for operators): up to `limit` records and about
    /// [`PAGE_BYTES`] of values. Empty once the range is done.
    pub async fn scan_any(
        &self,
        first: u64,
        last: u64,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, ApiError> {
        let engine = self.engine().clone();
        let page = blocking(move || {
            paged(
                after,
                limit,
                |after, n| engine.scan(first, last, after, n).map_err(from_storage),
                |record| record.versions().iter().map(|v| v.value.len()).sum(),
            )
        })
        .await?;
        Ok(page.0)
    }

    /// Removes `keys` durably.
    pub async fn remove(&self, keys: Vec<Vec<u8>>) -> Result<usize, ApiError> {
        let engine = self.engine().clone();
        blocking(move || engine.remove(&keys).map_err(from_storage)).await
    }

    /// Runs a batch of replica calls in one blocking task; replies come in call order.
    pub async fn execute(&self, calls: Vec<Call>) -> Vec<Reply> {
        self.execute_with(calls, false).await
    }

    /// [`Replica::execute`] for this node's own coordinator: a coordinate call stores the new
    /// set here too ([`ReplicaCore::execute_local`]).
    pub async fn execute_local(&self, calls: Vec<Call>) -> Vec<Reply> {
        self.execute_with(calls, true).await
    }

    async fn execute_with(&self, calls: Vec<Call>, local: bool) -> Vec<Reply> {
        let core = self.core.clone();
        let count = calls.len();
        // Reads only: no fsync to wait for, and each a lookup in the memtable, the block cache
        // or the page cache (microseconds), so the batch runs here. Handing it to the blocking
        // pool and back costs two thread wake-ups, more than the reads themselves on a busy
        // host (docs/benchmarks.md, "Reads run where they arrive").
        let reads_only = calls.iter().all(|call| matches!(call, Call::Read(_)));
        let run = move || if local { core.execute_local(calls, now_ms()) } else { core.execute(calls, now_ms()) };
        if reads_only {
            return run();
        }
        match tokio::task::spawn_blocking(run).await {
            Ok(replies) => replies,
            Err(e) => {
                let message = format!("storage task failed: {e}");
                tracing::error!(error = %message, "replica batch failed");
                (0..count).map(|_| Refusal::Failed(message.clone()).into()).collect()
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
pub fn from_refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotOwner(message) => ApiError::Misdirected(message),
        Refusal::Unavailable(message) => ApiError::Unavailable(message),
        Refusal::Malformed(message) => ApiError::BadRequest(message),
        Refusal::TooLate(message) => ApiError::TooLate(message),
        other => ApiError::Internal(other.to_string()),
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

/// Bytes of values one page of a range holds at most (the page ends after the record that
/// passes it): pages of large values stay well within what a peer accepts in one body
/// (`--max-value-bytes` times 16, see `peer_body_limit`), and within memory.
pub const PAGE_BYTES: usize = 4 << 20;

/// A page of records and whether the range is done.
type Page<T> = (Vec<(Vec<u8>, T)>, bool);

/// Records read from storage first while a page fills.
const PAGE_CHUNK: usize = 32;

/// A page of records after `after`: `read(after, n)` gives the next up to `n` records, `size`
/// a record's value bytes. Reads a few records at a time until `limit` records or
/// [`PAGE_BYTES`] of values; returns the page and whether the records ran out.
fn paged<T, E>(
    mut after: Option<Vec<u8>>,
    limit: usize,
    mut read: impl FnMut(Option<&[u8]>, usize) -> Result<Vec<(Vec<u8>, T)>, E>,
    size: impl Fn(&T) -> usize,
) -> Result<Page<T>, E> {
    let mut page: Vec<(Vec<u8>, T)> = Vec::new();
    let mut bytes = 0;
    while page.len() < limit && bytes < PAGE_BYTES {
        // A first small read, then as many records as the values seen so far say fit in the
        // byte budget (one more read for a page of small values: each read opens an iterator).
        let want = match page.len() {
            0 => PAGE_CHUNK,
            n => (PAGE_BYTES - bytes) / (bytes / n + 1),
        }
        .clamp(1, limit - page.len());
        let chunk = read(after.as_deref(), want)?;
        let exhausted = chunk.len() < want;
        for (key, record) in chunk {
            bytes += size(&record);
            after = Some(key.clone());
            page.push((key, record));
            if bytes >= PAGE_BYTES {
                // The records after this one are for the next page: more may follow.
                return Ok((page, false));
            }
        }
        if exhausted {
            return Ok((page, true));
        }
    }
    Ok((page, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_at_the_record_limit_or_after_the_record_that_passes_the_byte_limit() {
        let records: Vec<(Vec<u8>, usize)> =
            (0..100u8).map(|i| (vec![i], if i == 10 { PAGE_BYTES } else { 1 })).collect();
        let read = |after: Option<&[u8]>, n: usize| -> Result<Vec<(Vec<u8>, usize)>, ()> {
            let start = after.map_or(0, |a| a[0] as usize + 1);
            Ok(records.iter().skip(start).take(n).cloned().collect())
        };
        let (page, done) = paged(None, 500, read, |s| *s).unwrap();
        assert_eq!((page.len(), done), (11, false), "ends after the large record");
        let (page, done) = paged(Some(vec![10]), 500, read, |s| *s).unwrap();
        assert_eq!((page.len(), done), (89, true), "the rest, and done");
        let (page, done) = paged(None, 5, read, |s| *s).unwrap();
        assert_eq!((page.len(), done), (5, false));
        let (page, done) = paged(Some(vec![99]), 5, read, |s| *s).unwrap();
        assert_eq!((page.len(), done), (0, true));
    }

    #[test]
    fn a_late_store_batch_answers_too_late_not_an_internal_error() {
        use axum::response::IntoResponse as _;
        let answer = from_refusal(Refusal::TooLate("store-batch deadline passed 5 ms ago".into())).into_response();
        // 504 is what the sending transport reads as `Refusal::TooLate`.
        assert_eq!(answer.status(), axum::http::StatusCode::GATEWAY_TIMEOUT);
        let other = from_refusal(Refusal::Failed("disk".into())).into_response();
        assert_eq!(other.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}

//! [`Batcher`]: coalescing concurrent replica calls to one peer into one request.
//!
//! Every replicated operation costs a few replica calls, and on a small machine the cost of a
//! call is mostly its HTTP exchange (syscalls, wake-ups, headers), not its work. A `Batcher`
//! queues the calls for one peer and sends them as one batch ([`crate::wire::BATCH_PATH`]):
//!
//! - At most `in_flight` batches are outstanding per peer. While they are, new calls wait in the
//!   queue, and the next batch takes everything queued (up to [`MAX_BATCH_CALLS`] calls or
//!   about [`MAX_BATCH_BYTES`]). So a lone call goes out at once (no timer, no added latency),
//!   and under load the batch size grows with the load: 64 clients in flight become a few
//!   requests per peer, and the peer stores each batch with one fsync.
//! - Replies come back in call order; a failed batch (peer unreachable, timeout) fails each of
//!   its calls with the same [`ReplicaError`], exactly as separate calls would have failed.
//! - A call whose caller gave up (timed out) before its batch left is not sent.
//!
//! The queue is bounded ([`QUEUE_CALLS`]): callers wait when a peer falls that far behind,
//! which is the backpressure the coordinator's per-call timeout turns into an error.

use std::sync::Arc;

use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::topology::BoxFuture;
use crate::wire::{Call, Reply};
use crate::ReplicaError;

/// Most calls a client puts in one batch: enough that 64-256 concurrent operations need only a
/// few requests, small enough that one batch's storage work stays well under a millisecond or
/// two (each call is a few microseconds of storage work plus its share of one fsync).
pub const MAX_BATCH_CALLS: usize = 256;

/// A batch stops growing past about this many bytes of keys and values, so one request body
/// stays small next to the internal body limit (a single larger call still goes, alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Calls queued per peer before callers wait.
pub const QUEUE_CALLS: usize = 4096;

/// Sends one batch and returns one reply per call, in order.
pub type SendBatch = Arc<dyn Fn(Vec<Call>) -> BoxFuture<'static, Result<Vec<Reply>, ReplicaError>> + Send + Sync>;

type Waiter = oneshot::Sender<Result<Reply, ReplicaError>>;

/// A queue of calls to one peer, drained into batches by a background task that lives as long
/// as the `Batcher`.
pub struct Batcher {
    queue: mpsc::Sender<(Call, Waiter)>,
}

impl Batcher {
    /// Starts the task that sends batches with `send`, at most `in_flight` at a time, and
    /// records each batch's size in `sizes`. Must be called inside a tokio runtime.
    pub fn spawn(send: SendBatch, in_flight: usize, sizes: Option<Histogram>) -> Batcher {
        let (queue, calls) = mpsc::channel(QUEUE_CALLS);
        tokio::spawn(drive(calls, send, in_flight.max(1), sizes));
        Batcher { queue }
    }

    /// Queues `call` and waits for its reply.
    pub async fn call(&self, call: Call) -> Result<Reply, ReplicaError> {
        let (waiter, reply) = oneshot::channel();
        self.queue
            .send((call, waiter))
            .await
            .map_err(|_| ReplicaError::NotSent("replica client is shutting down".into()))?;
        reply.await.map_err(|_| ReplicaError::Unreachable("batch abandoned".into()))?
    }
}

async fn drive(mut calls: mpsc::Receiver<(Call, Waiter)>, send: SendBatch, in_flight: usize, sizes: Option<Histogram>) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = calls.recv().await {
        // Wait for a free slot before draining: whatever queues meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.0.weight();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_CALLS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = calls.try_recv() else { break };
            bytes += next.0.weight();
            batch.push(next);
        }
        batch.retain(|(_, waiter)| !waiter.is_closed());
        if batch.is_empty() {
            continue;
        }
        if let Some(sizes) = &sizes {
            sizes.observe(batch.len() as f64);
        }
        let send = send.clone();
        tokio::spawn(async move {
            let (batch, waiters): (Vec<Call>, Vec<Waiter>) = batch.into_iter().unzip();
            let count = batch.len();
            let result = send(batch).await;
            drop(slot);
            match result {
                Ok(replies) if replies.len() == count => {
                    for (waiter, reply) in waiters.into_iter().zip(replies) {
                        let _ = waiter.send(Ok(reply));
                    }
                }
                Ok(replies) => {
                    let error = ReplicaError::Decode(format!("{} replies to {count} calls", replies.len()));
                    waiters.into_iter().for_each(|w| drop(w.send(Err(error.clone()))));
                }
                Err(error) => waiters.into_iter().for_each(|w| drop(w.send(Err(error.clone())))),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::wire::ReadRequest;

    fn read(key: &str) -> Call {
        Call::Read(ReadRequest { key: key.as_bytes().to_vec() })
    }

    /// A peer that takes 10 ms per batch and answers each read with one version-less reply
    /// carrying the key length, recording batch sizes.
    fn slow_peer(batches: Arc<parking_lot::Mutex<Vec<usize>>>, fail: Arc<AtomicUsize>) -> SendBatch {
        Arc::new(move |calls: Vec<Call>| {
            let batches = batches.clone();
            let fail = fail.clone();
            Box::pin(async move {
                batches.lock().push(calls.len());
                tokio::time::sleep(Duration::from_millis(10)).await;
                if fail.load(Ordering::SeqCst) > 0 {
                    return Err(ReplicaError::Unreachable("down".into()));
                }
                Ok(calls
                    .iter()
                    .map(|c| Reply::Failed { status: c.key().len() as u16, message: String::new() })
                    .collect())
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_call_goes_at_once_and_a_crowd_shares_batches() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(slow_peer(batches.clone(), Arc::new(AtomicUsize::new(0))), 1, None));
        let started = tokio::time::Instant::now();
        assert!(matches!(batcher.call(read("k")).await, Ok(Reply::Failed { status: 1, .. })));
        assert_eq!(started.elapsed(), Duration::from_millis(10), "no waiting for company");

        let mut handles = Vec::new();
        for i in 0..100 {
            let batcher = batcher.clone();
            handles.push(tokio::spawn(async move { batcher.call(read(&"x".repeat(i + 1))).await }));
        }
        for (i, handle) in handles.into_iter().enumerate() {
            // Each caller gets its own reply, not a neighbour's.
            assert!(matches!(handle.await.unwrap(), Ok(Reply::Failed { status, .. }) if status as usize == i + 1));
        }
        let sizes = batches.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 101);
        assert!(sizes.len() <= 3, "100 concurrent calls took {} batches: {sizes:?}", sizes.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_every_call_in_it() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(slow_peer(batches, Arc::new(AtomicUsize::new(1))), 2, None));
        let mut handles = Vec::new();
        for i in 0..10 {
            let batcher = batcher.clone();
            handles.push(tokio::spawn(async move { batcher.call(read(&i.to_string())).await }));
        }
        for handle in handles {
            assert!(matches!(handle.await.unwrap(), Err(ReplicaError::Unreachable(m)) if m == "down"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_abandoned_before_sending_are_dropped() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(slow_peer(batches.clone(), Arc::new(AtomicUsize::new(0))), 1, None));
        // Occupy the only slot, then queue a call whose caller gives up before the slot frees.
        let busy = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(read("busy")).await })
        };
        tokio::task::yield_now().await;
        let abandoned = tokio::time::timeout(Duration::from_millis(5), batcher.call(read("late"))).await;
        assert!(abandoned.is_err());
        busy.await.unwrap().unwrap();
        assert!(batcher.call(read("next")).await.is_ok());
        assert_eq!(*batches.lock(), vec![1, 1], "the abandoned call was never sent");
    }
}

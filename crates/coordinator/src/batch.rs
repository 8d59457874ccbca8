//! [`Batcher`]: coalescing concurrent replica calls to one peer into one request.
//!
//! Every replicated operation costs a few replica calls, and on a small machine the cost of a
//! call is mostly its HTTP exchange (syscalls, wake-ups, headers), not its work. A `Batcher`
//! queues the calls for one peer and sends them as one batch ([`kv_proto::BATCH_PATH`]):
//!
//! - At most `in_flight` batches are outstanding per peer. While they are, new calls wait in the
//!   queue, and the next batch takes everything queued (up to [`MAX_BATCH_CALLS`] calls or
//!   about [`MAX_BATCH_BYTES`]). So a lone call goes out at once (no timer, no added latency),
//!   and under load the batch size grows with the load: 64 clients in flight become a few
//!   requests per peer, and the peer stores each batch with one fsync.
//! - Replies come back in call order; a failed batch (peer unreachable, timeout) fails each of
//!   its calls with the same [`ReplicaError`], exactly as separate calls would have failed.
//! - A call whose caller gave up (timed out) before its batch left is not sent.
//! - **A stalled peer fails fast.** Once the oldest batch in flight has gone unanswered for
//!   `stall_after` (the peer is frozen, partitioned or badly overloaded), the calls queued
//!   behind it, and every new call until it is answered, fail at once with
//!   [`ReplicaError::NotSent`]: they were certainly not applied, so the coordinator asks the
//!   next replica, a fallback keeps a hint, a read counts the others. Without this, calls
//!   queued behind a frozen peer's batch failed with it after the whole replica timeout, as if
//!   they might have been applied, and writes coordinated there were answered `503`.
//!
//! The queue is bounded ([`QUEUE_CALLS`]): callers wait when a peer falls that far behind,
//! which is the backpressure the coordinator's per-call timeout turns into an error.
//!
//! The queue is drained by a [`BatchWorker`], one unit of work per batch, run by the process's
//! supervisor like every background job.

use std::sync::Arc;

use kv_worker::{Worker, WorkerState};
use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::topology::BoxFuture;
use crate::ReplicaError;
use kv_proto::{Call, Reply};

/// Most calls a client puts in one batch: enough that 64-256 concurrent operations need only a
/// few requests, small enough that one batch's storage work stays well under a millisecond or
/// two (each call is a few microseconds of storage work plus its share of one fsync).
pub const MAX_BATCH_CALLS: usize = 256;

/// A batch stops growing past about this many bytes of keys and values, so one request body
/// stays small next to the internal body limit (a single larger call still goes, alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Calls queued per peer before callers wait.
pub const QUEUE_CALLS: usize = 4096;

/// How a [`Batcher`] paces one peer.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Batches in flight at once.
    pub in_flight: usize,
    /// How long the oldest batch in flight may go unanswered before the peer counts as stalled
    /// and calls fail fast instead of queueing behind it.
    pub stall_after: std::time::Duration,
}

/// The batches in flight to one peer, by when each was sent: what tells a stalled peer.
#[derive(Default)]
struct Flight {
    next: std::sync::atomic::AtomicU64,
    /// tokio's clock, which tests can pause.
    sent: parking_lot::Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>,
}

impl Flight {
    fn begin(&self) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sent.lock().insert(id, tokio::time::Instant::now());
        id
    }

    fn end(&self, id: u64) {
        self.sent.lock().remove(&id);
    }

    /// How long the oldest batch in flight has gone unanswered, if one has for `stall_after`.
    fn stalled(&self, stall_after: std::time::Duration) -> Option<std::time::Duration> {
        let oldest = self.sent.lock().values().min().map(tokio::time::Instant::elapsed)?;
        (oldest >= stall_after).then_some(oldest)
    }
}

fn stalled_error(name: &str, waited: std::time::Duration) -> ReplicaError {
    ReplicaError::NotSent(format!(
        "{name}: a batch sent {} ms ago is unanswered (the peer is stalled); not sent",
        waited.as_millis()
    ))
}

/// Sends one batch and returns one reply per call, in order.
pub type SendBatch = Arc<dyn Fn(Vec<Call>) -> BoxFuture<'static, Result<Vec<Reply>, ReplicaError>> + Send + Sync>;

type Waiter = oneshot::Sender<Result<Reply, ReplicaError>>;

/// A queue of calls to one peer. Its [`BatchWorker`] drains it into batches; the process runs
/// that worker under its supervisor ([`kv_worker::Supervisor`]).
pub struct Batcher {
    queue: mpsc::Sender<(Call, Waiter)>,
    flight: Arc<Flight>,
    stall_after: std::time::Duration,
    name: String,
}

impl Batcher {
    /// A queue named `name` (shown at `/admin/workers`) and the worker that sends its batches
    /// with `send`, paced by `limits`, recording each batch's size in `sizes`.
    pub fn new(name: String, send: SendBatch, limits: BatchLimits, sizes: Option<Histogram>) -> (Batcher, BatchWorker) {
        let (queue, calls) = mpsc::channel(QUEUE_CALLS);
        let in_flight = limits.in_flight.max(1);
        let flight = Arc::new(Flight::default());
        let worker = BatchWorker {
            name: name.clone(),
            flight: flight.clone(),
            stall_after: limits.stall_after,
            calls,
            next: None,
            closed: false,
            send,
            slots: Arc::new(Semaphore::new(in_flight)),
            in_flight,
            sending: JoinSet::new(),
            sizes,
            batches: 0,
        };
        (Batcher { queue, flight, stall_after: limits.stall_after, name }, worker)
    }

    /// Queues `call` and waits for its reply; fails at once, unsent, while the peer is stalled.
    pub async fn call(&self, call: Call) -> Result<Reply, ReplicaError> {
        if let Some(waited) = self.flight.stalled(self.stall_after) {
            return Err(stalled_error(&self.name, waited));
        }
        let (waiter, reply) = oneshot::channel();
        self.queue
            .send((call, waiter))
            .await
            .map_err(|_| ReplicaError::NotSent("replica client is shutting down".into()))?;
        reply.await.map_err(|_| ReplicaError::Unreachable("batch abandoned".into()))?
    }
}

/// Drains a [`Batcher`]'s queue into batches: one unit of work sends one batch. The batches in
/// flight are its tasks: stopping the worker abandons them (their callers see
/// [`ReplicaError::Unreachable`]).
pub struct BatchWorker {
    name: String,
    flight: Arc<Flight>,
    stall_after: std::time::Duration,
    calls: mpsc::Receiver<(Call, Waiter)>,
    /// The call that woke the worker, not yet sent.
    next: Option<(Call, Waiter)>,
    /// Every [`Batcher`] handle is gone.
    closed: bool,
    send: SendBatch,
    slots: Arc<Semaphore>,
    in_flight: usize,
    sending: JoinSet<()>,
    sizes: Option<Histogram>,
    batches: u64,
}

impl Worker for BatchWorker {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn status(&self) -> String {
        let sending = self.in_flight - self.slots.available_permits();
        format!("{} batches sent, {sending} in flight, {} calls queued", self.batches, self.calls.len())
    }

    async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
        while self.sending.try_join_next().is_some() {}
        let Some(first) = self.next.take() else {
            return Ok(if self.closed { WorkerState::Done } else { WorkerState::Idle });
        };
        // Wait for a free slot before draining: whatever queues meanwhile joins this batch. If
        // the peer stalls meanwhile, everything queued fails unsent instead of waiting on it.
        let slot = loop {
            let wait = match self.flight.stalled(std::time::Duration::ZERO) {
                Some(oldest) => self.stall_after.saturating_sub(oldest),
                None => self.stall_after,
            };
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => break slot.map_err(|e| e.to_string())?,
                () = tokio::time::sleep(wait.max(std::time::Duration::from_millis(1))) => {
                    if let Some(waited) = self.flight.stalled(self.stall_after) {
                        let error = stalled_error(&self.name, waited);
                        let _ = first.1.send(Err(error.clone()));
                        while let Ok((_, waiter)) = self.calls.try_recv() {
                            let _ = waiter.send(Err(error.clone()));
                        }
                        return Ok(WorkerState::Idle);
                    }
                }
            }
        };
        let mut bytes = first.0.weight();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_CALLS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = self.calls.try_recv() else { break };
            bytes += next.0.weight();
            batch.push(next);
        }
        batch.retain(|(_, waiter)| !waiter.is_closed());
        if batch.is_empty() {
            return Ok(WorkerState::Idle);
        }
        if let Some(sizes) = &self.sizes {
            sizes.observe(batch.len() as f64);
        }
        self.batches += 1;
        let send = self.send.clone();
        let flight = self.flight.clone();
        let id = flight.begin();
        self.sending.spawn(async move {
            let (batch, waiters): (Vec<Call>, Vec<Waiter>) = batch.into_iter().unzip();
            let count = batch.len();
            let result = send(batch).await;
            flight.end(id);
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
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            call = self.calls.recv() => match call {
                Some(call) => self.next = Some(call),
                None => self.closed = true,
            },
            // Reap finished sends while idle.
            Some(_) = self.sending.join_next(), if !self.sending.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use kv_proto::ReadRequest;
    use kv_worker::{Stage, Supervisor};

    /// A batcher whose worker runs under a supervisor (the task outlives the handle).
    fn spawn(send: SendBatch, in_flight: usize, sizes: Option<Histogram>) -> Batcher {
        let limits = BatchLimits { in_flight, stall_after: Duration::from_secs(1) };
        let (batcher, worker) = Batcher::new("test".into(), send, limits, sizes);
        let supervisor = Supervisor::new();
        supervisor.spawn(Stage::Transport, worker);
        batcher
    }

    fn read(key: &str) -> Call {
        Call::Read(ReadRequest::new(key.as_bytes().to_vec()))
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
                Ok(calls.iter().map(|c| Reply::Refused(kv_proto::Refusal::Failed(c.key().len().to_string()))).collect())
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_call_goes_at_once_and_a_crowd_shares_batches() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Arc::new(spawn(slow_peer(batches.clone(), Arc::new(AtomicUsize::new(0))), 1, None));
        let started = tokio::time::Instant::now();
        assert!(matches!(batcher.call(read("k")).await, Ok(Reply::Refused(kv_proto::Refusal::Failed(m))) if m == "1"));
        assert_eq!(started.elapsed(), Duration::from_millis(10), "no waiting for company");

        let mut handles = Vec::new();
        for i in 0..100 {
            let batcher = batcher.clone();
            handles.push(tokio::spawn(async move { batcher.call(read(&"x".repeat(i + 1))).await }));
        }
        for (i, handle) in handles.into_iter().enumerate() {
            // Each caller gets its own reply, not a neighbour's.
            assert!(
                matches!(handle.await.unwrap(), Ok(Reply::Refused(kv_proto::Refusal::Failed(m))) if m == (i + 1).to_string())
            );
        }
        let sizes = batches.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 101);
        assert!(sizes.len() <= 3, "100 concurrent calls took {} batches: {sizes:?}", sizes.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_every_call_in_it() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Arc::new(spawn(slow_peer(batches, Arc::new(AtomicUsize::new(1))), 2, None));
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
    async fn calls_behind_a_stalled_peer_fail_unsent_at_once() {
        // A peer that answers its first batch only after 10 s (frozen), then at once.
        let frozen = Arc::new(AtomicUsize::new(1));
        let sent = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let send: SendBatch = {
            let (frozen, sent) = (frozen.clone(), sent.clone());
            Arc::new(move |calls: Vec<Call>| {
                let (frozen, sent) = (frozen.clone(), sent.clone());
                Box::pin(async move {
                    sent.lock().push(calls.len());
                    if frozen.swap(0, Ordering::SeqCst) == 1 {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    Ok(calls.iter().map(|_| Reply::Stored).collect())
                })
            })
        };
        let batcher = Arc::new(spawn(send, 1, None));
        let in_flight = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(read("in-flight")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued behind the frozen batch: failed unsent once the stall is seen (1 s), not
        // after the peer answers.
        let started = tokio::time::Instant::now();
        let queued = batcher.call(read("queued")).await;
        assert!(matches!(&queued, Err(ReplicaError::NotSent(m)) if m.contains("stalled")), "{queued:?}");
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(1), "queued for {waited:?}");
        // A new call while stalled: refused at once.
        let started = tokio::time::Instant::now();
        assert!(matches!(batcher.call(read("new")).await, Err(ReplicaError::NotSent(_))));
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The call in flight gets its real answer when the peer resumes; then calls flow again.
        assert!(matches!(in_flight.await.unwrap(), Ok(Reply::Stored)));
        assert!(matches!(batcher.call(read("after")).await, Ok(Reply::Stored)));
        assert_eq!(*sent.lock(), vec![1, 1], "the queued and the refused calls were never sent");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_abandoned_before_sending_are_dropped() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Arc::new(spawn(slow_peer(batches.clone(), Arc::new(AtomicUsize::new(0))), 1, None));
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

//! # Background work: one shape, one supervisor
//!
//! Everything a process does besides answering requests (gossip rounds, streaming ranges,
//! dropping lost ranges, following topology changes, sending batches of replica calls, and
//! later hint delivery, anti-entropy and tombstone collection) is a [`Worker`]: a value with a
//! name, a status line, *one unit of work* ([`Worker::work`]) and a way to *wait until there may
//! be more* ([`Worker::wait_for_work`]). The shape is Garage's (`garage_util::background`).
//!
//! A [`Supervisor`] starts every worker, owns every task handle (no detached spawns), and runs
//! each worker's loop:
//!
//! - `work` answers [`WorkerState::Busy`] (call again at once), [`WorkerState::Idle`] (wait for
//!   work first) or [`WorkerState::Done`] (the worker has finished for good);
//! - an error is reported (log, `kv_worker_failures_total`, the worker's state at
//!   `GET /admin/workers`) and the worker is retried after a backoff that doubles from
//!   [`RETRY_FIRST`] to [`RETRY_MAX`], with jitter (`backon`); a panic is caught and treated the same way;
//! - its state (`busy`, `idle`, `retrying`, `done`, `stopped`), status line, units of work and
//!   failures are visible through [`Supervisor::workers`] and in metrics.
//!
//! Shutdown is ordered: each worker belongs to a [`Stage`], and [`Supervisor::stop`] stops one
//! stage at a time, in the order the process chooses, each within what is left of one deadline
//! counted from the signal. A worker stops between units of work, or inside one that watches
//! the token it is given; one that outlives the deadline is aborted.
//!
//! # Layout
//! - [`Worker`], [`WorkerState`], [`Stage`], [`Supervisor`], [`WorkerInfo`]: all in this file.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures::FutureExt as _;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a busy worker's status line is refreshed (asking for it after every unit of work
/// would cost a hot worker, such as a batcher, a formatted string per batch).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// First wait before a failed worker runs again.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// Longest wait between retries of a worker that keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a unit of work left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// There is more to do now: call [`Worker::work`] again at once.
    Busy,
    /// Nothing to do: call [`Worker::wait_for_work`] before working again.
    Idle,
    /// Finished for good; the supervisor stops running it.
    Done,
}

/// A background job. The supervisor calls `work` and `wait_for_work` in turn, one at a time.
pub trait Worker: Send + 'static {
    /// Name shown at `GET /admin/workers` and in metric labels (low cardinality: one per job, or
    /// one per peer).
    fn name(&self) -> String;

    /// A one-line description of what it is doing or last did.
    fn status(&self) -> String {
        String::new()
    }

    /// Does one unit of work. Long units should watch `shutdown` and return early once it is
    /// cancelled (the supervisor aborts a unit that outlives the shutdown deadline).
    fn work(&mut self, shutdown: &CancellationToken) -> impl Future<Output = Result<WorkerState, String>> + Send;

    /// Waits until there may be work: a tick, a notification, a change to follow.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;
}

/// When a worker stops at shutdown, relative to the others: stages stop in the order the
/// process passes them to [`Supervisor::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Data movement and upkeep (rebalancing, dropping, ownership views): stops first, as soon
    /// as client requests are drained.
    Upkeep,
    /// Sending replica calls to peers (the batchers): stops once the coordinator's background
    /// replication and read repair are done, since they travel through it.
    Transport,
    /// Gossip: stops last, so peers hear from us until the end.
    Membership,
}

/// A worker as `GET /admin/workers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// [`Worker::name`].
    pub name: String,
    /// Its shutdown stage.
    pub stage: Stage,
    /// `busy`, `idle`, `retrying`, `done` or `stopped`.
    pub state: &'static str,
    /// [`Worker::status`] after its last unit of work.
    pub status: String,
    /// Units of work done.
    pub units: u64,
    /// Units that failed (errors and panics).
    pub failures: u64,
    /// The last failure's message, if any.
    pub last_error: Option<String>,
}

struct Entry {
    info: Arc<Mutex<WorkerInfo>>,
    handle: Option<JoinHandle<()>>,
    token: CancellationToken,
}

/// Every state a worker can be in, as `kv_workers{state}` labels them.
const STATES: [&str; 5] = ["busy", "idle", "retrying", "done", "stopped"];

/// `kv_workers{state}` and `kv_worker_failures_total{worker}`.
#[derive(Clone)]
struct SupervisorMetrics {
    /// `kv_workers` for each of [`STATES`], looked up once (workers change state on every unit).
    by_state: [prometheus::IntGauge; 5],
    failures: IntCounterVec,
}

impl SupervisorMetrics {
    fn gauge(&self, state: &str) -> &prometheus::IntGauge {
        let index = STATES.iter().position(|s| *s == state).unwrap_or(0);
        &self.by_state[index]
    }
}

/// Starts, watches and stops every background worker of a process. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    entries: Arc<Mutex<Vec<Entry>>>,
    metrics: Option<SupervisorMetrics>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    /// A supervisor without metrics (tests, tools).
    pub fn new() -> Supervisor {
        Supervisor { entries: Arc::new(Mutex::new(Vec::new())), metrics: None }
    }

    /// A supervisor exporting `kv_workers{state}` and `kv_worker_failures_total{worker}` in
    /// `registry`.
    pub fn with_metrics(registry: &Registry) -> prometheus::Result<Supervisor> {
        let states = IntGaugeVec::new(Opts::new("kv_workers", "Background workers by state"), &["state"])?;
        let failures = IntCounterVec::new(
            Opts::new("kv_worker_failures_total", "Units of background work that failed (errors and panics)"),
            &["worker"],
        )?;
        registry.register(Box::new(states.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        let by_state = STATES.map(|state| states.with_label_values(&[state]));
        Ok(Supervisor {
            entries: Arc::new(Mutex::new(Vec::new())),
            metrics: Some(SupervisorMetrics { by_state, failures }),
        })
    }

    /// Starts `worker` in `stage`. Must be called inside a tokio runtime.
    pub fn spawn<W: Worker>(&self, stage: Stage, worker: W) {
        let info = Arc::new(Mutex::new(WorkerInfo {
            name: worker.name(),
            stage,
            state: "idle",
            status: worker.status(),
            units: 0,
            failures: 0,
            last_error: None,
        }));
        if let Some(metrics) = &self.metrics {
            metrics.gauge("idle").inc();
        }
        let token = CancellationToken::new();
        let handle = tokio::spawn(drive(worker, info.clone(), token.clone(), self.metrics.clone()));
        let mut entries = self.entries.lock();
        // Forget workers that are done, so per-peer workers do not pile up.
        entries.retain(|e| {
            let done = e.info.lock().state == "done" && e.handle.as_ref().is_none_or(|h| h.is_finished());
            if let (true, Some(metrics)) = (done, &self.metrics) {
                metrics.gauge("done").dec();
            }
            !done
        });
        entries.push(Entry { info, handle: Some(handle), token });
    }

    /// Every worker's state, in start order.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.entries.lock().iter().map(|e| e.info.lock().clone()).collect()
    }

    /// Stops every worker of `stage` and waits for them until `deadline`; aborts those still
    /// running then. Returns how many had to be aborted.
    pub async fn stop(&self, stage: Stage, deadline: Instant) -> usize {
        let mut handles = Vec::new();
        for entry in self.entries.lock().iter_mut().filter(|e| e.info.lock().stage == stage) {
            entry.token.cancel();
            handles.extend(entry.handle.take().map(|h| (h, entry.info.clone())));
        }
        let mut aborted = 0;
        for (mut handle, info) in handles {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                handle.abort();
                aborted += 1;
                tracing::warn!(worker = %info.lock().name, "shutdown: worker did not stop by the deadline; aborted");
            }
            set_state(&mut info.lock(), "stopped", self.metrics.as_ref());
        }
        aborted
    }
}

/// Moves a worker to `state`, keeping `kv_workers{state}` in step.
fn set_state(info: &mut WorkerInfo, state: &'static str, metrics: Option<&SupervisorMetrics>) {
    if info.state == state {
        return;
    }
    if let Some(metrics) = metrics {
        metrics.gauge(info.state).dec();
        metrics.gauge(state).inc();
    }
    info.state = state;
}

/// One worker's loop: work, wait, retry after failures, until done or cancelled.
async fn drive<W: Worker>(
    mut worker: W,
    info: Arc<Mutex<WorkerInfo>>,
    token: CancellationToken,
    metrics: Option<SupervisorMetrics>,
) {
    // Doubling from RETRY_FIRST to RETRY_MAX, with jitter so that the workers of many nodes
    // failing together (a peer down) do not retry in step; starts over after a success.
    let schedule = || {
        ExponentialBuilder::new()
            .with_min_delay(RETRY_FIRST)
            .with_max_delay(RETRY_MAX)
            .without_max_times()
            .with_jitter()
            .build()
    };
    let mut backoff = schedule();
    let mut retry_in = RETRY_FIRST;
    let mut status_at = Instant::now();
    loop {
        set_state(&mut info.lock(), "busy", metrics.as_ref());
        let unit = AssertUnwindSafe(worker.work(&token)).catch_unwind();
        let outcome = tokio::select! {
            () = token.cancelled() => break,
            outcome = unit => outcome,
        };
        let outcome = outcome.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(format!("panicked: {message}"))
        });
        let state = {
            let mut info = info.lock();
            info.units += 1;
            let failed = outcome.is_err();
            // Before waiting (idle) or ending, always: the status must not name work that is over
            // (a join's status outlived the join, so `/admin/workers` said "joining" for ever).
            let settles = matches!(outcome, Ok(WorkerState::Idle | WorkerState::Done));
            if failed || settles || status_at.elapsed() >= STATUS_EVERY {
                info.status = worker.status();
                status_at = Instant::now();
            }
            match outcome {
                Ok(state) => {
                    backoff = schedule();
                    let name = match state {
                        WorkerState::Busy => "busy",
                        WorkerState::Idle => "idle",
                        WorkerState::Done => "done",
                    };
                    set_state(&mut info, name, metrics.as_ref());
                    Some(state)
                }
                Err(e) => {
                    info.failures += 1;
                    set_state(&mut info, "retrying", metrics.as_ref());
                    retry_in = backoff.next().unwrap_or(RETRY_MAX);
                    tracing::warn!(worker = %info.name, error = %e, ?retry_in, "background worker failed");
                    if let Some(metrics) = &metrics {
                        metrics.failures.with_label_values(&[info.name.as_str()]).inc();
                    }
                    info.last_error = Some(e);
                    None
                }
            }
        };
        match state {
            Some(WorkerState::Busy) => tokio::task::yield_now().await,
            Some(WorkerState::Idle) => {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = worker.wait_for_work() => {}
                }
            }
            Some(WorkerState::Done) => return,
            None => {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
    set_state(&mut info.lock(), "stopped", metrics.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails on its first two units, panics on the third, then counts to `until` and is done.
    struct Flaky {
        units: Arc<AtomicU32>,
        until: u32,
    }

    impl Worker for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn status(&self) -> String {
            format!("{} units", self.units.load(Ordering::SeqCst))
        }
        async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
            let n = self.units.fetch_add(1, Ordering::SeqCst) + 1;
            match n {
                1 | 2 => Err(format!("failure {n}")),
                3 => panic!("boom"),
                n if n >= self.until => Ok(WorkerState::Done),
                _ => Ok(WorkerState::Idle),
            }
        }
        async fn wait_for_work(&mut self) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_and_panics_are_retried_and_reported() {
        let registry = Registry::new();
        let supervisor = Supervisor::with_metrics(&registry).unwrap();
        let units = Arc::new(AtomicU32::new(0));
        supervisor.spawn(Stage::Upkeep, Flaky { units: units.clone(), until: 5 });
        tokio::time::sleep(Duration::from_secs(60)).await;
        let workers = supervisor.workers();
        assert_eq!(workers.len(), 1);
        let w = &workers[0];
        assert_eq!((w.state, w.units, w.failures), ("done", 5, 3), "{w:?}");
        assert_eq!(w.last_error.as_deref(), Some("panicked: boom"));
        assert_eq!(w.status, "5 units");
        let text = format!("{:?}", registry.gather());
        assert!(text.contains("kv_worker_failures_total"), "{text}");
        let metrics = supervisor.metrics.as_ref().unwrap();
        let count = |state: &str| metrics.gauge(state).get();
        assert_eq!((count("done"), count("idle"), count("busy"), count("retrying")), (1, 0, 0, 0));
    }

    /// Busy for two units ("joining"), then idle for ever ("idle"): a join, then nothing.
    struct Joins {
        units: u32,
    }

    impl Worker for Joins {
        fn name(&self) -> String {
            "joins".into()
        }
        fn status(&self) -> String {
            (if self.units < 2 { "joining" } else { "idle" }).into()
        }
        async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
            self.units += 1;
            Ok(if self.units < 2 { WorkerState::Busy } else { WorkerState::Idle })
        }
        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await
        }
    }

    /// The status refresh is rate-limited for busy workers, but a worker that goes idle shows
    /// its status of then: `/admin/workers` said "joining" for ever after a join.
    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_shows_its_status_of_then() {
        let supervisor = Supervisor::new();
        supervisor.spawn(Stage::Upkeep, Joins { units: 0 });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let w = &supervisor.workers()[0];
        assert_eq!((w.state, w.units, w.status.as_str()), ("idle", 2, "idle"), "{w:?}");
    }

    /// Idle until stopped.
    struct Quiet;

    impl Worker for Quiet {
        fn name(&self) -> String {
            "quiet".into()
        }
        async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
            Ok(WorkerState::Idle)
        }
        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_goes_stage_by_stage() {
        let supervisor = Supervisor::new();
        supervisor.spawn(Stage::Upkeep, Quiet);
        supervisor.spawn(Stage::Membership, Quiet);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(supervisor.stop(Stage::Upkeep, deadline).await, 0);
        let states: Vec<_> = supervisor.workers().into_iter().map(|w| (w.name, w.state)).collect();
        assert_eq!(states[0], ("quiet".to_owned(), "stopped"));
        assert_ne!(states[1].1, "stopped", "the later stage keeps running");
        supervisor.stop(Stage::Membership, deadline).await;
        assert!(supervisor.workers().iter().all(|w| w.state == "stopped"));
    }
}

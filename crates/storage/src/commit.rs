//! Group commit: when a write may be acknowledged.
//!
//! With [`SyncMode::Batch`] the first writer that needs durability becomes the *leader*: it
//! notes how many writes have completed, runs one fsync, and then marks all of them durable.
//! Writers that arrive while a sync runs wait and are covered by the *next* sync, which starts
//! as soon as the current one ends (eager: no timer). So every write is acknowledged only after
//! an fsync that started after the write completed, one writer alone pays one fsync (~0.1 ms
//! here), and under load one fsync covers everyone who queued during the previous one.

use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::metrics::StorageMetrics;
use crate::{Error, Result, SyncMode};

#[derive(Default)]
struct State {
    /// Writes completed (handed to the backend) so far.
    written: u64,
    /// Highest write number known durable.
    synced: u64,
    /// Whether a leader is running an fsync now.
    syncing: bool,
    /// Set forever after an fsync failure.
    failed: Option<String>,
}

/// Decides when writes are durable and runs the fsyncs.
pub(crate) struct GroupCommit {
    mode: SyncMode,
    state: Mutex<State>,
    done: Condvar,
}

impl GroupCommit {
    pub(crate) fn new(mode: SyncMode) -> Self {
        GroupCommit { mode, state: Mutex::new(State::default()), done: Condvar::new() }
    }

    /// Refuses writes after a failed fsync.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.state.lock().failed {
            Some(reason) => Err(Error::SyncFailed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Records that a write has completed; returns its ticket for [`GroupCommit::wait`].
    pub(crate) fn written(&self) -> u64 {
        let mut state = self.state.lock();
        state.written += 1;
        state.written
    }

    /// The ticket of the latest completed write (for callers that wrote nothing but must not
    /// acknowledge before what they read is durable).
    pub(crate) fn latest(&self) -> u64 {
        self.state.lock().written
    }

    /// Blocks until write `ticket` is durable under the configured mode.
    pub(crate) fn wait(&self, ticket: u64, metrics: &StorageMetrics, sync: impl Fn() -> Result<()>) -> Result<()> {
        match self.mode {
            SyncMode::None => Ok(()),
            SyncMode::Always => {
                self.check()?;
                self.run_sync(1, metrics, &sync)
            }
            SyncMode::Batch => self.wait_batched(ticket, metrics, &sync),
        }
    }

    fn wait_batched(&self, ticket: u64, metrics: &StorageMetrics, sync: &impl Fn() -> Result<()>) -> Result<()> {
        let mut state = self.state.lock();
        loop {
            if let Some(reason) = &state.failed {
                return Err(Error::SyncFailed(reason.clone()));
            }
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                self.done.wait(&mut state);
                continue;
            }
            // Become the leader: everything written so far is covered by this sync.
            state.syncing = true;
            let target = state.written;
            let batch = target - state.synced;
            drop(state);
            let result = self.run_sync(batch, metrics, sync);
            state = self.state.lock();
            state.syncing = false;
            match result {
                Ok(()) => state.synced = state.synced.max(target),
                Err(e) => state.failed = Some(e.to_string()),
            }
            self.done.notify_all();
        }
    }

    fn run_sync(&self, batch: u64, metrics: &StorageMetrics, sync: &impl Fn() -> Result<()>) -> Result<()> {
        let started = Instant::now();
        let result = sync();
        metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        metrics.group_commit_writes.observe(batch as f64);
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync failed; refusing further writes");
            if self.mode == SyncMode::Always {
                self.state.lock().failed = Some(e.to_string());
            }
        }
        result
    }
}

//! The ownership watcher: the replica's view of what it owns follows every topology.

use std::sync::Arc;

use kv_membership::Membership;
use kv_replica::ownership::Ownership;
use kv_worker::{Worker, WorkerState};
use tokio_util::sync::CancellationToken;

/// Worker: rebuilds the replica's ownership view whenever membership publishes a new
/// topology ([`Ownership::update`]).
pub struct OwnershipWatcher {
    membership: Arc<Membership>,
    ownership: Arc<Ownership>,
    topology: tokio::sync::watch::Receiver<Arc<kv_coordinator::Topology>>,
    updates: u64,
}

impl OwnershipWatcher {
    /// A watcher that applies the current topology first (one published between start-up and
    /// now is not missed), then every new one.
    pub fn new(membership: Arc<Membership>, ownership: Arc<Ownership>) -> Self {
        let mut topology = membership.subscribe();
        topology.mark_changed();
        OwnershipWatcher { membership, ownership, topology, updates: 0 }
    }
}

impl Worker for OwnershipWatcher {
    fn name(&self) -> String {
        "ownership".into()
    }

    fn status(&self) -> String {
        format!("{} topology updates applied; {} members", self.updates, self.membership.states().len())
    }

    async fn work(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState, String> {
        if !self.topology.has_changed().map_err(|e| e.to_string())? {
            return Ok(WorkerState::Idle);
        }
        let current = self.topology.borrow_and_update().clone();
        let ownership = self.ownership.clone();
        let applied = match tokio::task::spawn_blocking(move || ownership.update(&current)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot update the ownership view: {e}")),
            Err(e) => Err(format!("ownership update task failed: {e}")),
        };
        if applied.is_err() {
            // Not applied: the supervisor's retry must apply it, not wait for the next change.
            self.topology.mark_changed();
        }
        applied?;
        self.updates += 1;
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) {
        if self.topology.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.topology.mark_changed();
    }
}

//! The node's replica client: calls to itself go straight to its storage (through a local
//! batcher, so one blocking task and one fsync serve many calls), others over the peer
//! transport ([`kv_transport::HttpReplicaClient`]).

use std::sync::Arc;

use kv_coordinator::batch::{Batcher, SendBatch};
use kv_coordinator::wire::{Call, Reply};
use kv_coordinator::{BoxFuture, CallPeer, Peer, ReplicaError};
use kv_transport::HttpReplicaClient;
use kv_worker::{Stage, Supervisor};
use prometheus::Histogram;

use crate::replica::Replica;

/// Calls to this node's own replica take a shortcut; the rest go to the peer transport.
pub struct NodeReplicaClient {
    local: (Replica, Batcher),
    remote: Arc<HttpReplicaClient>,
}

impl NodeReplicaClient {
    /// A client for the node of `replica`; its local batcher runs under `supervisor`.
    pub fn new(
        replica: Replica,
        remote: Arc<HttpReplicaClient>,
        supervisor: &Supervisor,
        batch_sizes: Option<Histogram>,
    ) -> Self {
        let target = replica.clone();
        let send: SendBatch = Arc::new(move |calls: Vec<Call>| {
            let target = target.clone();
            Box::pin(async move { Ok(target.execute(calls).await) })
        });
        let (batcher, worker) = Batcher::new("batch local".into(), send, remote.limits(), batch_sizes);
        supervisor.spawn(Stage::Transport, worker);
        NodeReplicaClient { local: (replica, batcher), remote }
    }
}

impl CallPeer for NodeReplicaClient {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(async move {
            let (replica, local) = &self.local;
            if replica.node_id() == peer.id {
                local.call(call).await
            } else {
                self.remote.call(peer, call).await
            }
        })
    }
}

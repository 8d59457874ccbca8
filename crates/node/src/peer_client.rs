//! The node's replica client: calls to itself go straight to its storage (through a local
//! batcher, so one blocking task and one fsync serve many calls), others over the peer
//! transport ([`kv_transport::HttpReplicaClient`]).

use std::sync::Arc;

use kv_coordinator::batch::{Batcher, SendBatch};
use kv_coordinator::{BoxFuture, CallPeer, Peer, ReplicaError};
use kv_proto::{Call, Reply};
use kv_transport::HttpReplicaClient;
use kv_worker::{Stage, Supervisor};
use prometheus::Histogram;

use crate::replica::Replica;

/// Calls to this node's own replica take a shortcut; the rest go to the peer transport.
pub struct NodeReplicaClient {
    /// This node's replica, and its batchers: writes (a coordinate call stores here too, rule
    /// 15 of docs/consistency.md), and reads apart, so that a read never waits for an fsync.
    local: (Replica, [Batcher; 2]),
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
        let batcher = |name: &str| {
            let target = replica.clone();
            let send: SendBatch = Arc::new(move |calls: Vec<Call>| {
                let target = target.clone();
                Box::pin(async move { Ok(target.execute_local(calls).await) })
            });
            let (batcher, worker) = Batcher::new(name.into(), send, remote.limits(), batch_sizes.clone());
            supervisor.spawn(Stage::Transport, worker);
            batcher
        };
        let batchers = [batcher("batch local"), batcher("batch local reads")];
        NodeReplicaClient { local: (replica, batchers), remote }
    }
}

impl CallPeer for NodeReplicaClient {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(async move {
            let (replica, local) = &self.local;
            if replica.node_id() == peer.id {
                local[usize::from(matches!(call, Call::Read(_)))].call(call).await
            } else {
                self.remote.call(peer, call).await
            }
        })
    }
}

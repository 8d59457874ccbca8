//! [`HttpReplicaClient`]: the coordinator's calls and range streams over the peer transport.
//!
//! Every replica call to a peer goes through that peer's [`Batcher`], sent as one
//! `POST /internal/v1/batch`; concurrent operations therefore share HTTP exchanges and the
//! peer's fsyncs (see [`kv_coordinator::batch`]). Each batcher's worker runs under the process's
//! [`Supervisor`], in [`Stage::Transport`].

use std::collections::HashMap;
use std::sync::Arc;

use kv_coordinator::batch::{BatchLimits, Batcher, SendBatch};
use kv_coordinator::{BoxFuture, CallPeer, Peer, RangeClient, ReplicaError};
use kv_proto::{Call, MerkleRequest, MerkleResponse, Reply, ScanRequest, ScanResponse, StoreBatchRequest};
use kv_worker::{Stage, Supervisor};
use parking_lot::Mutex;
use prometheus::Histogram;

use crate::client::PeerTransport;

/// Calls replicas over the peer transport, batching the calls to each peer.
pub struct HttpReplicaClient {
    transport: PeerTransport,
    supervisor: Supervisor,
    /// One queue per peer address; a handful of entries (one per member ever called).
    batchers: Mutex<HashMap<String, Arc<Batcher>>>,
    limits: BatchLimits,
    batch_sizes: Option<Histogram>,
}

impl HttpReplicaClient {
    /// A client pacing each peer by `limits`, whose batchers run under `supervisor`; batch sizes
    /// go to `batch_sizes`.
    pub fn new(
        transport: PeerTransport,
        supervisor: Supervisor,
        limits: BatchLimits,
        batch_sizes: Option<Histogram>,
    ) -> Self {
        HttpReplicaClient { transport, supervisor, batchers: Mutex::new(HashMap::new()), limits, batch_sizes }
    }

    /// How each peer is paced.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn batcher(&self, address: &str) -> Arc<Batcher> {
        let mut batchers = self.batchers.lock();
        if let Some(batcher) = batchers.get(address) {
            return batcher.clone();
        }
        let (transport, target) = (self.transport.clone(), address.to_owned());
        let send: SendBatch = Arc::new(move |calls: Vec<Call>| {
            let (transport, target) = (transport.clone(), target.clone());
            Box::pin(async move { transport.request(&target, &calls).await })
        });
        let (batcher, worker) = Batcher::new(format!("batch {address}"), send, self.limits, self.batch_sizes.clone());
        self.supervisor.spawn(Stage::Transport, worker);
        let batcher = Arc::new(batcher);
        batchers.insert(address.to_owned(), batcher.clone());
        batcher
    }
}

impl CallPeer for HttpReplicaClient {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(async move { self.batcher(&peer.address).call(call).await })
    }
}

impl RangeClient for HttpReplicaClient {
    fn scan<'a>(&'a self, peer: &'a Peer, request: ScanRequest) -> BoxFuture<'a, Result<ScanResponse, ReplicaError>> {
        Box::pin(async move { self.transport.request(&peer.address, &request).await })
    }

    fn store_batch<'a>(
        &'a self,
        peer: &'a Peer,
        request: StoreBatchRequest,
    ) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move { self.transport.request(&peer.address, &request).await })
    }

    fn merkle<'a>(
        &'a self,
        peer: &'a Peer,
        request: MerkleRequest,
    ) -> BoxFuture<'a, Result<MerkleResponse, ReplicaError>> {
        Box::pin(async move { self.transport.request(&peer.address, &request).await })
    }
}

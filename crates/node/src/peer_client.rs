//! [`ReplicaClient`] for real processes: batched HTTP to other nodes, batched direct calls to
//! this one.
//!
//! Every replica call goes through a [`Batcher`]: one per peer address for remote calls (sent as
//! one `POST /internal/v1/batch`), and one for this node's own replica (run as one blocking
//! storage task). Concurrent operations therefore share HTTP exchanges, thread hand-offs and
//! fsyncs; see [`kv_coordinator::batch`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::auth::{InternalAuth, INTERNAL_HEADER};
use kv_coordinator::batch::{Batcher, SendBatch};
use kv_coordinator::wire::{decode, encode, Call, Reply, BATCH_PATH};
use kv_coordinator::{BoxFuture, CallPeer, Peer, ReplicaError};
use parking_lot::Mutex;
use prometheus::Histogram;
use tokio::sync::Semaphore;

use crate::replica::Replica;

/// The HTTP side: pooled keep-alive connections, signed requests, a bound on requests in
/// flight. Cheap to clone (shares the pool and the bound).
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    auth: InternalAuth,
}

impl Transport {
    async fn post(&self, address: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ReplicaError> {
        let _permit = self.permits.acquire().await.map_err(|_| ReplicaError::NotSent("client closed".into()))?;
        let signature = self.auth.sign("POST", path, &body);
        let response = self
            .http
            .post(format!("http://{address}{path}"))
            .header(INTERNAL_HEADER, signature)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // A failed connection sent nothing; any later failure may have been applied.
                if e.is_connect() {
                    ReplicaError::NotSent(e.to_string())
                } else {
                    ReplicaError::Unreachable(e.to_string())
                }
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ReplicaError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        Err(ReplicaError::from_status(status.as_u16(), message))
    }
}

/// Calls replicas over their internal HTTP API with postcard bodies, on pooled keep-alive
/// connections, with at most `max_calls` requests in flight.
pub struct HttpReplicaClient {
    transport: Transport,
    /// One queue per peer address; a handful of entries (one per member ever called).
    batchers: Mutex<HashMap<String, Arc<Batcher>>>,
    batches_per_peer: usize,
    batch_sizes: Option<Histogram>,
}

impl HttpReplicaClient {
    /// A client whose requests each take at most `timeout`, with at most `batches_per_peer`
    /// batches in flight to one peer; batch sizes go to `batch_sizes`.
    pub fn new(
        timeout: Duration,
        max_calls: usize,
        batches_per_peer: usize,
        batch_sizes: Option<Histogram>,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let transport = Transport { http, permits: Arc::new(Semaphore::new(max_calls)), auth: InternalAuth };
        Ok(HttpReplicaClient { transport, batchers: Mutex::new(HashMap::new()), batches_per_peer, batch_sizes })
    }

    /// POSTs a signed internal message to `peer` and returns the answer's body.
    pub async fn post(&self, peer: &Peer, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ReplicaError> {
        self.transport.post(&peer.address, path, body).await
    }

    /// Sends `call` to `peer` in the next batch for it.
    pub async fn call(&self, peer: &Peer, call: Call) -> Result<Reply, ReplicaError> {
        let batcher = self.batcher(&peer.address);
        batcher.call(call).await
    }

    fn batcher(&self, address: &str) -> Arc<Batcher> {
        let mut batchers = self.batchers.lock();
        if let Some(batcher) = batchers.get(address) {
            return batcher.clone();
        }
        let (transport, target) = (self.transport.clone(), address.to_owned());
        let send: SendBatch = Arc::new(move |calls: Vec<Call>| {
            let (transport, target) = (transport.clone(), target.clone());
            Box::pin(async move {
                let bytes = transport.post(&target, BATCH_PATH, encode(&calls)).await?;
                decode::<Vec<Reply>>(&bytes).map_err(ReplicaError::Decode)
            })
        });
        let batcher = Arc::new(Batcher::spawn(send, self.batches_per_peer, self.batch_sizes.clone()));
        batchers.insert(address.to_owned(), batcher.clone());
        batcher
    }
}

/// The node's replica client: calls to itself go straight to its storage, others over HTTP.
pub struct NodeReplicaClient {
    local: Option<(Replica, Batcher)>,
    remote: Arc<HttpReplicaClient>,
}

impl NodeReplicaClient {
    /// A client for a node (`Some(replica)`) or a gateway (`None`). Must be called inside a
    /// tokio runtime (it starts the local batcher).
    pub fn new(local: Option<Replica>, remote: Arc<HttpReplicaClient>, batch_sizes: Option<Histogram>) -> Self {
        let local = local.map(|replica| {
            let target = replica.clone();
            let send: SendBatch = Arc::new(move |calls: Vec<Call>| {
                let target = target.clone();
                Box::pin(async move { Ok(target.execute(calls).await) })
            });
            (replica, Batcher::spawn(send, remote.batches_per_peer, batch_sizes))
        });
        NodeReplicaClient { local, remote }
    }
}

impl CallPeer for NodeReplicaClient {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(async move {
            match &self.local {
                Some((replica, local)) if replica.node_id() == peer.id => local.call(call).await,
                _ => self.remote.call(peer, call).await,
            }
        })
    }
}

//! [`ReplicaClient`] for real processes: HTTP to other nodes, direct calls to this one.

use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::auth::{InternalAuth, INTERNAL_HEADER};
use kv_coordinator::wire::{
    decode, encode, CoordinateRequest, CoordinateResponse, PurgeRequest, ReadRequest, StoreRequest, COORDINATE_PATH,
    PURGE_PATH, READ_PATH, STORE_PATH,
};
use kv_coordinator::{BoxFuture, Peer, ReplicaClient, ReplicaError, Write};
use kv_storage::{Record, Version};
use kv_vclock::{Dot, Siblings};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::replica::Replica;

/// Calls replicas over their internal HTTP API with postcard bodies, on pooled keep-alive
/// connections, with at most `max_calls` calls in flight.
pub struct HttpReplicaClient {
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    auth: InternalAuth,
}

impl HttpReplicaClient {
    /// A client whose calls each take at most `timeout`.
    pub fn new(timeout: Duration, max_calls: usize) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpReplicaClient { http, permits: Arc::new(Semaphore::new(max_calls)), auth: InternalAuth })
    }

    /// POSTs a signed internal message to `peer` and returns the answer's body.
    pub async fn post(&self, peer: &Peer, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ReplicaError> {
        let _permit = self.permits.acquire().await.map_err(|_| ReplicaError::Unreachable("client closed".into()))?;
        let signature = self.auth.sign("POST", path, &body);
        let response = self
            .http
            .post(format!("http://{}{path}", peer.address))
            .header(INTERNAL_HEADER, signature)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| ReplicaError::Unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ReplicaError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        if status.is_client_error() {
            Err(ReplicaError::Refused { status: status.as_u16(), message })
        } else {
            Err(ReplicaError::Failed { status: status.as_u16(), message })
        }
    }
}

/// The node's replica client: calls to itself go straight to its storage, others over HTTP.
pub struct NodeReplicaClient {
    local: Option<Replica>,
    remote: Arc<HttpReplicaClient>,
}

impl NodeReplicaClient {
    /// A client for a node (`Some(replica)`) or a gateway (`None`).
    pub fn new(local: Option<Replica>, remote: Arc<HttpReplicaClient>) -> Self {
        NodeReplicaClient { local, remote }
    }

    fn local_for(&self, peer: &Peer) -> Option<&Replica> {
        self.local.as_ref().filter(|r| r.node_id() == peer.id)
    }
}

fn local_error(e: ApiError) -> ReplicaError {
    ReplicaError::Failed { status: 500, message: e.to_string() }
}

fn bad_answer(e: String) -> ReplicaError {
    ReplicaError::Decode(e)
}

impl ReplicaClient for NodeReplicaClient {
    fn coordinate<'a>(
        &'a self,
        peer: &'a Peer,
        key: &'a [u8],
        write: &'a Write,
    ) -> BoxFuture<'a, Result<CoordinateResponse, ReplicaError>> {
        Box::pin(async move {
            if let Some(local) = self.local_for(peer) {
                let (record, created) = local.coordinate(key.to_vec(), write.clone()).await.map_err(local_error)?;
                return Ok(CoordinateResponse { record, created });
            }
            let body = encode(&CoordinateRequest { key: key.to_vec(), write: write.clone() });
            let bytes = self.remote.post(peer, COORDINATE_PATH, body).await?;
            let mut response: CoordinateResponse = decode(&bytes).map_err(bad_answer)?;
            // Re-establish the sibling invariant on what a peer sent.
            response.record = Siblings::from_versions(response.record.into_versions());
            Ok(response)
        })
    }

    fn store<'a>(
        &'a self,
        peer: &'a Peer,
        key: &'a [u8],
        versions: &'a [Version],
    ) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            if let Some(local) = self.local_for(peer) {
                return local.store(key.to_vec(), versions.to_vec()).await.map(drop).map_err(local_error);
            }
            let body = encode(&StoreRequest { key: key.to_vec(), versions: versions.to_vec() });
            self.remote.post(peer, STORE_PATH, body).await.map(drop)
        })
    }

    fn read<'a>(&'a self, peer: &'a Peer, key: &'a [u8]) -> BoxFuture<'a, Result<Record, ReplicaError>> {
        Box::pin(async move {
            if let Some(local) = self.local_for(peer) {
                return local.read(key.to_vec()).await.map_err(local_error);
            }
            let bytes = self.remote.post(peer, READ_PATH, encode(&ReadRequest { key: key.to_vec() })).await?;
            let versions: Vec<Version> = decode(&bytes).map_err(bad_answer)?;
            Ok(Siblings::from_versions(versions))
        })
    }

    fn purge<'a>(
        &'a self,
        peer: &'a Peer,
        key: &'a [u8],
        tombstones: &'a [Dot],
    ) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            if let Some(local) = self.local_for(peer) {
                return local.purge(key.to_vec(), tombstones.to_vec()).await.map(drop).map_err(local_error);
            }
            let body = encode(&PurgeRequest { key: key.to_vec(), tombstones: tombstones.to_vec() });
            self.remote.post(peer, PURGE_PATH, body).await.map(drop)
        })
    }
}

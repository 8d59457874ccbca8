//! What a coordinator knows of the cluster: the ring and how to reach each member.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use kv_ring::Ring;
use kv_types::{Record, Version};
use kv_vclock::Dot;

use crate::ReplicaError;
use kv_proto::{
    Call, CoordinateRequest, CoordinateResponse, HintRequest, KeyRef, MerkleRequest, MerkleResponse, PurgeRequest,
    ReadRequest, Reply, ScanRequest, ScanResponse, StoreBatchRequest, StoreRequest, Ticket, Write,
};

/// A member as the coordinator calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id.
    pub id: String,
    /// `host:port` of its API.
    pub address: String,
}

/// The rings plus member addresses. Immutable; membership publishes a new one on change.
///
/// `ring` places reads and counts write quorums: the members that own their ranges now
/// (normal, leaving and down ones). `pending` is the ring after the moves in progress (joining
/// members in, leaving ones out); while it differs, writes also go to its extra replicas so that
/// a range's new owner misses nothing written during the move.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Placement for reads and write quorums.
    pub ring: Ring,
    /// Placement once the moves in progress complete, when it differs from `ring`.
    pub pending: Option<Ring>,
    /// Address per node id.
    pub addresses: HashMap<String, String>,
    /// Members confirmed down: tried last when choosing a coordinating replica.
    pub down: HashSet<String>,
    /// Members handing their ranges off: still replicas, but they do not coordinate.
    pub leaving: HashSet<String>,
}

impl Topology {
    /// An empty cluster.
    pub fn empty() -> Topology {
        Topology::new(Ring::with_vnodes(Vec::new(), 1).expect("invariant: an empty ring is valid"), HashMap::new())
    }

    /// A topology with no moves in progress and nobody down.
    pub fn new(ring: Ring, addresses: HashMap<String, String>) -> Topology {
        Topology { ring, pending: None, addresses, down: HashSet::new(), leaving: HashSet::new() }
    }

    fn peer(&self, id: &str) -> Peer {
        Peer { id: id.to_owned(), address: self.addresses.get(id).cloned().unwrap_or_default() }
    }

    /// The replicas of `key`, in preference order.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<Peer> {
        self.preference_list_at(kv_ring::hash_key(key), n)
    }

    /// The replicas of the key at ring position `hash` ([`kv_ring::hash_key`]), in preference
    /// order: a request hashes its key once and carries the hash.
    pub fn preference_list_at(&self, hash: u64, n: usize) -> Vec<Peer> {
        self.ring.preference_list_at(hash, n).into_iter().map(|node| self.peer(&node.id)).collect()
    }

    /// The zone of member `id` (empty if unknown).
    pub fn zone(&self, id: &str) -> &str {
        self.ring.node(id).map_or("", |node| node.zone.as_str())
    }

    /// Fallbacks for `key` (sloppy quorum): the members after its first `n` replicas, clockwise
    /// from the key, that are not known down and not leaving, nearest first.
    pub fn fallbacks(&self, key: &[u8], n: usize) -> Vec<Peer> {
        self.fallbacks_at(kv_ring::hash_key(key), n)
    }

    /// [`Topology::fallbacks`] of the key at ring position `hash`.
    pub fn fallbacks_at(&self, hash: u64, n: usize) -> Vec<Peer> {
        self.ring
            .preference_list_at(hash, self.ring.nodes().len())
            .into_iter()
            .skip(n)
            .filter(|node| !self.down.contains(&node.id) && !self.leaving.contains(&node.id))
            .map(|node| self.peer(&node.id))
            .collect()
    }

    /// Replicas of `key` in the pending ring that are not among its current replicas.
    pub fn pending_replicas(&self, key: &[u8], n: usize, current: &[Peer]) -> Vec<Peer> {
        self.pending_replicas_at(kv_ring::hash_key(key), n, current)
    }

    /// [`Topology::pending_replicas`] of the key at ring position `hash`.
    pub fn pending_replicas_at(&self, hash: u64, n: usize, current: &[Peer]) -> Vec<Peer> {
        let Some(pending) = &self.pending else { return Vec::new() };
        pending
            .preference_list_at(hash, n)
            .into_iter()
            .filter(|node| !current.iter().any(|p| p.id == node.id))
            .map(|node| self.peer(&node.id))
            .collect()
    }
}

/// A boxed future, so that [`ReplicaClient`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a coordinator talks to replicas. The node implements it over HTTP (with a shortcut
/// for itself); tests implement it with slow, failing and lying replicas.
pub trait ReplicaClient: Send + Sync + 'static {
    /// Asks `peer` to create a version of `key` from `write` and store it, unless `ticket`'s
    /// deadline has passed by the time it would.
    fn coordinate<'a>(
        &'a self,
        peer: &'a Peer,
        key: KeyRef<'a>,
        write: &'a Write,
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<CoordinateResponse, ReplicaError>>;
    /// Asks `peer` to merge `versions` into its copy of `key` (durably), unless `deadline_ms`
    /// has passed by then; with `fresh`, the acknowledgement vouches that it holds the new
    /// version of a client write.
    fn store<'a>(
        &'a self,
        peer: &'a Peer,
        key: KeyRef<'a>,
        versions: &'a [Version],
        fresh: Option<&'a Dot>,
        deadline_ms: u64,
    ) -> BoxFuture<'a, Result<(), ReplicaError>>;
    /// Reads `peer`'s versions of `key`.
    fn read<'a>(&'a self, peer: &'a Peer, key: KeyRef<'a>) -> BoxFuture<'a, Result<Record, ReplicaError>>;
    /// Asks `peer` to drop `key` if its only versions are exactly `tombstones`.
    fn purge<'a>(
        &'a self,
        peer: &'a Peer,
        key: KeyRef<'a>,
        tombstones: &'a [Dot],
    ) -> BoxFuture<'a, Result<(), ReplicaError>>;
    /// Asks `peer` to keep `versions` of `key` durably for `target` (a hint) and hand them to it
    /// once it is back.
    fn hint<'a>(
        &'a self,
        peer: &'a Peer,
        target: &'a str,
        key: &'a [u8],
        versions: &'a [Version],
    ) -> BoxFuture<'a, Result<(), ReplicaError>>;
}

/// How a node streams ranges to and from its peers (joins, leaves, re-replication, hand-offs),
/// beside [`ReplicaClient`] so the same code can run over HTTP or over a simulated network.
pub trait RangeClient: Send + Sync + 'static {
    /// A page of `peer`'s records in a range of key hashes.
    fn scan<'a>(&'a self, peer: &'a Peer, request: ScanRequest) -> BoxFuture<'a, Result<ScanResponse, ReplicaError>>;
    /// Merges many keys into `peer`'s store (durably).
    fn store_batch<'a>(&'a self, peer: &'a Peer, request: StoreBatchRequest)
        -> BoxFuture<'a, Result<(), ReplicaError>>;
    /// Node values of `peer`'s segment trees (anti-entropy, and fills after their first copy).
    fn merkle<'a>(
        &'a self,
        peer: &'a Peer,
        request: MerkleRequest,
    ) -> BoxFuture<'a, Result<MerkleResponse, ReplicaError>>;
}

/// A [`ReplicaClient`] defined by how one [`Call`] reaches a peer: the node's batched HTTP
/// client, the tests' fault-injecting replicas and the model checker's network implement only
/// this, and the typed calls (and the checks on their replies) come with it.
pub trait CallPeer: Send + Sync + 'static {
    /// Sends `call` to `peer` and returns its reply.
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>>;
}

impl<T: CallPeer> ReplicaClient for T {
    fn coordinate<'a>(
        &'a self,
        peer: &'a Peer,
        key: KeyRef<'a>,
        write: &'a Write,
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<CoordinateResponse, ReplicaError>> {
        Box::pin(async move {
            let call = Call::Coordinate(CoordinateRequest::at(key.hash, key.bytes.to_vec(), write.clone(), *ticket));
            self.call(peer, call).await?.into_coordinated()
        })
    }

    fn store<'a>(
        &'a self,
        peer: &'a Peer,
        key: KeyRef<'a>,
        versions: &'a [Version],
        fresh: Option<&'a Dot>,
        deadline_ms: u64,
    ) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            let call = Call::Store(StoreRequest {
                key: key.bytes.to_vec(),
                hash: key.hash,
                versions: versions.to_vec(),
                fresh: fresh.cloned(),
                deadline_ms,
            });
            self.call(peer, call).await?.into_stored()
        })
    }

    fn read<'a>(&'a self, peer: &'a Peer, key: KeyRef<'a>) -> BoxFuture<'a, Result<Record, ReplicaError>> {
        let call = Call::Read(ReadRequest { key: key.bytes.to_vec(), hash: key.hash });
        Box::pin(async move { self.call(peer, call).await?.into_read() })
    }

    fn purge<'a>(
        &'a self,
        peer: &'a Peer,
        key: KeyRef<'a>,
        tombstones: &'a [Dot],
    ) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            let call =
                Call::Purge(PurgeRequest { key: key.bytes.to_vec(), hash: key.hash, tombstones: tombstones.to_vec() });
            self.call(peer, call).await?.into_purged()
        })
    }

    fn hint<'a>(
        &'a self,
        peer: &'a Peer,
        target: &'a str,
        key: &'a [u8],
        versions: &'a [Version],
    ) -> BoxFuture<'a, Result<(), ReplicaError>> {
        Box::pin(async move {
            let call =
                Call::Hint(HintRequest { target: target.to_owned(), key: key.to_vec(), versions: versions.to_vec() });
            self.call(peer, call).await?.into_stored()
        })
    }
}

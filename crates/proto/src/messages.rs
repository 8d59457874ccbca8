//! The internal replica protocol: messages between coordinators and replicas.
//!
//! Bodies are postcard (compact binary), not JSON: values travel as raw bytes instead of
//! base64 text, and clocks stay small. postcard is not self-describing (a field added to a
//! message breaks every reader of the old shape), so every request says the protocol version
//! its body is in (the signature header of `kv-transport`'s `Signer`), every answer is in the
//! version it was asked in, and a message that changes keeps its old shape for peers that have
//! not upgraded ([`PROTOCOL`], [`PROTOCOL_MIN`]).

use kv_types::{Record, Version};
use kv_vclock::{Dot, Siblings, VClock};
use serde::{Deserialize, Serialize};

use crate::{Refusal, ReplicaError};

/// The newest peer protocol this release speaks. A process speaks every version from
/// [`PROTOCOL_MIN`] up to this one: it accepts a request in any of them and answers in the
/// request's version, and it sends a peer the newest version both speak, learnt from the
/// [`PROTOCOL_HEADER`] of the peer's answers (a peer that has not answered yet, or answers
/// without the header, is sent [`PROTOCOL_MIN`]). So one release upgrades to the next one
/// process at a time, and back.
///
/// History: `v4` authenticates the head on its own; `v5` has the front store the new version
/// on the coordinating replica too (rule 15 of docs/consistency.md); `v6` refuses a call with
/// a typed [`Refusal`]; `v7` (release 0.2.0) carries each member's release in gossip
/// (`kv_gossip::MemberState::release`), and versions its messages.
pub const PROTOCOL: u32 = 7;

/// The oldest peer protocol this release still speaks: the previous release's.
pub const PROTOCOL_MIN: u32 = 6;

/// Response header of every answer of a peer listener: the newest protocol the process speaks.
pub const PROTOCOL_HEADER: &str = "x-kv-protocol";

/// The protocol version named `v<N>` in a signature header, if this release speaks it.
pub fn spoken_version(name: &str) -> Option<u32> {
    let version: u32 = name.strip_prefix('v')?.parse().ok()?;
    (PROTOCOL_MIN..=PROTOCOL).contains(&version).then_some(version)
}

/// What a scan refusal (a [`Refusal::NotOwner`]) says when the replica owns the range but is
/// filling it (gaining it from its other owners, as the caller is): it is not one of the owners
/// that can hold an acknowledged write the others lack, so a filler need not wait for it
/// (`kv_coordinator::plan::copies_needed_without`). Any other refusal (the source does not own the
/// range in its view: its view lags behind the caller's, or leads it) is retried, never
/// counted out: a source that has not yet learned it owns a range may be the only one that
/// holds its writes (a join completing while a removal's gainers fill).
pub const GAINING_TOO: &str = "filling it too: gaining it from its other owners";

/// Path of the batch call: many [`Call`]s (coordinate, store, read, purge) in one request,
/// answered by as many [`Reply`]s in the same order. Replica calls travel only this way: a
/// caller coalesces the calls that are queued for one peer at the moment it sends (see
/// `kv_coordinator::batch`), so under load one HTTP exchange and one fsync serve many operations.
pub const BATCH_PATH: &str = "/internal/v1/batch";

/// Most calls in one batch. A bigger batch is refused (400): it would hold one blocking
/// storage task too long. Callers send at most `kv_coordinator::batch::MAX_BATCH_CALLS`.
pub const MAX_BATCH_CALLS: usize = 1024;

/// Path of the scan call: a page of this replica's records in a range of key hashes.
pub const SCAN_PATH: &str = "/internal/v1/scan";
/// Path of the batch store call: merge many keys' versions (range hand-off).
pub const STORE_BATCH_PATH: &str = "/internal/v1/store-batch";
/// Path of the gossip exchange: send our member states, receive the peer's.
pub const GOSSIP_PATH: &str = "/internal/v1/gossip";
/// Path of the Merkle exchange: node values of the replica's segment trees (anti-entropy).
pub const MERKLE_PATH: &str = "/internal/v1/merkle";
/// Path of a node's load and transfers ([`StatusRequest`], protocol 7): `kvctl status` asks
/// one process, which asks every member.
pub const STATUS_PATH: &str = "/internal/v1/status";

/// `POST /internal/v1/status` (protocol 7): what a node holds and moves, for `/admin/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusRequest {}

/// A node's load and transfers, as `nodetool status` and `riak admin transfers` show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node_id: String,
    /// Its own membership status (`normal`, `joining`, `leaving`, ...).
    pub status: String,
    /// Stored keys, live or deleted (the engine's estimate).
    pub keys: u64,
    /// Bytes of its storage files.
    pub disk_bytes: u64,
    /// Free bytes on the filesystem of its data directory.
    pub disk_free_bytes: u64,
    /// Hints it keeps for other nodes, and their bytes.
    pub hints: u64,
    /// Encoded bytes of those hints.
    pub hint_bytes: u64,
    /// Share of the ring (0 to 1) it is gaining and has not filled yet (a join, a removal).
    pub filling_share: f64,
    /// Share of the ring it has lost and not yet handed off and dropped (a leave, a join).
    pub dropping_share: f64,
    /// What its rebalancer is doing (`/admin/workers`).
    pub rebalancer: String,
    /// What its dropper is doing.
    pub dropper: String,
    /// The transfer its rebalancer runs now, or ran last ([`HANDING_OFF`], ...).
    pub transfer: String,
    /// Ranges in that transfer.
    pub transfer_ranges: u64,
    /// Of them, those done.
    pub transfer_done: u64,
    /// Keys moved by it so far.
    pub transfer_keys: u64,
    /// Whether it stores any record at all (`keys` is the engine's estimate, metadata included):
    /// `POST /admin/restore/begin` gives no ticket while a member does (unless told to merge).
    pub holds_records: bool,
}

/// [`NodeStatus::transfer`] of a leaving node handing its ranges to their new owners; a range
/// counts done only once handed off (`kvctl leave --wait` takes it complete as left).
pub const HANDING_OFF: &str = "leaving: handing off ranges";

/// Most queries in one Merkle request.
pub const MAX_MERKLE_QUERIES: usize = 8192;

/// One question of a [`MerkleRequest`]: node values of one segment's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleQuery {
    /// First hash of the segment.
    pub lo: u64,
    /// Last hash of the segment.
    pub hi: u64,
    /// Tree level (0: the root).
    pub level: u32,
    /// Node indices at that level.
    pub indices: Vec<u32>,
}

/// `POST /internal/v1/merkle`: node values of many segment trees at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MerkleRequest {
    /// The questions, at most [`MAX_MERKLE_QUERIES`].
    pub queries: Vec<MerkleQuery>,
}

/// Answer to a [`MerkleRequest`], one per query in order: `None` when the replica holds no
/// complete copy (or no tree yet) of that segment, so it cannot be compared now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MerkleResponse {
    /// The values asked for.
    pub answers: Vec<Option<Vec<u128>>>,
}

/// `POST /internal/v1/scan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanRequest {
    /// First key hash of the range (inclusive).
    pub first_hash: u64,
    /// Last key hash of the range (inclusive).
    pub last_hash: u64,
    /// Continue after this key (the last key of the previous page).
    pub after: Option<Vec<u8>>,
    /// Most records in the answer.
    pub limit: u32,
}

/// A key and its versions, as a range moves.
pub type Entry = (Vec<u8>, Vec<Version>);

/// Answer to a scan: up to `limit` records in hash order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanResponse {
    /// The records.
    pub entries: Vec<Entry>,
    /// Whether the range is exhausted.
    pub done: bool,
}

/// A page of one ring arc for a backup (`GET /admin/backup/scan` on the admin listener), each
/// record merged from R replicas.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupPage {
    /// Records in (hash, key) order.
    pub entries: Vec<Entry>,
    /// The key to continue after; `None` once the arc is done.
    pub next: Option<Vec<u8>>,
}

/// `POST /internal/v1/store-batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreBatchRequest {
    /// Keys and versions to merge in.
    pub entries: Vec<Entry>,
    /// Set on the first page of a leaving node's hand-off of this range (`lo..=hi`).
    pub begin: Option<(u64, u64)>,
    /// Set on the last page of a leaving node's hand-off: the receiver now holds everything the
    /// sender gathered for this range (`lo..=hi`), so gaining it later, it is complete.
    pub complete: Option<(u64, u64)>,
    /// Wall-clock ms after which the receiver must not apply the batch (0: none). Anti-entropy
    /// sets it to one replica timeout after it read the versions it sends, so that a stalled
    /// exchange cannot land a version after the tombstone collector's second look (which comes
    /// two replica timeouts after a first look that saw every replica holding the tombstone).
    pub deadline_ms: u64,
}

/// A key and its ring position: the front hashes a key once ([`kv_ring::hash_key`]) and the
/// hash travels with every call about it (TiKV and Cassandra carry the token the same way).
/// A replica hashes the key once too and refuses a call whose hash differs (`Malformed`): a
/// sender that places keys differently, by a bug or another hash function, is refused rather
/// than served from another ring position; its ownership check, storage key, lock stripe and
/// Merkle tree share that one hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// The key.
    pub bytes: &'a [u8],
    /// Its ring hash.
    pub hash: u64,
}

impl<'a> KeyRef<'a> {
    /// `bytes`, hashed.
    pub fn new(bytes: &'a [u8]) -> KeyRef<'a> {
        KeyRef { bytes, hash: kv_ring::hash_key(bytes) }
    }
}

/// A client's write, as the coordinator forwards it. It crosses the wire only inside a
/// [`CoordinateRequest`], without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The value (empty for a delete), shared with the versions made of it.
    pub value: bytes::Bytes,
    /// Its Content-Type.
    pub content_type: String,
    /// What the client had read; empty for a blind write.
    pub context: VClock,
    /// Whether this is a delete.
    pub tombstone: bool,
}

/// A [`Call::Coordinate`]: create a version from a client's write.
///
/// The value stays with the front: a coordinating replica stores nothing (rule 15 of
/// docs/consistency.md), so it needs only the value's length (for the sibling limits), and the
/// front puts its own copy of the value into the version it stores everywhere. On the wire the
/// write travels without its value ([`write_without_value`]); in the replica's own process (the
/// front beside it coordinates and stores in one step) it is whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinateRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Its ring hash ([`kv_ring::hash_key`]), computed once by the front.
    pub hash: u64,
    /// The write; its value is empty on a replica that got the call over the wire.
    #[serde(with = "write_without_value")]
    pub write: Write,
    /// Which client write this is, and until when it may be applied.
    pub ticket: Ticket,
    /// The value's length in bytes.
    pub value_len: u64,
}

impl CoordinateRequest {
    /// The call that asks a replica to create the version of `write` to `key`.
    pub fn new(key: Vec<u8>, write: Write, ticket: Ticket) -> CoordinateRequest {
        CoordinateRequest::at(KeyRef::new(&key).hash, key, write, ticket)
    }

    /// [`CoordinateRequest::new`] for a key whose hash is known.
    pub fn at(hash: u64, key: Vec<u8>, write: Write, ticket: Ticket) -> CoordinateRequest {
        let value_len = write.value.len() as u64;
        CoordinateRequest { key, hash, write, ticket, value_len }
    }
}

/// How a [`CoordinateRequest`]'s write travels: everything but the value.
pub mod write_without_value {
    use super::Write;
    use kv_vclock::VClock;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the content type, context and tombstone flag.
    pub fn serialize<S: Serializer>(write: &Write, serializer: S) -> Result<S::Ok, S::Error> {
        (&write.content_type, &write.context, write.tombstone).serialize(serializer)
    }

    /// Reads them back, with an empty value.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Write, D::Error> {
        let (content_type, context, tombstone) = <(String, VClock, bool)>::deserialize(deserializer)?;
        Ok(Write { value: bytes::Bytes::new(), content_type, context, tombstone })
    }
}

/// The identity and deadline of one client write, as its front sends it to a coordinating
/// replica. A front retries a write on another replica only when the first certainly did not
/// apply it, and sends the same `write_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Unique per client request: the front's random instance id and a sequence number.
    pub write_id: u128,
    /// Wall-clock ms (Unix) after which the replica must not apply the write: the front has
    /// given up on this attempt and may be retrying it elsewhere.
    pub deadline_ms: u64,
}

/// Answer to a coordinate call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinateResponse {
    /// The replica's whole sibling set after the write: what the coordinator replicates. It
    /// holds the created version: the value crosses the wire once.
    pub record: Record,
    /// The dot of the version this write created (or of the identical one it reused), which
    /// `record` holds.
    pub created: Dot,
    /// Whether the replica stored `record` durably too: only a front in the replica's own
    /// process asks for that (its answer cannot be lost on the way); a remote coordinate call
    /// stores nothing (rule 15 of docs/consistency.md).
    #[serde(default)]
    pub stored: bool,
}

impl CoordinateResponse {
    /// The version created, from the sibling set.
    pub fn created_version(&self) -> Option<&Version> {
        self.record.versions().iter().find(|v| v.dot == self.created)
    }
}

/// A [`Call::Store`]: merge versions into a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Its ring hash, computed once by the front.
    pub hash: u64,
    /// Versions to merge in.
    pub versions: Vec<Version>,
    /// Set when this store replicates a client write that counts toward W: the dot of the
    /// version the write created, which the replica's acknowledgement vouches it holds.
    pub fresh: Option<Dot>,
    /// Wall-clock ms (Unix) after which the replica drops the store unapplied: its sender has
    /// given up, and a copy that old may predate a tombstone purged since (0: no deadline).
    pub deadline_ms: u64,
}

impl StoreRequest {
    /// A store of `versions` into `key`.
    pub fn new(key: Vec<u8>, versions: Vec<Version>, fresh: Option<Dot>, deadline_ms: u64) -> StoreRequest {
        StoreRequest { hash: KeyRef::new(&key).hash, key, versions, fresh, deadline_ms }
    }
}

/// A [`Call::Read`]: a replica's versions of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Its ring hash, computed once by the front.
    pub hash: u64,
}

impl ReadRequest {
    /// A read of `key`.
    pub fn new(key: Vec<u8>) -> ReadRequest {
        ReadRequest { hash: KeyRef::new(&key).hash, key }
    }
}

/// A [`Call::Purge`]: drop a key whose only versions are old tombstones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Its ring hash, computed once by the front.
    pub hash: u64,
    /// The tombstones the caller saw on every replica; the key is dropped only if they are
    /// still its only versions.
    pub tombstones: Vec<Dot>,
}

impl PurgeRequest {
    /// A purge of `key` if its only versions are `tombstones`.
    pub fn new(key: Vec<u8>, tombstones: Vec<Dot>) -> PurgeRequest {
        PurgeRequest { hash: KeyRef::new(&key).hash, key, tombstones }
    }
}

/// A [`Call::Hint`]: keep versions of a key for another replica that could not take them now
/// (a fallback of a sloppy quorum), and hand them over once it is back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HintRequest {
    /// The node the versions are for.
    pub target: String,
    /// The key.
    pub key: Vec<u8>,
    /// The versions.
    pub versions: Vec<Version>,
}

/// Bytes allowed per call and per version, beyond keys and values, when estimating a batch's
/// size: a context of 10 entries with 16-byte node ids, a dot, a content type.
pub const CALL_OVERHEAD: usize = 256;

/// One replica call inside a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Call {
    /// Create a version on this replica from a client's write and store it.
    Coordinate(CoordinateRequest),
    /// Merge versions into this replica.
    Store(StoreRequest),
    /// This replica's versions of a key.
    Read(ReadRequest),
    /// Drop a key whose only versions are the given tombstones.
    Purge(PurgeRequest),
    /// Keep versions durably for another replica (a hint).
    Hint(HintRequest),
}

impl Call {
    /// The ring hash of the call's key, as its sender computed it ([`kv_ring::hash_key`];
    /// `None` for a hint, which is not placed by it).
    pub fn hash(&self) -> Option<u64> {
        match self {
            Call::Coordinate(c) => Some(c.hash),
            Call::Store(c) => Some(c.hash),
            Call::Read(c) => Some(c.hash),
            Call::Purge(c) => Some(c.hash),
            Call::Hint(_) => None,
        }
    }

    /// The key the call is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Call::Coordinate(c) => &c.key,
            Call::Store(c) => &c.key,
            Call::Read(c) => &c.key,
            Call::Purge(c) => &c.key,
            Call::Hint(c) => &c.key,
        }
    }

    /// An upper estimate of the bytes the call takes on the wire (to bound a batch's size):
    /// key and values, plus [`CALL_OVERHEAD`] per version for dots, clocks and content types.
    pub fn weight(&self) -> usize {
        let values = match self {
            // Over the wire the value stays behind, but a node's own batcher passes it along:
            // an upper estimate counts it.
            Call::Coordinate(c) => c.write.value.len() + CALL_OVERHEAD,
            Call::Store(c) => c.versions.iter().map(|v| v.value.len() + CALL_OVERHEAD).sum(),
            Call::Hint(c) => c.target.len() + c.versions.iter().map(|v| v.value.len() + CALL_OVERHEAD).sum::<usize>(),
            Call::Read(_) | Call::Purge(_) => 0,
        };
        self.key().len() + values + CALL_OVERHEAD
    }
}

/// The answer to one [`Call`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// A coordinate call succeeded.
    Coordinated(CoordinateResponse),
    /// A store call is durable.
    Stored,
    /// A read's versions.
    Read(Vec<Version>),
    /// A purge call ran (whether or not the key was still purgeable).
    Purged,
    /// The replica did not do the call, and says why.
    Refused(Refusal),
}

impl Reply {
    fn unexpected(self, wanted: &str) -> ReplicaError {
        match self {
            Reply::Refused(refusal) => ReplicaError::Refused(refusal),
            other => {
                let kind = match other {
                    Reply::Coordinated(_) => "coordinated",
                    Reply::Stored => "stored",
                    Reply::Read(_) => "read",
                    Reply::Purged => "purged",
                    Reply::Refused(_) => "refused",
                };
                ReplicaError::Decode(format!("reply {kind:?} does not answer a {wanted} call"))
            }
        }
    }

    /// The answer to a coordinate call, with the sibling invariant re-established on what the
    /// replica sent.
    pub fn into_coordinated(self) -> Result<CoordinateResponse, ReplicaError> {
        match self {
            Reply::Coordinated(mut response) => {
                response.record = Siblings::from_versions(response.record.into_versions());
                if response.created_version().is_none() {
                    return Err(ReplicaError::Decode("the sibling set answered lacks the version created".into()));
                }
                Ok(response)
            }
            other => Err(other.unexpected("coordinate")),
        }
    }

    /// The answer to a store call.
    pub fn into_stored(self) -> Result<(), ReplicaError> {
        match self {
            Reply::Stored => Ok(()),
            other => Err(other.unexpected("store")),
        }
    }

    /// The answer to a read call, as a sibling set.
    pub fn into_read(self) -> Result<Record, ReplicaError> {
        match self {
            Reply::Read(versions) => Ok(Siblings::from_versions(versions)),
            other => Err(other.unexpected("read")),
        }
    }

    /// The answer to a purge call.
    pub fn into_purged(self) -> Result<(), ReplicaError> {
        match self {
            Reply::Purged => Ok(()),
            other => Err(other.unexpected("purge")),
        }
    }
}

/// Encodes a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising plain owned data into a Vec cannot fail.
    postcard::to_stdvec(message).unwrap_or_default()
}

/// Decodes a message, refusing trailing bytes.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(format!("{} trailing bytes", rest.len()))
    }
}

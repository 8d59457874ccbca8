//! The internal replica protocol: messages between coordinators and replicas.
//!
//! Bodies are postcard (compact binary), not JSON: values travel as raw bytes instead of
//! base64 text, and clocks stay small. Every message type is versioned by the URL prefix
//! (`/internal/v1/...`) and by the signature header of `kv-transport`'s `Signer`, so a node refuses a peer
//! speaking another version instead of misreading it.

use kv_types::{Record, Version};

use crate::ReplicaError;
use kv_vclock::{Dot, Siblings, VClock, Versioned, DEFAULT_MAX_ENTRIES};
use serde::{Deserialize, Serialize};

/// Status of a refusal because the key's range is not this replica's (HTTP 421 Misdirected).
pub const MISDIRECTED: u16 = 421;

/// Status of a coordinate call refused because its deadline passed (HTTP 504: the front has
/// given up on it). The write was certainly not applied.
pub const TOO_LATE: u16 = 504;

/// Status of a coordinate call whose context names an event of this replica's actor that never
/// happened (a counter above all it has issued): a forged or corrupted context (HTTP 422).
pub const IMPOSSIBLE_CONTEXT: u16 = 422;

/// What a scan refusal (a [`MISDIRECTED`] answer) says when the replica owns the range but is
/// filling it (gaining it from its other owners, as the caller is): it is not one of the owners
/// that can hold an acknowledged write the others lack, so a filler need not wait for it
/// ([`crate::plan::copies_needed_without`]). Any other refusal (the source does not own the
/// range in its view: its view lags behind the caller's, or leads it) is retried, never
/// counted out: a source that has not yet learned it owns a range may be the only one that
/// holds its writes (a join completing while a removal's gainers fill).
pub const GAINING_TOO: &str = "filling it too: gaining it from its other owners";

/// Status of a coordinate call refused because a version of the key this replica created is
/// still on its way to its own copy (HTTP 425 Too Early; rule 15 of docs/consistency.md):
/// certainly nothing was created; ask again shortly, or ask another replica.
pub const OUTSTANDING: u16 = 425;

/// Status of a coordinate call from a front in the replica's own process whose store of the
/// new version failed (508): the version may be held there, so the front must not create
/// another elsewhere (rule 6); the client gets an error.
pub const STORE_FAILED: u16 = 508;

/// Status of a write refused because the replica would not keep the version it vouches for.
pub const NOT_KEPT: u16 = 500;

/// Status of a coordinate call refused because the key already holds `--max-siblings`
/// siblings and the write would add one (HTTP 409): certainly not applied; the client must
/// resolve the siblings (read, then write with the context).
pub const TOO_MANY_SIBLINGS: u16 = 409;

/// Path of the batch call: many [`Call`]s (coordinate, store, read, purge) in one request,
/// answered by as many [`Reply`]s in the same order. Replica calls travel only this way: a
/// caller coalesces the calls that are queued for one peer at the moment it sends (see
/// [`crate::batch`]), so under load one HTTP exchange and one fsync serve many operations.
pub const BATCH_PATH: &str = "/internal/v1/batch";

/// Most calls in one batch. A bigger batch is refused (400): it would hold one blocking
/// storage task too long. Callers send at most [`crate::batch::MAX_BATCH_CALLS`].
pub const MAX_BATCH_CALLS: usize = 1024;

/// Path of the scan call: a page of this replica's records in a range of key hashes.
pub const SCAN_PATH: &str = "/internal/v1/scan";
/// Path of the batch store call: merge many keys' versions (range hand-off).
pub const STORE_BATCH_PATH: &str = "/internal/v1/store-batch";
/// Path of the gossip exchange: send our member states, receive the peer's.
pub const GOSSIP_PATH: &str = "/internal/v1/gossip";
/// Path of the Merkle exchange: node values of the replica's segment trees (anti-entropy).
pub const MERKLE_PATH: &str = "/internal/v1/merkle";

/// Status of a hint refused because the receiver keeps no more hints for its target (HTTP 507
/// Insufficient Storage): the write is not held for that owner here.
pub const HINTS_FULL: u16 = 507;

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

/// A client's write, as the coordinator forwards it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// Its Content-Type.
    pub content_type: String,
    /// What the client had read; empty for a blind write.
    pub context: VClock,
    /// Whether this is a delete.
    pub tombstone: bool,
}

/// A [`Call::Coordinate`]: create a version from a client's write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinateRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The write.
    pub write: Write,
    /// Which client write this is, and until when it may be applied.
    pub ticket: Ticket,
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
    /// The replica's whole sibling set after the write: what the coordinator replicates.
    pub record: Record,
    /// The version this write created (or the identical one it reused).
    pub created: Version,
    /// Whether the replica stored `record` durably too: only a front in the replica's own
    /// process asks for that (its answer cannot be lost on the way); a remote coordinate call
    /// stores nothing (rule 15 of docs/consistency.md).
    #[serde(default)]
    pub stored: bool,
}

/// A [`Call::Store`]: merge versions into a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreRequest {
    /// The key.
    pub key: Vec<u8>,
    /// Versions to merge in.
    pub versions: Vec<Version>,
    /// Set when this store replicates a client write that counts toward W: the dot of the
    /// version the write created, which the replica's acknowledgement vouches it holds.
    pub fresh: Option<Dot>,
    /// Wall-clock ms (Unix) after which the replica drops the store unapplied: its sender has
    /// given up, and a copy that old may predate a tombstone purged since (0: no deadline).
    pub deadline_ms: u64,
}

/// A [`Call::Read`]: a replica's versions of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The key.
    pub key: Vec<u8>,
}

/// A [`Call::Purge`]: drop a key whose only versions are old tombstones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The tombstones the caller saw on every replica; the key is dropped only if they are
    /// still its only versions.
    pub tombstones: Vec<Dot>,
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
    /// The call failed; `status` is what the HTTP status of a single call would have been
    /// (4xx: the call itself is wrong, 5xx: the replica could not do it now).
    Failed {
        /// HTTP-style status.
        status: u16,
        /// Why.
        message: String,
    },
}

impl Reply {
    fn unexpected(self, wanted: &str) -> ReplicaError {
        match self {
            Reply::Failed { status, message } => ReplicaError::from_status(status, message),
            other => {
                let kind = match other {
                    Reply::Coordinated(_) => "coordinated",
                    Reply::Stored => "stored",
                    Reply::Read(_) => "read",
                    Reply::Purged => "purged",
                    Reply::Failed { .. } => "failed",
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

/// The version of the same client write (`write_id`) already in `current`, which this write
/// must reuse instead of creating a second version of itself (the same request reaching this
/// replica again). Only the write id identifies a write: two writes with the same value and
/// context are two writes (a later blind write of a value equal to a superseded one must not be
/// swallowed by it).
pub fn reusable(current: &Record, write_id: u128) -> Option<Version> {
    if write_id == 0 {
        return None;
    }
    current.versions().iter().find(|v| v.write_id == write_id).cloned()
}

/// The counter a new dot of `actor` must exceed on top of `current`: every dot of `actor` the
/// key's stored versions carry. The store's own counter is above all it ever issued
/// (`kv_storage::Engine::issue_counter`); this floor only matters when the store forgot (a
/// restored copy). Contexts never move the counter: they come from clients, and a forged one
/// could exhaust it.
pub fn counter_floor(actor: &str, current: &Record) -> u64 {
    current.versions().iter().filter(|v| v.dot.node == actor).map(|v| v.dot.counter).max().unwrap_or(0)
}

/// The version a write coordinated by `actor` creates, with the dot counter the store issued.
pub fn new_version(actor: &str, counter: u64, write: &Write, write_id: u128, now_ms: u64) -> Version {
    Version {
        dot: Dot { node: actor.to_owned(), counter, timestamp: now_ms },
        context: pruned_context(write),
        value: write.value.clone(),
        content_type: write.content_type.clone(),
        tombstone: write.tombstone,
        written_at: now_ms,
        write_id,
    }
}

fn pruned_context(write: &Write) -> VClock {
    let mut context = write.context.clone();
    context.prune(DEFAULT_MAX_ENTRIES, None);
    context
}

/// Whether `replica` lacks something `merged` has (a stale or missing replica to repair).
pub fn is_stale(replica: &Record, merged: &Record) -> bool {
    merged.versions().iter().any(|m| !replica.versions().iter().any(|r| r.dot() == m.dot()))
}

/// Merges replica answers into one sibling set.
pub fn merge_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Record {
    let mut merged = Siblings::new();
    for record in records {
        merged.merge(record.versions().iter().cloned());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(value: &str, context: &VClock) -> Write {
        Write { value: value.into(), content_type: "text/plain".into(), context: context.clone(), tombstone: false }
    }

    fn version(record: &Record, write: &Write, write_id: u128, counter: u64) -> Version {
        reusable(record, write_id).unwrap_or_else(|| new_version("n1", counter, write, write_id, 1))
    }

    #[test]
    fn only_the_same_write_reuses_a_version() {
        let mut record = Record::new();
        let first = version(&record, &write("v", &VClock::new()), 7, 1);
        record.insert(first.clone());
        // The same write id (the same request again) reuses it; the same content is a new write.
        assert_eq!(version(&record, &write("other", &VClock::new()), 7, 3), first);
        let again = version(&record, &write("v", &VClock::new()), 8, 2);
        assert_ne!(again.dot, first.dot);
        assert!(record.insert(again));
        assert_eq!(record.len(), 2);
        // The floor is what the stored dots carry, never a context.
        let mut context = VClock::new();
        context.set("n1", 1_000, 1);
        record.insert(version(&record, &write("w", &context), 9, 4));
        assert_eq!(counter_floor("n1", &record), 4);
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let request = StoreRequest { key: b"k".to_vec(), versions: vec![], fresh: None, deadline_ms: 0 };
        let bytes = encode(&request);
        let back: StoreRequest = decode(&bytes).unwrap();
        assert_eq!(back.key, b"k");
        assert!(decode::<StoreRequest>(&[0xff, 0xff, 0xff]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<StoreRequest>(&long).is_err());
    }

    #[test]
    fn stale_means_missing_a_merged_version() {
        let mut full = Record::new();
        full.insert(new_version("n1", 1, &write("a", &VClock::new()), 1, 1));
        assert!(is_stale(&Record::new(), &full));
        assert!(!is_stale(&full, &full));
    }
}

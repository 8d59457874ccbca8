//! [`HintStore`]: durable hints for hinted handoff.
//!
//! When a replica of a key is down, a write can be kept by a fallback node instead (Dynamo
//! §4.6, sloppy quorum) together with a *hint* naming the intended owner; the fallback hands
//! the versions to the owner once it is back. A hint the fallback acknowledged is a promise like
//! any other write, so hints are:
//!
//! - **durable**: kept in their own keyspace of the node's database ([`HINTS_SPACE`], never seen
//!   by a scan of the records) and synced before [`HintStore::add`] returns;
//! - **bounded** per target, in bytes and in age ([`HintLimits`]): a hint beyond the byte bound
//!   is refused ([`Added::Full`]) and one past the age bound is dropped by
//!   [`HintStore::expire`], which says how many per target, so that the caller marks the ranges
//!   dirty for anti-entropy instead of losing track of them (the failure mode Riak and Cassandra
//!   operators report: hints that fill disks, or silently expire);
//! - **removed only when delivered**: the dispatcher deletes a hint ([`HintStore::remove`]) after
//!   the owner has durably merged it, never before.
//!
//! A hint is stored under `len(target) ++ target ++ seq` (big-endian): each target's hints are one
//! contiguous range, oldest first, so delivery pages through them in order. The sequence number
//! only rises within the store; an in-memory index of each target's hints (sequence, age, size)
//! is rebuilt from the keyspace at open.

use std::collections::BTreeMap;

use kv_types::Version;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::{Error, Result};

/// Name of the keyspace holding hints, beside the records.
pub const HINTS_SPACE: &str = "hints";

/// Longest target id (a node id is 1 to 64 bytes).
pub const MAX_TARGET_BYTES: usize = 255;

/// How much a store keeps for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintLimits {
    /// Encoded bytes of hints kept per target; a hint that would exceed it is refused.
    pub max_bytes_per_target: u64,
    /// Hints older than this (ms) are dropped by [`HintStore::expire`].
    pub max_age_ms: u64,
}

/// Versions of one key a fallback keeps for its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// The key.
    pub key: Vec<u8>,
    /// Its versions, as the fallback holds them (merged into the owner's on delivery).
    pub versions: Vec<Version>,
    /// Wall-clock ms when the hint was taken.
    pub created_ms: u64,
}

/// What became of a hint given to [`HintStore::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Stored durably under this sequence number.
    Stored(u64),
    /// Not stored: the target's byte bound is reached. The caller must not count the write as
    /// held for the target (and marks its range dirty for anti-entropy).
    Full,
}

/// What a store holds for one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Hints.
    pub count: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// When the oldest was taken (ms).
    pub oldest_ms: Option<u64>,
}

/// One target's hints: sequence → (created ms, encoded bytes), and their total bytes.
#[derive(Default)]
struct TargetIndex {
    hints: BTreeMap<u64, (u64, u64)>,
    bytes: u64,
}

impl TargetIndex {
    fn insert(&mut self, seq: u64, created_ms: u64, bytes: u64) {
        if let Some((_, old)) = self.hints.insert(seq, (created_ms, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    fn remove(&mut self, seq: u64) {
        if let Some((_, bytes)) = self.hints.remove(&seq) {
            self.bytes -= bytes;
        }
    }
}

struct Index {
    targets: BTreeMap<String, TargetIndex>,
    next_seq: u64,
}

/// Durable, bounded hints per target node.
pub struct HintStore {
    space: Box<dyn Backend>,
    limits: HintLimits,
    index: Mutex<Index>,
}

fn hint_key(target: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + target.len() + 8);
    key.push(target.len() as u8);
    key.extend_from_slice(target.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The target and sequence number of a hint's key.
fn parse_key(key: &[u8]) -> Option<(String, u64)> {
    let (&len, rest) = key.split_first()?;
    let target = rest.get(..usize::from(len))?;
    let seq = rest.get(usize::from(len)..)?;
    let seq = u64::from_be_bytes(seq.try_into().ok()?);
    Some((String::from_utf8(target.to_vec()).ok()?, seq))
}

/// The format of a stored hint (a [`crate::format`] record; 0.1.0's were bare postcard of the
/// same shape).
const HINT_FORMAT: u8 = 1;

fn decode(bytes: &[u8]) -> Result<Hint> {
    crate::format::decode(bytes, HINT_FORMAT, |h: Hint| h, "hint").map_err(Error::Corrupt)
}

/// Pairs scanned per page when the index is rebuilt at open.
const OPEN_PAGE: usize = 4096;

impl HintStore {
    /// The hints in `space` (a keyspace from [`Backend::open_space`]), indexed.
    pub(crate) fn open(space: Box<dyn Backend>, limits: HintLimits) -> Result<HintStore> {
        let mut index = Index { targets: BTreeMap::new(), next_seq: 0 };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let start = after.as_deref().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            let page = space.scan(start, std::ops::Bound::Unbounded, OPEN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in &page {
                let (target, seq) = parse_key(key).ok_or_else(|| Error::Corrupt("hint key".into()))?;
                let hint = decode(value)?;
                index.targets.entry(target).or_default().insert(seq, hint.created_ms, value.len() as u64);
                index.next_seq = index.next_seq.max(seq + 1);
            }
        }
        Ok(HintStore { space, limits, index: Mutex::new(index) })
    }

    /// Stores `hints` for `target`, each unless it would take the target past its byte bound,
    /// and returns once the stored ones are durable.
    pub fn add(&self, target: &str, hints: &[Hint]) -> Result<Vec<Added>> {
        if target.is_empty() || target.len() > MAX_TARGET_BYTES {
            return Err(Error::Io(format!("hint target must be 1 to {MAX_TARGET_BYTES} bytes")));
        }
        let mut outcomes = Vec::with_capacity(hints.len());
        {
            let mut index = self.index.lock();
            for hint in hints {
                let value = crate::format::encode(HINT_FORMAT, hint);
                let held = index.targets.get(target).map_or(0, |t| t.bytes);
                if held + value.len() as u64 > self.limits.max_bytes_per_target {
                    outcomes.push(Added::Full);
                    continue;
                }
                let seq = index.next_seq;
                self.space.put(&hint_key(target, seq), &value)?;
                index.next_seq += 1;
                index.targets.entry(target.to_owned()).or_default().insert(seq, hint.created_ms, value.len() as u64);
                outcomes.push(Added::Stored(seq));
            }
        }
        if outcomes.iter().any(|o| matches!(o, Added::Stored(_))) {
            self.space.sync()?;
        }
        Ok(outcomes)
    }

    /// Up to `limit` of `target`'s hints after sequence `after`, oldest first.
    pub fn page(&self, target: &str, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Hint)>> {
        let seqs: Vec<u64> = {
            let index = self.index.lock();
            let Some(hints) = index.targets.get(target) else { return Ok(Vec::new()) };
            let from = after.map_or(0, |a| a.saturating_add(1));
            hints.hints.range(from..).take(limit).map(|(seq, _)| *seq).collect()
        };
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // Removed meanwhile by another caller: skipped.
            if let Some(bytes) = self.space.get(&hint_key(target, seq))? {
                out.push((seq, decode(&bytes)?));
            }
        }
        Ok(out)
    }

    /// Removes `target`'s hints `seqs` (delivered, or given up) and returns once that is
    /// durable.
    pub fn remove(&self, target: &str, seqs: &[u64]) -> Result<()> {
        {
            let mut index = self.index.lock();
            for &seq in seqs {
                self.space.delete(&hint_key(target, seq))?;
                if let Some(hints) = index.targets.get_mut(target) {
                    hints.remove(seq);
                }
            }
            if index.targets.get(target).is_some_and(|t| t.hints.is_empty()) {
                index.targets.remove(target);
            }
        }
        self.space.sync()
    }

    /// Every hint older than the age bound at `now_ms`, per target, with its sequence number
    /// (for [`HintStore::remove`] once the caller has done what it must with it).
    pub fn expired(&self, now_ms: u64) -> Result<BTreeMap<String, Vec<(u64, Hint)>>> {
        let mut out = BTreeMap::new();
        for (target, seqs) in self.expired_seqs(now_ms) {
            let mut hints = Vec::with_capacity(seqs.len());
            for seq in seqs {
                if let Some(bytes) = self.space.get(&hint_key(&target, seq))? {
                    hints.push((seq, decode(&bytes)?));
                }
            }
            out.insert(target, hints);
        }
        Ok(out)
    }

    /// Drops every hint older than the age bound at `now_ms`; returns their keys per target.
    pub fn expire(&self, now_ms: u64) -> Result<BTreeMap<String, Vec<Vec<u8>>>> {
        let mut dropped = BTreeMap::new();
        for (target, hints) in self.expired(now_ms)? {
            let seqs: Vec<u64> = hints.iter().map(|(seq, _)| *seq).collect();
            self.remove(&target, &seqs)?;
            dropped.insert(target, hints.into_iter().map(|(_, h)| h.key).collect());
        }
        Ok(dropped)
    }

    fn expired_seqs(&self, now_ms: u64) -> Vec<(String, Vec<u64>)> {
        let index = self.index.lock();
        index
            .targets
            .iter()
            .map(|(target, hints)| {
                let old = hints
                    .hints
                    .iter()
                    .filter(|(_, (created, _))| now_ms.saturating_sub(*created) > self.limits.max_age_ms)
                    .map(|(seq, _)| *seq)
                    .collect::<Vec<_>>();
                (target.clone(), old)
            })
            .filter(|(_, old)| !old.is_empty())
            .collect()
    }

    /// Drops every hint for `target` (it was removed from the cluster); returns how many.
    pub fn drop_target(&self, target: &str) -> Result<u64> {
        let seqs: Vec<u64> =
            self.index.lock().targets.get(target).map(|t| t.hints.keys().copied().collect()).unwrap_or_default();
        self.remove(target, &seqs)?;
        Ok(seqs.len() as u64)
    }

    /// What is held for each target.
    pub fn pending(&self) -> BTreeMap<String, Pending> {
        self.index
            .lock()
            .targets
            .iter()
            .map(|(target, hints)| {
                let pending = Pending {
                    count: hints.hints.len() as u64,
                    bytes: hints.bytes,
                    oldest_ms: hints.hints.values().map(|(created, _)| *created).min(),
                };
                (target.clone(), pending)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_targets_apart() {
        let key = hint_key("n1", 7);
        assert_eq!(parse_key(&key), Some(("n1".to_owned(), 7)));
        // "n1" and "n12" never interleave: the length comes first, so every hint of one target
        // sorts before every hint of the other and a target's hints are one contiguous range.
        assert!(hint_key("n1", u64::MAX) < hint_key("n12", 0));
        assert!(hint_key("n1", 1) < hint_key("n1", 256), "sequence numbers sort numerically");
        assert_eq!(parse_key(b"\x05ab"), None);
    }
}

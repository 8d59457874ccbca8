//! # Merkle trees for anti-entropy
//!
//! Dynamo §4.7 detects divergent replicas with one Merkle tree per key range: leaves summarise
//! the records of a bucket of key hashes, parents summarise their children, and two replicas
//! compare roots first and descend only into subtrees that differ, so that synchronising costs
//! in proportion to the difference rather than to the data.
//!
//! ## Shape
//!
//! A [`MerkleTree`] covers one interval of key hashes (ring positions, [`kv_ring`]'s XXH3-64 of
//! the key), split into `16^depth` equal buckets. **Fan-out 16**: a descent asks for 16
//! children per unequal node, few round trips (one per level) and little waste; binary trees
//! (Cassandra's) need four times the levels, wider ones send more equal siblings along with
//! each unequal one. **Depth** is chosen per tree from the keys it will hold
//! ([`depth_for`]): about [`KEYS_PER_BUCKET`] keys per leaf, so a single differing key costs the
//! exchange of a handful of keys, and the tree stays small (16 bytes per node, `16^depth × 16/15`
//! nodes: 1.1 MB at depth 4 for a range of ~500,000 keys).
//!
//! ## Values: XOR of entry digests
//!
//! Every key contributes one 128-bit *entry digest* ([`entry_digest`]: XXH3-128 of the key and a
//! summary of its versions, such as their clocks). A node's value is the XOR of the digests of
//! every key under it, as Cassandra's trees combine row hashes. XOR makes the tree
//! **incremental**: a write that changes a key's digest from `old` to `new` XORs `old ^ new` into
//! its leaf and the leaf's ancestors, `depth + 1` operations, with no scan and no rehash of
//! siblings ([`MerkleTree::update`]). The tree built by any sequence of updates equals the tree
//! built from the final contents.
//!
//! ## Guarantees
//!
//! - Equal contents (the same keys with the same digests) give equal trees, node for node.
//! - Different contents give a different leaf for every bucket whose contents differ, except
//!   with probability about 2^-128 per bucket (a digest collision, or differing digests whose XOR
//!   vanishes).
//! - [`MerkleTree::diff`] returns exactly the buckets whose values differ and compares only
//!   the children of unequal nodes: at most `1 + 16 × depth × differing buckets` nodes.
//! - Non-goal: adversarial inputs. The digests are not keyed; a peer that chose keys to cancel
//!   out could hide a difference (peers are trusted; the Security issue authenticates them).
//!
//! Pure: no I/O, no clock. The caller computes digests, applies updates as it writes, and carries
//! node values between replicas ([`MerkleTree::values`]).
//!
//! # Layout
//! - [`MerkleTree`], [`Diff`], [`entry_digest`], [`depth_for`]: all in this file.

use std::ops::RangeInclusive;

/// Children per inner node.
pub const FANOUT: usize = 16;

/// Keys per leaf bucket that [`depth_for`] aims at: few enough that a differing key drags only a
/// handful of equal ones into the exchange, many enough that trees stay small.
pub const KEYS_PER_BUCKET: u64 = 8;

/// Deepest tree [`depth_for`] chooses: 16^6 = 16.7 million leaves (268 MB), far beyond a range.
pub const MAX_DEPTH: u32 = 6;

/// The digest of one key's state: XXH3-128 of the key's length, the key, and `summary` (the
/// caller's canonical encoding of the key's versions, e.g. their clocks and tombstone flags).
pub fn entry_digest(key: &[u8], summary: &[u8]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(summary);
    hasher.digest128()
}

/// The depth giving about [`KEYS_PER_BUCKET`] keys per leaf for a tree expected to hold `keys`
/// keys, between 1 and [`MAX_DEPTH`].
pub fn depth_for(keys: u64) -> u32 {
    let mut depth = 1;
    while depth < MAX_DEPTH && (FANOUT as u64).pow(depth) * KEYS_PER_BUCKET < keys {
        depth += 1;
    }
    depth
}

/// A Merkle tree over the key hashes `lo..=hi`, `16^depth` leaf buckets.
///
/// Invariant: every node holds the XOR of the entry digests of the keys under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    lo: u64,
    hi: u64,
    depth: u32,
    /// `levels[0]` is the root (one node), `levels[depth]` the leaves.
    levels: Vec<Vec<u128>>,
}

/// What [`MerkleTree::diff`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Leaf buckets whose values differ, ascending.
    pub buckets: Vec<usize>,
    /// Nodes compared on the way (the root included).
    pub compared: usize,
}

impl MerkleTree {
    /// An empty tree over `lo..=hi` (`lo <= hi`; swapped otherwise) of the given depth (1 to
    /// [`MAX_DEPTH`], clamped).
    pub fn new(lo: u64, hi: u64, depth: u32) -> MerkleTree {
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        let depth = depth.clamp(1, MAX_DEPTH);
        let levels = (0..=depth).map(|level| vec![0u128; FANOUT.pow(level)]).collect();
        MerkleTree { lo, hi, depth, levels }
    }

    /// The key hashes it covers.
    pub fn range(&self) -> RangeInclusive<u64> {
        self.lo..=self.hi
    }

    /// Its depth: the leaves are level `depth`.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Number of leaf buckets.
    pub fn buckets(&self) -> usize {
        self.levels[self.depth as usize].len()
    }

    /// The root's value: equal for equal contents.
    pub fn root(&self) -> u128 {
        self.levels[0][0]
    }

    /// The leaf bucket of `key_hash`, or `None` outside the tree's range.
    pub fn bucket_of(&self, key_hash: u64) -> Option<usize> {
        if key_hash < self.lo || key_hash > self.hi {
            return None;
        }
        let width = u128::from(self.hi - self.lo) + 1;
        let offset = u128::from(key_hash - self.lo);
        Some((offset * self.buckets() as u128 / width) as usize)
    }

    /// The key hashes of leaf bucket `bucket`: what to scan to exchange its keys.
    pub fn bucket_range(&self, bucket: usize) -> RangeInclusive<u64> {
        let width = u128::from(self.hi - self.lo) + 1;
        let buckets = self.buckets() as u128;
        let bucket = (bucket as u128).min(buckets - 1);
        // The first hash h with h * buckets / width >= bucket: ceil(bucket * width / buckets).
        let first = |b: u128| (b * width).div_ceil(buckets);
        let start = self.lo + first(bucket) as u64;
        let end = self.lo + (first(bucket + 1) - 1) as u64;
        start..=end
    }

    /// A key's digest changed from `old` to `new` (`None`: absent before, or removed): XORs the
    /// change into its leaf and every ancestor. A key outside the range is ignored (returns
    /// false).
    pub fn update(&mut self, key_hash: u64, old: Option<u128>, new: Option<u128>) -> bool {
        let Some(mut index) = self.bucket_of(key_hash) else { return false };
        let delta = old.unwrap_or(0) ^ new.unwrap_or(0);
        for level in (0..=self.depth as usize).rev() {
            self.levels[level][index] ^= delta;
            index /= FANOUT;
        }
        true
    }

    /// Adds a key with digest `digest` (shorthand for [`MerkleTree::update`] from nothing).
    pub fn insert(&mut self, key_hash: u64, digest: u128) -> bool {
        self.update(key_hash, None, Some(digest))
    }

    /// The values of nodes `indices` of `level` (what a replica answers during a descent).
    /// Indices out of range read as 0.
    pub fn values(&self, level: u32, indices: &[usize]) -> Vec<u128> {
        let nodes = self.levels.get(level as usize).map_or(&[][..], Vec::as_slice);
        indices.iter().map(|&i| nodes.get(i).copied().unwrap_or(0)).collect()
    }

    /// The leaf buckets where this tree and another replica's differ, asking `theirs` for node
    /// values level by level (`theirs(level, indices)` answers like [`MerkleTree::values`] on the
    /// other tree, which must have the same range and depth): one call per level, each for the
    /// children of the nodes found unequal above.
    pub fn diff(&self, mut theirs: impl FnMut(u32, &[usize]) -> Vec<u128>) -> Diff {
        let mut unequal = vec![0usize];
        let mut compared = 1;
        if theirs(0, &unequal).first().copied().unwrap_or(0) == self.root() {
            return Diff { buckets: Vec::new(), compared };
        }
        for level in 1..=self.depth {
            let children: Vec<usize> =
                unequal.iter().flat_map(|&parent| parent * FANOUT..(parent + 1) * FANOUT).collect();
            let remote = theirs(level, &children);
            let local = self.values(level, &children);
            compared += children.len();
            unequal = children
                .iter()
                .zip(local.iter().zip(remote.iter().chain(std::iter::repeat(&0))))
                .filter(|(_, (mine, other))| mine != other)
                .map(|(&index, _)| index)
                .collect();
        }
        Diff { buckets: unequal, compared }
    }

    /// [`MerkleTree::diff`] against a tree in memory.
    pub fn diff_local(&self, other: &MerkleTree) -> Diff {
        self.diff(|level, indices| other.values(level, indices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn build(lo: u64, hi: u64, depth: u32, entries: &BTreeMap<u64, u128>) -> MerkleTree {
        let mut tree = MerkleTree::new(lo, hi, depth);
        for (&hash, &digest) in entries {
            tree.insert(hash, digest);
        }
        tree
    }

    #[test]
    fn buckets_partition_the_range() {
        for (lo, hi, depth) in [(0, u64::MAX, 2), (1000, 1999, 1), (5, 5, 1), (0, 16, 1), (7, 300, 2)] {
            let tree = MerkleTree::new(lo, hi, depth);
            let mut next = lo;
            for bucket in 0..tree.buckets() {
                let range = tree.bucket_range(bucket);
                if range.start() > range.end() {
                    continue; // an empty bucket of a range narrower than the leaf count
                }
                assert_eq!(*range.start(), next, "bucket {bucket} of {lo}..={hi}");
                assert_eq!(tree.bucket_of(*range.start()), Some(bucket));
                assert_eq!(tree.bucket_of(*range.end()), Some(bucket));
                next = range.end().wrapping_add(1);
            }
            assert_eq!(next, hi.wrapping_add(1));
        }
        let tree = MerkleTree::new(10, 20, 1);
        assert_eq!(tree.bucket_of(9), None);
        assert_eq!(tree.bucket_of(21), None);
    }

    #[test]
    fn depth_follows_the_expected_keys() {
        assert_eq!(depth_for(0), 1);
        assert_eq!(depth_for(128), 1);
        assert_eq!(depth_for(129), 2);
        assert_eq!(depth_for(100_000), 4);
        assert_eq!(depth_for(u64::MAX), MAX_DEPTH);
    }

    #[test]
    fn ten_differing_keys_of_100_000_cost_only_their_buckets() {
        let depth = depth_for(100_000);
        let mut a = MerkleTree::new(0, u64::MAX, depth);
        let mut b = a.clone();
        let mut changed = BTreeSet::new();
        for i in 0u64..100_000 {
            let hash = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            let digest = entry_digest(&i.to_le_bytes(), b"v1");
            a.insert(hash, digest);
            if i % 10_000 == 7 {
                b.insert(hash, entry_digest(&i.to_le_bytes(), b"v2"));
                changed.insert(a.bucket_of(hash).unwrap());
            } else {
                b.insert(hash, digest);
            }
        }
        let diff = a.diff_local(&b);
        assert_eq!(diff.buckets.iter().copied().collect::<BTreeSet<_>>(), changed);
        assert!(diff.compared <= 1 + FANOUT * depth as usize * changed.len(), "{diff:?}");
    }

    proptest! {
        /// Equal contents give equal trees; the diff names exactly the buckets whose contents
        /// differ; updates in any order give the tree built from the final contents.
        #[test]
        fn diff_finds_exactly_the_differing_buckets(
            base in proptest::collection::btree_map(any::<u64>(), any::<u128>(), 0..200),
            changes in proptest::collection::vec((any::<u64>(), proptest::option::of(any::<u128>())), 0..20),
            depth in 1u32..4,
        ) {
            let a = build(0, u64::MAX, depth, &base);
            let mut b = a.clone();
            let mut final_contents = base.clone();
            for (hash, new) in &changes {
                let old = final_contents.get(hash).copied();
                b.update(*hash, old, *new);
                match new {
                    Some(digest) => final_contents.insert(*hash, *digest),
                    None => final_contents.remove(hash),
                };
            }
            prop_assert_eq!(&b, &build(0, u64::MAX, depth, &final_contents));
            let differing: BTreeSet<usize> = base
                .keys()
                .chain(final_contents.keys())
                .filter(|h| base.get(h) != final_contents.get(h))
                .map(|h| a.bucket_of(*h).unwrap())
                .collect();
            let diff = a.diff_local(&b);
            prop_assert_eq!(diff.buckets.iter().copied().collect::<BTreeSet<_>>(), differing.clone());
            prop_assert_eq!(a.root() == b.root(), base == final_contents);
            prop_assert!(diff.compared <= 1 + FANOUT * depth as usize * differing.len().max(1));
        }
    }
}

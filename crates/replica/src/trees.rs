//! [`RangeTrees`]: one Merkle tree per ring segment a node holds, kept up to date on every write.
//!
//! A *segment* is an arc between two consecutive vnode tokens of the current ring (the one that
//! wraps past the top of the hash space is split in two): every key of a segment has the same
//! preference list, so every replica of a segment holds exactly its keys, and two replicas'
//! trees of one segment cover the same keys. Both sides build the tree with the same range and
//! [`TREE_DEPTH`], so their nodes can be compared one for one.
//!
//! **Incremental.** The trees observe the store ([`kv_storage::Engine::observe`]): every change
//! to a record, whoever made it (a client write, a stream, a repair, a purge, a drop), XORs the
//! key's old digest out of its leaf and the new one in. A segment's tree is built by one scan
//! only when the node starts to hold the segment (start-up, a ring change, a finished fill),
//! while writes wait ([`kv_storage::Engine::while_paused`]), so no change is counted twice or
//! missed.
//!
//! **Digest.** A key's entry digest covers the key and the dots of its versions (and whether
//! each is a tombstone): a dot names one version forever, so equal dot sets are equal contents.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_merkle::{entry_digest, MerkleTree};
use kv_ring::{Ring, Token};
use kv_storage::{Engine, Observer, Record};
use parking_lot::Mutex;

/// Depth of every segment's tree: 16² = 256 leaf buckets. A node holds about N × 512 segments
/// per unit of weight whatever the cluster's size (1,536 with N = 3), so the trees take
/// 273 nodes × 16 bytes × 1,536 ≈ 6.7 MB; at 100,000 keys a leaf holds well under one key, at
/// 10 million keys about 25, so a differing key drags few equal ones into an exchange. Fixed,
/// not chosen per tree from its keys, because both replicas must build the same shape and one
/// of them may hold nothing (a wiped disk).
pub const TREE_DEPTH: u32 = 2;

/// Records read per page while a tree is built.
const BUILD_PAGE: usize = 4096;

/// The segments of `ring`: arcs between consecutive tokens, as inclusive hash intervals.
pub fn segments(ring: &Ring) -> Vec<(Token, Token)> {
    let mut out = Vec::new();
    for range in ring.ranges() {
        if range.start < range.end {
            out.push((range.start + 1, range.end));
        } else {
            // The arc that wraps: (start, MAX] and [0, end].
            if range.start < Token::MAX {
                out.push((range.start + 1, Token::MAX));
            }
            out.push((0, range.end));
        }
    }
    out.sort_unstable();
    out
}

/// The digest of one key's record, `None` for no versions.
pub fn record_digest(key: &[u8], record: &Record) -> Option<u128> {
    if record.is_empty() {
        return None;
    }
    let mut dots: Vec<(&str, u64, bool)> =
        record.versions().iter().map(|v| (v.dot.node.as_str(), v.dot.counter, v.tombstone)).collect();
    dots.sort_unstable();
    let mut summary = Vec::with_capacity(dots.len() * 32);
    for (node, counter, tombstone) in dots {
        summary.extend_from_slice(&(node.len() as u32).to_le_bytes());
        summary.extend_from_slice(node.as_bytes());
        summary.extend_from_slice(&counter.to_le_bytes());
        summary.push(u8::from(tombstone));
    }
    Some(entry_digest(key, &summary))
}

/// The trees of the segments a node holds, keyed by the segment's first hash.
#[derive(Default)]
pub struct RangeTrees {
    trees: Mutex<BTreeMap<Token, MerkleTree>>,
}

impl Observer for RangeTrees {
    fn changed(&self, key: &[u8], hash: u64, old: &Record, new: &Record) {
        let mut trees = self.trees.lock();
        if let Some((_, tree)) = trees.range_mut(..=hash).next_back() {
            tree.update(hash, record_digest(key, old), record_digest(key, new));
        }
    }
}

impl RangeTrees {
    /// Trees for nothing yet; register with [`RangeTrees::attach`].
    pub fn new() -> Arc<Self> {
        Arc::new(RangeTrees::default())
    }

    /// Registers the trees as `engine`'s observer. Returns false if the engine has another.
    pub fn attach(self: &Arc<Self>, engine: &dyn Engine) -> bool {
        engine.observe(self.clone())
    }

    /// Keeps trees for exactly `wanted` (sorted segments): forgets the others and builds the
    /// missing ones from `engine`, each by one scan while writes wait. Returns how many it built.
    pub fn keep(&self, engine: &dyn Engine, wanted: &[(Token, Token)]) -> Result<usize, kv_storage::Error> {
        {
            let mut trees = self.trees.lock();
            trees.retain(|lo, tree| wanted.binary_search(&(*lo, *tree.range().end())).is_ok());
        }
        let mut built = 0;
        for &(lo, hi) in wanted {
            if self.trees.lock().contains_key(&lo) {
                continue;
            }
            let mut result = Ok(());
            engine.while_paused(&mut || {
                result = build(engine, lo, hi).map(|tree| {
                    self.trees.lock().insert(lo, tree);
                })
            });
            result?;
            built += 1;
        }
        Ok(built)
    }

    /// The values of nodes `indices` at `level` of the tree of segment `lo..=hi`, if held.
    pub fn values(&self, lo: Token, hi: Token, level: u32, indices: &[usize]) -> Option<Vec<u128>> {
        let trees = self.trees.lock();
        let tree = trees.get(&lo).filter(|t| *t.range().end() == hi)?;
        Some(tree.values(level, indices))
    }

    /// The hash interval of leaf `bucket` of segment `lo..=hi`'s tree, if held.
    pub fn bucket_range(&self, lo: Token, hi: Token, bucket: usize) -> Option<(Token, Token)> {
        let trees = self.trees.lock();
        let tree = trees.get(&lo).filter(|t| *t.range().end() == hi)?;
        let range = tree.bucket_range(bucket);
        Some((*range.start(), *range.end()))
    }

    /// Segments with a tree.
    pub fn held(&self) -> Vec<(Token, Token)> {
        self.trees.lock().values().map(|t| (*t.range().start(), *t.range().end())).collect()
    }

    /// One digest of every held segment's range and root: two replicas holding the same
    /// segments with the same contents have the same summary.
    pub fn summary(&self) -> (usize, u128) {
        let trees = self.trees.lock();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for tree in trees.values() {
            hasher.update(&tree.range().start().to_le_bytes());
            hasher.update(&tree.range().end().to_le_bytes());
            hasher.update(&tree.root().to_le_bytes());
        }
        (trees.len(), hasher.digest128())
    }

    /// A copy of the tree of segment `lo..=hi`, if held.
    pub fn tree(&self, lo: Token, hi: Token) -> Option<MerkleTree> {
        self.trees.lock().get(&lo).filter(|t| *t.range().end() == hi).cloned()
    }
}

/// The tree of `engine`'s records in `lo..=hi`, built by one scan (writes may go on meanwhile:
/// the caller then compares a tree that may lack their changes, which only ever shows more
/// differences, never fewer, as long as the store loses versions there only to versions that
/// supersede them).
pub fn build(engine: &dyn Engine, lo: Token, hi: Token) -> Result<MerkleTree, kv_storage::Error> {
    let mut tree = MerkleTree::new(lo, hi, TREE_DEPTH);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan(lo, hi, after.as_deref(), BUILD_PAGE)?;
        for (key, record) in &page {
            if let Some(digest) = record_digest(key, record) {
                tree.insert(kv_ring::hash_key(key), digest);
            }
        }
        if page.len() < BUILD_PAGE {
            return Ok(tree);
        }
        after = page.last().map(|(key, _)| key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_ring::Node;
    use kv_storage::{StorageMetrics, SyncMode, Version};
    use kv_vclock::{Dot, VClock};

    fn version(node: &str, counter: u64) -> Version {
        Version {
            dot: Dot { node: node.into(), counter, timestamp: 1 },
            context: VClock::new(),
            value: b"v".to_vec().into(),
            content_type: "t".into(),
            tombstone: false,
            written_at: 1,
            write_id: 0,
        }
    }

    #[test]
    fn segments_partition_the_hash_space() {
        let ring = Ring::with_vnodes([Node::new("a", "z"), Node::new("b", "z")], 8).unwrap();
        let segments = segments(&ring);
        assert_eq!(segments.first().unwrap().0, 0);
        assert_eq!(segments.last().unwrap().1, Token::MAX);
        for pair in segments.windows(2) {
            assert_eq!(pair[0].1 + 1, pair[1].0);
        }
        // Every key of a segment has one preference list.
        for &(lo, hi) in &segments {
            let ids = |t| ring.preference_list_at(t, 2).iter().map(|n| n.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(lo), ids(hi));
        }
    }

    /// Trees kept by observing every change equal trees built from the final contents, whatever
    /// wrote (updates, streams, purges, removals), and two stores with equal contents agree.
    #[test]
    fn observed_trees_equal_rebuilt_trees() {
        let open = || kv_storage::open_memory(1, SyncMode::None, StorageMetrics::unregistered()).unwrap();
        let (a, b) = (open(), open());
        let whole = [(0, Token::MAX / 2), (Token::MAX / 2 + 1, Token::MAX)];
        let trees = RangeTrees::new();
        assert!(trees.attach(&*a));
        assert!(!trees.attach(&*a), "one observer per store");
        trees.keep(&*a, &whole).unwrap();
        for i in 0..500u64 {
            let key = format!("k{i}").into_bytes();
            a.put_versions(&key, vec![version("x", i + 1)]).unwrap();
            b.put_versions(&key, vec![version("x", i + 1)]).unwrap();
        }
        a.put_batch(vec![(b"k1".to_vec(), vec![version("y", 9)])]).unwrap();
        b.put_versions(b"k1", vec![version("y", 9)]).unwrap();
        a.remove(&[b"k2".to_vec()]).unwrap();
        b.remove(&[b"k2".to_vec()]).unwrap();
        let rebuilt = RangeTrees::new();
        rebuilt.keep(&*b, &whole).unwrap();
        for &(lo, hi) in &whole {
            assert_eq!(trees.tree(lo, hi), rebuilt.tree(lo, hi));
        }
        // One more write on one side shows in exactly one bucket.
        a.put_versions(b"k3", vec![version("z", 1)]).unwrap();
        let differing: usize = whole
            .iter()
            .map(|&(lo, hi)| trees.tree(lo, hi).unwrap().diff_local(&rebuilt.tree(lo, hi).unwrap()).buckets.len())
            .sum();
        assert_eq!(differing, 1);
        // Forgetting a segment stops its tree; keeping it again rebuilds it from the store.
        trees.keep(&*a, &whole[..1]).unwrap();
        assert_eq!(trees.held(), vec![whole[0]]);
    }
}

//! The ring itself: members, their vnodes, preference lists and ownership shares.

use std::collections::{BTreeMap, HashSet};

use crate::{hash_key, Error, Token};

/// Vnodes per unit of weight. With 10 equal nodes, 512 vnodes each keep the most loaded node
/// within about 1.1x of the mean share (σ of a node's share ≈ 1/√512 ≈ 4.4%), which meets the
/// 1.15x balance goal with margin; 256 would leave a few-percent chance per cluster of missing it.
/// The cost is memory (16 bytes per vnode) and a longer [`crate::diff`], both small.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 512;

/// A physical member of the ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// Stable, unique id; appears in vector clocks and on the wire.
    pub id: String,
    /// Failure domain (data center, rack). Replicas spread over distinct zones first.
    pub zone: String,
    /// Relative capacity; vnode count is `weight × vnodes_per_weight`.
    pub weight: u32,
}

impl Node {
    /// A node of weight 1 in `zone`.
    pub fn new(id: impl Into<String>, zone: impl Into<String>) -> Self {
        Node { id: id.into(), zone: zone.into(), weight: 1 }
    }
}

/// A half-open arc of the ring, `(start, end]`, wrapping past `u64::MAX` when `start >= end`.
/// `start == end` is the whole ring (a single token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenRange {
    /// Exclusive lower end.
    pub start: Token,
    /// Inclusive upper end.
    pub end: Token,
}

impl TokenRange {
    /// Whether `token` lies on this arc.
    pub fn contains(&self, token: Token) -> bool {
        if self.start < self.end {
            token > self.start && token <= self.end
        } else {
            token > self.start || token <= self.end
        }
    }

    /// Number of positions on the arc, as a fraction of the whole ring.
    pub fn fraction(&self) -> f64 {
        let len = self.end.wrapping_sub(self.start);
        if len == 0 {
            1.0
        } else {
            len as f64 / 2f64.powi(64)
        }
    }

    /// The arc as at most two inclusive, non-wrapping intervals `[lo, hi]`, for range scans.
    pub fn intervals(&self) -> Vec<(Token, Token)> {
        if self.start < self.end {
            vec![(self.start + 1, self.end)]
        } else if self.start == u64::MAX {
            vec![(0, self.end)]
        } else {
            vec![(self.start + 1, u64::MAX), (0, self.end)]
        }
    }
}

/// An immutable consistent-hash ring. Build a new one when membership changes.
#[derive(Debug, Clone)]
pub struct Ring {
    nodes: Vec<Node>,
    /// Sorted by (token, node index); the index points into `nodes`.
    tokens: Vec<(Token, u32)>,
    zones: usize,
    vnodes_per_weight: u32,
}

impl Ring {
    /// Builds a ring with [`DEFAULT_VNODES_PER_WEIGHT`].
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Ring, Error> {
        Ring::with_vnodes(nodes, DEFAULT_VNODES_PER_WEIGHT)
    }

    /// Builds a ring where each node gets `weight × vnodes_per_weight` vnodes.
    pub fn with_vnodes(nodes: impl IntoIterator<Item = Node>, vnodes_per_weight: u32) -> Result<Ring, Error> {
        if vnodes_per_weight == 0 {
            return Err(Error::ZeroVnodes);
        }
        let mut nodes: Vec<Node> = nodes.into_iter().collect();
        nodes.sort();
        let mut seen = HashSet::new();
        for node in &nodes {
            if node.id.is_empty() {
                return Err(Error::EmptyId);
            }
            if node.weight == 0 {
                return Err(Error::ZeroWeight(node.id.clone()));
            }
            if !seen.insert(node.id.as_str()) {
                return Err(Error::DuplicateNode(node.id.clone()));
            }
        }
        let mut tokens = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let count = node.weight.saturating_mul(vnodes_per_weight);
            for i in 0..count {
                let token = hash_key(format!("{}#{}", node.id, i).as_bytes());
                tokens.push((token, index as u32));
            }
        }
        tokens.sort_unstable();
        let zones = nodes.iter().map(|n| n.zone.as_str()).collect::<HashSet<_>>().len();
        Ok(Ring { nodes, tokens, zones, vnodes_per_weight })
    }

    /// The members, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The member with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Number of distinct zones.
    pub fn zone_count(&self) -> usize {
        self.zones
    }

    /// Vnodes per unit of weight this ring was built with.
    pub fn vnodes_per_weight(&self) -> u32 {
        self.vnodes_per_weight
    }

    /// All vnode tokens, sorted.
    pub fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.tokens.iter().map(|(t, _)| *t)
    }

    /// Whether the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes that hold `key`, in preference order; see [`Ring::preference_list_at`].
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<&Node> {
        self.preference_list_at(hash_key(key), n)
    }

    /// The first `n` distinct nodes clockwise from `token`, choosing nodes of unused zones first
    /// until min(n, zones) zones are used, then the rest in clockwise order. Fewer than `n` when
    /// the ring has fewer members.
    pub fn preference_list_at(&self, token: Token, n: usize) -> Vec<&Node> {
        let n = n.min(self.nodes.len());
        if n == 0 {
            return Vec::new();
        }
        let target_zones = n.min(self.zones);
        let start = self.tokens.partition_point(|(t, _)| *t < token);
        let mut chosen: Vec<u32> = Vec::with_capacity(n);
        let mut seen: HashSet<u32> = HashSet::with_capacity(n * 2);
        let mut used_zones: HashSet<&str> = HashSet::with_capacity(target_zones);
        // Nodes passed over because their zone was already used, in clockwise order.
        let mut backlog: Vec<u32> = Vec::new();
        let len = self.tokens.len();
        for step in 0..len {
            let (_, index) = self.tokens[(start + step) % len];
            if !seen.insert(index) {
                continue;
            }
            let zone = self.nodes[index as usize].zone.as_str();
            if used_zones.len() < target_zones && !used_zones.contains(zone) {
                used_zones.insert(zone);
                chosen.push(index);
            } else {
                backlog.push(index);
            }
            if used_zones.len() == target_zones && chosen.len() + backlog.len() >= n {
                break;
            }
        }
        chosen.extend(backlog.into_iter().take(n - chosen.len()));
        chosen.into_iter().map(|i| &self.nodes[i as usize]).collect()
    }

    /// Every arc between consecutive vnode tokens, `(previous, token]`, with the token that ends
    /// it. Keys on one arc share a preference list. Empty for an empty ring.
    pub fn ranges(&self) -> Vec<TokenRange> {
        ranges_between(self.tokens.iter().map(|(t, _)| *t))
    }

    /// Each node's share of the ring as a primary replica (n = 1) or as any of `n` replicas
    /// (shares then sum to min(n, nodes)).
    pub fn ownership(&self, n: usize) -> BTreeMap<String, f64> {
        let mut shares: BTreeMap<String, f64> = self.nodes.iter().map(|node| (node.id.clone(), 0.0)).collect();
        for range in self.ranges() {
            for node in self.preference_list_at(range.end, n) {
                *shares.entry(node.id.clone()).or_default() += range.fraction();
            }
        }
        shares
    }
}

/// Arcs between consecutive tokens of a sorted, possibly repeating, token sequence.
pub(crate) fn ranges_between(tokens: impl Iterator<Item = Token>) -> Vec<TokenRange> {
    let mut tokens: Vec<Token> = tokens.collect();
    tokens.dedup();
    let Some(&last) = tokens.last() else {
        return Vec::new();
    };
    let mut previous = last;
    tokens
        .into_iter()
        .map(|token| {
            let range = TokenRange { start: previous, end: token };
            previous = token;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(count: usize, zones: usize) -> Vec<Node> {
        (0..count).map(|i| Node::new(format!("n{i}"), format!("z{}", i % zones.max(1)))).collect()
    }

    fn key(i: u64) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    #[test]
    fn rejects_bad_members() {
        assert_eq!(
            Ring::new(vec![Node::new("a", "z"), Node::new("a", "y")]).unwrap_err(),
            Error::DuplicateNode("a".into())
        );
        let zero = Node { id: "a".into(), zone: "z".into(), weight: 0 };
        assert_eq!(Ring::new(vec![zero]).unwrap_err(), Error::ZeroWeight("a".into()));
        assert_eq!(Ring::new(vec![Node::new("", "z")]).unwrap_err(), Error::EmptyId);
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let ring = Ring::new(Vec::new()).unwrap();
        assert!(ring.preference_list(b"k", 3).is_empty());
        assert!(ring.ranges().is_empty());
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = Ring::new(nodes(1, 1)).unwrap();
        assert_eq!(ring.preference_list(b"k", 3).len(), 1);
        let share = ring.ownership(1)["n0"];
        assert!((share - 1.0).abs() < 1e-9, "{share}");
    }

    #[test]
    fn range_contains_and_intervals_agree() {
        let wrap = TokenRange { start: u64::MAX - 5, end: 10 };
        assert!(wrap.contains(0) && wrap.contains(10) && wrap.contains(u64::MAX));
        assert!(!wrap.contains(u64::MAX - 5) && !wrap.contains(11));
        assert_eq!(wrap.intervals(), vec![(u64::MAX - 4, u64::MAX), (0, 10)]);
        let plain = TokenRange { start: 5, end: 10 };
        assert!(plain.contains(6) && !plain.contains(5));
        assert_eq!(plain.intervals(), vec![(6, 10)]);
    }

    #[test]
    fn weight_scales_share() {
        let mut members = nodes(4, 1);
        members[0].weight = 2;
        let ring = Ring::new(members).unwrap();
        let shares = ring.ownership(1);
        let heavy = shares["n0"];
        let light = (shares["n1"] + shares["n2"] + shares["n3"]) / 3.0;
        println!("weight 2 share {heavy:.3}, weight 1 mean share {light:.3}, ratio {:.2}", heavy / light);
        assert!((1.7..2.3).contains(&(heavy / light)), "ratio {}", heavy / light);
    }

    /// Figure: load of the most loaded of 10 equal nodes over 100,000 keys, default vnodes.
    #[test]
    fn figures_balance_ten_nodes() {
        let ring = Ring::new(nodes(10, 1)).unwrap();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let keys = 100_000;
        for i in 0..keys {
            *counts.entry(&ring.preference_list(&key(i), 1)[0].id).or_default() += 1;
        }
        let mean = keys as f64 / 10.0;
        let max = *counts.values().max().unwrap() as f64;
        let min = *counts.values().min().unwrap() as f64;
        println!(
            "balance: 10 nodes x {DEFAULT_VNODES_PER_WEIGHT} vnodes, {keys} keys: max/mean = {:.3}, min/mean = {:.3}",
            max / mean,
            min / mean
        );
        assert!(max / mean <= 1.15, "most loaded node holds {:.3}x the mean", max / mean);
    }

    /// Figure: adding an 11th node moves about 1/11 of keys, all of them to the new node.
    #[test]
    fn figures_adding_a_node_moves_one_eleventh() {
        let before = Ring::new(nodes(10, 1)).unwrap();
        let mut grown = nodes(10, 1);
        grown.push(Node::new("new", "z0"));
        let after = Ring::new(grown).unwrap();
        let keys = 100_000;
        let mut moved = 0;
        let mut replica_set_changed = 0;
        for i in 0..keys {
            let k = key(i);
            let old = &before.preference_list(&k, 1)[0].id;
            let new = &after.preference_list(&k, 1)[0].id;
            if old != new {
                moved += 1;
                assert_eq!(new, "new", "a key moved between two old nodes");
            }
            let old3: HashSet<&str> = before.preference_list(&k, 3).iter().map(|n| n.id.as_str()).collect();
            let new3: HashSet<&str> = after.preference_list(&k, 3).iter().map(|n| n.id.as_str()).collect();
            if old3 != new3 {
                replica_set_changed += 1;
                assert!(new3.contains("new"), "a replica set changed without gaining the new node");
                assert_eq!(old3.difference(&new3).count(), 1, "more than one replica replaced");
            }
        }
        let fraction = moved as f64 / keys as f64;
        println!(
            "adding 1 node to 10: {:.4} of keys change primary (ideal 1/11 = {:.4}); {:.4} change replica set at N=3 (ideal 3/11 = {:.4})",
            fraction,
            1.0 / 11.0,
            replica_set_changed as f64 / keys as f64,
            3.0 / 11.0
        );
        assert!((fraction - 1.0 / 11.0).abs() < 0.02, "moved {fraction}");
    }

    /// Figure: preference lists over many keys and cluster shapes hold n distinct nodes and
    /// min(n, zones) zones.
    #[test]
    fn figures_preference_lists() {
        let mut lists = 0;
        for (count, zones) in [(3, 1), (5, 2), (6, 3), (12, 3), (20, 5)] {
            let ring = Ring::new(nodes(count, zones)).unwrap();
            for n in 1..=5 {
                for i in 0..2_000 {
                    let list = ring.preference_list(&key(i), n);
                    let ids: HashSet<&str> = list.iter().map(|x| x.id.as_str()).collect();
                    let used: HashSet<&str> = list.iter().map(|x| x.zone.as_str()).collect();
                    assert_eq!((list.len(), ids.len()), (n.min(count), n.min(count)));
                    assert_eq!(used.len(), n.min(count).min(zones));
                    lists += 1;
                }
            }
        }
        println!("preference lists: {lists} lists over 5 cluster shapes, n = 1..5: all hold n distinct nodes in min(n, zones) zones");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn preference_list_is_distinct_and_spreads_zones(
            count in 1usize..20, zones in 1usize..6, n in 1usize..6, k in any::<u64>(),
        ) {
            let ring = Ring::with_vnodes(nodes(count, zones), 16).unwrap();
            let list = ring.preference_list(&k.to_be_bytes(), n);
            let ids: HashSet<&str> = list.iter().map(|node| node.id.as_str()).collect();
            prop_assert_eq!(list.len(), n.min(count));
            prop_assert_eq!(ids.len(), list.len());
            let used: HashSet<&str> = list.iter().map(|node| node.zone.as_str()).collect();
            prop_assert_eq!(used.len(), n.min(count).min(ring.zone_count()));
        }

        #[test]
        fn first_replica_is_clockwise_owner(count in 1usize..12, k in any::<u64>()) {
            let ring = Ring::with_vnodes(nodes(count, 3), 8).unwrap();
            let token = hash_key(&k.to_be_bytes());
            let owner = ring.tokens.iter().find(|(t, _)| *t >= token).unwrap_or(&ring.tokens[0]).1;
            prop_assert_eq!(&ring.preference_list(&k.to_be_bytes(), 3)[0].id, &ring.nodes[owner as usize].id);
        }
    }
}

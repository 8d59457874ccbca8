//! Ownership difference between two rings: which arcs change replicas, from whom to whom.
//!
//! Rebalancing streams exactly these arcs: for each [`RangeMove`], every node in
//! [`RangeMove::gained`] fetches the arc from a node in `old` (any old replica holds it), and
//! every node in [`RangeMove::lost`] may drop it once the move is complete.

use std::collections::BTreeSet;

use crate::ring::{ranges_between, Ring, TokenRange};

/// One arc whose replica set differs between the old and the new ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMove {
    /// The arc; adjacent arcs with the same old and new replicas are merged.
    pub range: TokenRange,
    /// Replicas in the old ring, in preference order.
    pub old: Vec<String>,
    /// Replicas in the new ring, in preference order.
    pub new: Vec<String>,
}

impl RangeMove {
    /// Nodes that must receive the arc: in `new` but not in `old`.
    pub fn gained(&self) -> Vec<&str> {
        self.new.iter().filter(|id| !self.old.contains(id)).map(String::as_str).collect()
    }

    /// Nodes that no longer hold the arc: in `old` but not in `new`.
    pub fn lost(&self) -> Vec<&str> {
        self.old.iter().filter(|id| !self.new.contains(id)).map(String::as_str).collect()
    }
}

/// The arcs whose set of `n` replicas differs between `old` and `new`, in token order. Only
/// arcs that must move are listed: an arc whose replica *order* changed but whose set did not is
/// left out.
pub fn diff(old: &Ring, new: &Ring, n: usize) -> Vec<RangeMove> {
    let mut tokens: Vec<u64> = old.tokens().chain(new.tokens()).collect();
    tokens.sort_unstable();
    let mut moves: Vec<RangeMove> = Vec::new();
    for range in ranges_between(tokens.into_iter()) {
        // Every key on the arc has its first vnode at or after `range.end` in both rings.
        let before = ids(old, range.end, n);
        let after = ids(new, range.end, n);
        let same: BTreeSet<&String> = before.iter().collect();
        if same == after.iter().collect() {
            continue;
        }
        match moves.last_mut() {
            Some(last) if last.range.end == range.start && last.old == before && last.new == after => {
                last.range.end = range.end;
            }
            _ => moves.push(RangeMove { range, old: before, new: after }),
        }
    }
    // The first and last arcs may be one arc cut by the wrap-around point.
    if moves.len() > 1 {
        let (first, last) = (&moves[0], &moves[moves.len() - 1]);
        if last.range.end == first.range.start && last.old == first.old && last.new == first.new {
            let last = moves.pop().expect("invariant: len > 1");
            moves[0].range.start = last.range.start;
        }
    }
    moves
}

fn ids(ring: &Ring, token: u64, n: usize) -> Vec<String> {
    ring.preference_list_at(token, n).into_iter().map(|node| node.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hash_key, Node};
    use proptest::prelude::*;

    fn ring(ids: &[&str]) -> Ring {
        Ring::with_vnodes(ids.iter().map(|id| Node::new(*id, format!("zone-{id}"))), 16).unwrap()
    }

    fn moved_by(moves: &[RangeMove], token: u64) -> Option<&RangeMove> {
        moves.iter().find(|m| m.range.contains(token))
    }

    #[test]
    fn identical_rings_have_no_moves() {
        let a = ring(&["a", "b", "c"]);
        assert!(diff(&a, &a, 3).is_empty());
    }

    #[test]
    fn adding_a_node_only_gains_to_it() {
        let old = ring(&["a", "b", "c", "d"]);
        let new = ring(&["a", "b", "c", "d", "e"]);
        let moves = diff(&old, &new, 2);
        assert!(!moves.is_empty());
        for m in &moves {
            assert_eq!(m.gained(), vec!["e"], "{m:?}");
        }
        let moved: f64 = moves.iter().map(|m| m.range.fraction()).sum();
        println!("adding 1 of 5 nodes at n=2 moves {moved:.3} of the ring (ideal 2/5)");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A key's replica set changed exactly when its token lies in a listed arc, and the
        /// arc's old/new lists are the key's.
        #[test]
        fn diff_matches_preference_lists(extra in 0usize..3, remove in 0usize..3, n in 1usize..4, keys in proptest::collection::vec(any::<u64>(), 50)) {
            let base = ["a", "b", "c", "d", "e"];
            let old = ring(&base[remove..]);
            let mut grown: Vec<&str> = base.to_vec();
            grown.extend(["x", "y", "z"].iter().take(extra));
            let new = ring(&grown);
            let moves = diff(&old, &new, n);
            for k in keys {
                let token = hash_key(&k.to_be_bytes());
                let before: BTreeSet<String> = old.preference_list_at(token, n).iter().map(|x| x.id.clone()).collect();
                let after: BTreeSet<String> = new.preference_list_at(token, n).iter().map(|x| x.id.clone()).collect();
                match moved_by(&moves, token) {
                    Some(m) => {
                        prop_assert_ne!(&before, &after);
                        prop_assert_eq!(&before, &m.old.iter().cloned().collect());
                        prop_assert_eq!(&after, &m.new.iter().cloned().collect());
                    }
                    None => prop_assert_eq!(before, after),
                }
            }
        }
    }
}

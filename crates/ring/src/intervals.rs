//! [`Intervals`]: sets of ring positions, for the ranges a node owns or is dropping.

use crate::ring::Ring;
use crate::Token;

/// A set of ring positions as sorted, disjoint, non-adjacent inclusive spans `[lo, hi]`.
///
/// Invariant: `spans[i].0 <= spans[i].1` and `spans[i].1 + 1 < spans[i + 1].0`; so two sets are
/// equal exactly when they hold the same positions. Every operation is `O(spans)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Intervals {
    spans: Vec<(Token, Token)>,
}

impl Intervals {
    /// The empty set.
    pub fn new() -> Self {
        Intervals::default()
    }

    /// Every position of the ring.
    pub fn full() -> Self {
        Intervals { spans: vec![(0, Token::MAX)] }
    }

    /// The union of arbitrary spans (empty ones, `lo > hi`, are ignored).
    pub fn from_spans(spans: impl IntoIterator<Item = (Token, Token)>) -> Self {
        let mut spans: Vec<(Token, Token)> = spans.into_iter().filter(|(lo, hi)| lo <= hi).collect();
        spans.sort_unstable();
        let mut out: Vec<(Token, Token)> = Vec::with_capacity(spans.len());
        for (lo, hi) in spans {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Intervals { spans: out }
    }

    /// The spans, sorted.
    pub fn spans(&self) -> &[(Token, Token)] {
        &self.spans
    }

    /// Whether the set holds no position.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Index of the span that could hold `token`: the last one starting at or before it.
    fn span_at(&self, token: Token) -> Option<&(Token, Token)> {
        let i = self.spans.partition_point(|(lo, _)| *lo <= token);
        i.checked_sub(1).map(|i| &self.spans[i])
    }

    /// Whether `token` is in the set.
    pub fn contains(&self, token: Token) -> bool {
        self.span_at(token).is_some_and(|(_, hi)| token <= *hi)
    }

    /// Whether every position of `[lo, hi]` is in the set.
    pub fn covers(&self, lo: Token, hi: Token) -> bool {
        lo > hi || self.span_at(lo).is_some_and(|(_, end)| hi <= *end)
    }

    /// Whether some position of `[lo, hi]` is in the set.
    pub fn overlaps(&self, lo: Token, hi: Token) -> bool {
        lo <= hi && !self.intersection(&Intervals { spans: vec![(lo, hi)] }).is_empty()
    }

    /// Positions in either set.
    pub fn union(&self, other: &Intervals) -> Intervals {
        Intervals::from_spans(self.spans.iter().chain(&other.spans).copied())
    }

    /// Positions in both sets.
    pub fn intersection(&self, other: &Intervals) -> Intervals {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.spans.len() && j < other.spans.len() {
            let (a, b) = (self.spans[i], other.spans[j]);
            let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Intervals::from_spans(out)
    }

    /// Positions not in the set.
    pub fn complement(&self) -> Intervals {
        let mut out = Vec::new();
        let mut next: Option<Token> = Some(0);
        for &(lo, hi) in &self.spans {
            if let Some(start) = next {
                if start < lo {
                    out.push((start, lo - 1));
                }
            }
            next = hi.checked_add(1);
        }
        if let Some(start) = next {
            out.push((start, Token::MAX));
        }
        Intervals { spans: out }
    }

    /// Positions in `self` but not in `other`.
    pub fn difference(&self, other: &Intervals) -> Intervals {
        self.intersection(&other.complement())
    }
}

impl Ring {
    /// The positions whose `n` replicas include node `id` (empty if it is not a member).
    pub fn owned(&self, id: &str, n: usize) -> Intervals {
        if self.node(id).is_none() {
            return Intervals::new();
        }
        let spans = self
            .ranges()
            .into_iter()
            .filter(|range| self.preference_list_at(range.end, n).iter().any(|node| node.id == id))
            .flat_map(|range| range.intervals());
        Intervals::from_spans(spans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hash_key, Node};
    use proptest::prelude::*;

    /// Spans within 0..64 plus the top of the ring, to exercise both ends.
    fn arb_set() -> impl Strategy<Value = Intervals> {
        proptest::collection::vec((0u64..70, 0u64..8), 0..6).prop_map(|spans| {
            Intervals::from_spans(spans.into_iter().map(|(lo, len)| {
                let lo = if lo >= 64 { Token::MAX - (lo - 64) * 2 } else { lo };
                (lo, lo.saturating_add(len))
            }))
        })
    }

    fn probes() -> Vec<Token> {
        (0..80).chain((0..16).map(|i| Token::MAX - i)).collect()
    }

    proptest! {
        #[test]
        fn operations_agree_with_membership(a in arb_set(), b in arb_set()) {
            for t in probes() {
                prop_assert_eq!(a.union(&b).contains(t), a.contains(t) || b.contains(t));
                prop_assert_eq!(a.intersection(&b).contains(t), a.contains(t) && b.contains(t));
                prop_assert_eq!(a.difference(&b).contains(t), a.contains(t) && !b.contains(t));
                prop_assert_eq!(a.complement().contains(t), !a.contains(t));
            }
            // Normal form: equal sets have equal spans.
            prop_assert_eq!(a.union(&b), b.union(&a));
            prop_assert_eq!(a.complement().complement(), a.clone());
            for lo in 0..20u64 {
                for hi in lo..lo + 10 {
                    prop_assert_eq!(a.covers(lo, hi), (lo..=hi).all(|t| a.contains(t)));
                    prop_assert_eq!(a.overlaps(lo, hi), (lo..=hi).any(|t| a.contains(t)));
                }
            }
        }
    }

    #[test]
    fn owned_positions_match_preference_lists() {
        let ring = Ring::with_vnodes((0..5).map(|i| Node::new(format!("n{i}"), "z")), 16).unwrap();
        let owned = ring.owned("n2", 3);
        for i in 0..2000u64 {
            let token = hash_key(&i.to_be_bytes());
            let holds = ring.preference_list_at(token, 3).iter().any(|n| n.id == "n2");
            assert_eq!(owned.contains(token), holds, "token {token}");
        }
        assert!(ring.owned("nobody", 3).is_empty());
        let all = Ring::with_vnodes([Node::new("a", "z")], 4).unwrap();
        assert_eq!(all.owned("a", 3), Intervals::full());
    }
}

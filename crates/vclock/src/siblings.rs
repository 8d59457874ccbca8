//! Dots and sibling sets: which versions of a key survive.

use serde::{Deserialize, Serialize};

use crate::VClock;

/// The event that created a version: the `counter`-th write coordinated by `node`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Coordinating storage node.
    pub node: String,
    /// That node's counter for this key; unique per (key, node).
    pub counter: u64,
    /// Wall-clock ms when the version was created (for pruning the clocks built on it).
    pub timestamp: u64,
}

/// A value with a causal identity: its [`Dot`] and the context its writer had read.
pub trait Versioned {
    /// The event that created this version.
    fn dot(&self) -> &Dot;
    /// What the writer had seen: the merged clock of the versions it read.
    fn context(&self) -> &VClock;

    /// The version's full vector clock: its context plus its own dot.
    fn clock(&self) -> VClock {
        let mut clock = self.context().clone();
        let dot = self.dot();
        clock.set(&dot.node, dot.counter, dot.timestamp);
        clock
    }

    /// Whether `other` makes this version obsolete: `other`'s writer saw this version (its
    /// context covers our dot), or `other` is this very version (same dot).
    fn obsoleted_by(&self, other: &impl Versioned) -> bool {
        let dot = self.dot();
        other.dot() == dot || other.context().get(&dot.node) >= dot.counter
    }
}

/// The live versions of a key: no member is obsoleted by another member.
///
/// Invariant: for all distinct `a`, `b` in the set, `!a.obsoleted_by(b)`. Inserting a version
/// that some member obsoletes is a no-op; inserting one that obsoletes members removes them.
/// Concurrent versions are never dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Siblings<T> {
    versions: Vec<T>,
}

impl<T> Default for Siblings<T> {
    fn default() -> Self {
        Siblings { versions: Vec::new() }
    }
}

impl<T: Versioned> Siblings<T> {
    /// The empty set.
    pub fn new() -> Self {
        Siblings::default()
    }

    /// Builds a set from arbitrary versions, dropping obsolete ones.
    pub fn from_versions(versions: impl IntoIterator<Item = T>) -> Self {
        let mut set = Siblings::new();
        for version in versions {
            set.insert(version);
        }
        set
    }

    /// Adds `version` unless a member obsoletes it; removes the members it obsoletes. Returns
    /// whether it was added.
    pub fn insert(&mut self, version: T) -> bool {
        if self.versions.iter().any(|v| version.obsoleted_by(v)) {
            return false;
        }
        self.versions.retain(|v| !v.obsoleted_by(&version));
        self.versions.push(version);
        true
    }

    /// Inserts every version of `other`. The result is the same whatever the order of merges.
    pub fn merge(&mut self, other: impl IntoIterator<Item = T>) {
        for version in other {
            self.insert(version);
        }
    }

    /// The merged clock of all members: the context a client gets when it reads this set, and
    /// which makes a write supersede exactly what was read.
    pub fn context(&self) -> VClock {
        let mut clock = VClock::new();
        for version in &self.versions {
            clock.merge(&version.clock());
        }
        clock
    }

    /// Highest counter of `node` seen in any member's clock.
    pub fn max_counter(&self, node: &str) -> u64 {
        self.versions.iter().map(|v| v.clock().get(node)).max().unwrap_or(0)
    }

    /// The members, in insertion order.
    pub fn versions(&self) -> &[T] {
        &self.versions
    }

    /// Consumes the set into its members.
    pub fn into_versions(self) -> Vec<T> {
        self.versions
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

impl<T: Versioned> IntoIterator for Siblings<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.versions.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct V {
        dot: Dot,
        context: VClock,
    }

    impl Versioned for V {
        fn dot(&self) -> &Dot {
            &self.dot
        }
        fn context(&self) -> &VClock {
            &self.context
        }
    }

    /// A write coordinated by `node` on top of what `seen` holds.
    fn write(seen: &Siblings<V>, context: &VClock, node: &str) -> V {
        let counter = seen.max_counter(node).max(context.get(node)) + 1;
        V { dot: Dot { node: node.into(), counter, timestamp: counter }, context: context.clone() }
    }

    #[test]
    fn blind_writes_through_one_node_are_siblings() {
        let mut set = Siblings::new();
        let first = write(&set, &VClock::new(), "n1");
        set.insert(first);
        let second = write(&set, &VClock::new(), "n1");
        assert!(set.insert(second));
        assert_eq!(set.len(), 2);
        // A write with the read context resolves both.
        let context = set.context();
        let resolved = write(&set, &context, "n1");
        set.insert(resolved.clone());
        assert_eq!(set.versions(), &[resolved]);
    }

    #[test]
    fn replicated_copy_is_deduplicated_and_old_versions_are_ignored() {
        let mut set = Siblings::new();
        let v1 = write(&set, &VClock::new(), "a");
        set.insert(v1.clone());
        let v2 = write(&set, &set.context(), "b");
        set.insert(v2.clone());
        assert!(!set.insert(v2.clone()));
        assert!(!set.insert(v1), "an ancestor must not come back");
        assert_eq!(set.versions(), &[v2]);
    }

    fn arb_history() -> impl Strategy<Value = Vec<V>> {
        // Each write picks a node and reads a random subset of the earlier writes.
        proptest::collection::vec((0u8..3, proptest::collection::vec(any::<bool>(), 12)), 1..12).prop_map(|steps| {
            let mut all: Vec<V> = Vec::new();
            let mut counters = [0u64; 3];
            for (node, picks) in steps {
                // A reader sees what one replica holds. A replica that holds dot (n, c) holds
                // every earlier dot of n for the key too (or what replaced it), because a
                // coordinator replicates its whole sibling set: so close the picks downward.
                let mut floor = [0u64; 3];
                for (v, pick) in all.iter().zip(picks) {
                    if pick {
                        let i = v.dot.node[1..].parse::<usize>().unwrap_or(0);
                        floor[i] = floor[i].max(v.dot.counter);
                    }
                }
                let mut context = VClock::new();
                for v in &all {
                    let i = v.dot.node[1..].parse::<usize>().unwrap_or(0);
                    if v.dot.counter <= floor[i] {
                        context.merge(&v.clock());
                    }
                }
                let name = format!("n{node}");
                let counter = counters[node as usize].max(context.get(&name)) + 1;
                counters[node as usize] = counter;
                all.push(V { dot: Dot { node: name, counter, timestamp: counter }, context });
            }
            all
        })
    }

    /// Figure: the clock and sibling laws over thousands of random cases, with the count printed.
    #[test]
    fn figures_clock_and_sibling_laws() {
        use crate::Causality;
        use proptest::test_runner::{Config, TestRunner};
        let cases = 5_000;
        let clock = || {
            proptest::collection::vec((0u8..5, 1u64..5), 0..6).prop_map(|entries| {
                let mut c = VClock::new();
                for (node, counter) in entries {
                    c.set(&format!("n{node}"), counter, 0);
                }
                c
            })
        };
        let mut runner = TestRunner::new(Config { cases, ..Config::default() });
        runner
            .run(&(clock(), clock(), clock()), |(a, b, c)| {
                prop_assert_eq!(a.merged(&b), b.merged(&a));
                prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
                prop_assert_eq!(a.merged(&a), a.clone());
                let le = |x: &VClock, y: &VClock| matches!(x.compare(y), Causality::Before | Causality::Equal);
                prop_assert!(le(&a, &a.merged(&b)) && le(&b, &a.merged(&b)));
                prop_assert_eq!(le(&a, &b), a.merged(&b) == b);
                if le(&a, &b) && le(&b, &c) {
                    prop_assert!(le(&a, &c));
                }
                Ok(())
            })
            .unwrap();
        let mut runner = TestRunner::new(Config { cases, ..Config::default() });
        let kept = std::cell::Cell::new(0usize);
        runner
            .run(&arb_history(), |history| {
                let set = Siblings::from_versions(history);
                for a in set.versions() {
                    for b in set.versions() {
                        prop_assert!(a == b || !a.obsoleted_by(b));
                    }
                }
                kept.set(kept.get() + set.len());
                Ok(())
            })
            .unwrap();
        println!(
            "clock laws: merge commutative, associative, idempotent and compare a partial order consistent with merge on {cases} random triples; \
             siblings: {cases} random histories, {} surviving versions, none dominated by another",
            kept.get()
        );
    }

    proptest! {
        #[test]
        fn never_holds_an_obsoleted_version(history in arb_history()) {
            let set = Siblings::from_versions(history.clone());
            for a in set.versions() {
                for b in set.versions() {
                    if a != b {
                        prop_assert!(!a.obsoleted_by(b), "{a:?} obsoleted by {b:?}");
                    }
                }
            }
            // Nothing concurrent with every survivor is lost: each input is in the set or
            // obsoleted by a member.
            for v in &history {
                prop_assert!(set.versions().iter().any(|m| m == v || v.obsoleted_by(m)));
            }
        }

        #[test]
        fn merge_order_does_not_matter(history in arb_history(), split in 0usize..12) {
            let split = split.min(history.len());
            let mut left = Siblings::from_versions(history[..split].to_vec());
            let right = Siblings::from_versions(history[split..].to_vec());
            let mut other = right.clone();
            left.merge(right);
            other.merge(Siblings::from_versions(history[..split].to_vec()));
            let mut a: Vec<_> = left.into_versions().into_iter().map(|v| v.dot).collect();
            let mut b: Vec<_> = other.into_versions().into_iter().map(|v| v.dot).collect();
            a.sort_by(|x, y| (&x.node, x.counter).cmp(&(&y.node, y.counter)));
            b.sort_by(|x, y| (&x.node, x.counter).cmp(&(&y.node, y.counter)));
            prop_assert_eq!(a, b);
        }
    }
}

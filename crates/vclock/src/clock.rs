//! The vector clock.

use std::cmp::Ordering;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Entries kept by [`VClock::prune`] by default: Dynamo's threshold of 10.
pub const DEFAULT_MAX_ENTRIES: usize = 10;

/// Longest context token accepted from a client, in characters. A clock of 10 entries with
/// 64-byte node ids encodes to about 1 KB; 8 KB leaves room and bounds the work a request costs.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Highest counter any clock may hold. Counters are issued one at a time by a storage node
/// (see `kv_storage`'s dot counter), so a real counter stays far below this: a node issuing a
/// million dots a second for a century reaches 2^52. A decoded clock (a client's context, a
/// peer's message, a stored record) with a larger counter is impossible, and refused, so that
/// `counter + 1` can never overflow anywhere.
pub const MAX_COUNTER: u64 = 1 << 56;

/// Most entries a decoded clock may hold. Pruning keeps a version's clock at
/// [`DEFAULT_MAX_ENTRIES`] plus its dot; a read context merges the clocks of a key's siblings,
/// so allow generously more, but bound the work one context costs.
pub const MAX_DECODED_ENTRIES: usize = 256;

/// Longest actor name in a clock: a node id (64) plus its storage incarnation, with room.
pub const MAX_ACTOR_BYTES: usize = 128;

/// Format version byte that starts every encoded clock.
const ENCODING_V1: u8 = 1;

/// One node's counter in a clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Storage node id.
    pub node: String,
    /// Number of events this node has coordinated that the clock has seen; at least 1.
    pub counter: u64,
    /// Wall-clock ms of the event that last advanced this entry; used only for pruning.
    pub timestamp: u64,
}

/// How two clocks are related.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Same counters.
    Equal,
    /// `self` is an ancestor of `other`: every counter `<=`, at least one `<`.
    Before,
    /// `self` descends from `other`.
    After,
    /// Each side has a counter greater than the other's: a conflict.
    Concurrent,
}

/// A vector clock: per-node counters, sorted by node id, no zero counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<Entry>", into = "Vec<Entry>")]
pub struct VClock {
    entries: Vec<Entry>,
}

impl VClock {
    /// The empty clock, which every clock descends from.
    pub fn new() -> Self {
        VClock::default()
    }

    /// The entries, sorted by node id.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether no node has a counter.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counter of `node` (0 when absent).
    pub fn get(&self, node: &str) -> u64 {
        self.find(node).map_or(0, |i| self.entries[i].counter)
    }

    fn find(&self, node: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.node.as_str().cmp(node))
    }

    /// Advances `node` to `counter` at time `timestamp`, if that is higher than its entry.
    pub fn set(&mut self, node: &str, counter: u64, timestamp: u64) {
        if counter == 0 {
            return;
        }
        match self.find(node) {
            Ok(i) => {
                let entry = &mut self.entries[i];
                if counter > entry.counter || (counter == entry.counter && timestamp > entry.timestamp) {
                    entry.counter = counter;
                    entry.timestamp = timestamp;
                }
            }
            Err(i) => self.entries.insert(i, Entry { node: node.to_owned(), counter, timestamp }),
        }
    }

    /// Adds one event of `node` at time `now_ms`; returns the new counter.
    pub fn increment(&mut self, node: &str, now_ms: u64) -> u64 {
        let counter = self.get(node).saturating_add(1);
        self.set(node, counter, now_ms);
        counter
    }

    /// Per-node maximum (ties keep the later timestamp). Commutative, associative, idempotent.
    pub fn merge(&mut self, other: &VClock) {
        for entry in &other.entries {
            self.set(&entry.node, entry.counter, entry.timestamp);
        }
    }

    /// `self` merged with `other`, as a new clock.
    pub fn merged(&self, other: &VClock) -> VClock {
        let mut out = self.clone();
        out.merge(other);
        out
    }

    /// Whether every counter of `other` is `<=` this clock's (`self` is `other` or after it).
    pub fn descends(&self, other: &VClock) -> bool {
        other.entries.iter().all(|e| self.get(&e.node) >= e.counter)
    }

    /// The causal relation of `self` to `other`, as the seed describes it.
    pub fn compare(&self, other: &VClock) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The partial order as `Option<Ordering>` (`None` when concurrent).
    pub fn partial_cmp_causal(&self, other: &VClock) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Equal => Some(Ordering::Equal),
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Concurrent => None,
        }
    }

    /// Drops the oldest entries (by timestamp, then node id) until at most `max_entries`
    /// remain, never dropping `keep`. Returns how many were dropped. See the crate docs for the
    /// trade-off.
    pub fn prune(&mut self, max_entries: usize, keep: Option<&str>) -> usize {
        let mut dropped = 0;
        while self.entries.len() > max_entries {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| Some(e.node.as_str()) != keep)
                .min_by(|(_, a), (_, b)| a.timestamp.cmp(&b.timestamp).then_with(|| a.node.cmp(&b.node)))
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.entries.remove(i);
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }

    /// Compact binary form: a format version byte, then the postcard encoding of the entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_V1];
        // Serialising a Vec of plain structs into a Vec cannot fail.
        out.extend(postcard::to_stdvec(&self.entries).unwrap_or_default());
        out
    }

    /// Decodes [`VClock::encode`]'s output, checking that entries are sorted, unique and non-zero.
    pub fn decode(bytes: &[u8]) -> Result<VClock, Error> {
        let (&version, body) = bytes.split_first().ok_or(Error::UnknownVersion(0))?;
        if version != ENCODING_V1 {
            return Err(Error::UnknownVersion(version));
        }
        let (entries, rest): (Vec<Entry>, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| Error::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(Error::Malformed(format!("{} trailing bytes", rest.len())));
        }
        VClock::try_from(entries).map_err(Error::Malformed)
    }

    /// The clock as an opaque base64url context token for clients. The empty clock is `""`.
    pub fn to_token(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        URL_SAFE_NO_PAD.encode(self.encode())
    }

    /// Parses a context token made by [`VClock::to_token`]. Surrounding whitespace is ignored.
    pub fn from_token(token: &str) -> Result<VClock, Error> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::TooLong(MAX_TOKEN_BYTES));
        }
        if token.is_empty() {
            return Ok(VClock::new());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| Error::Base64)?;
        VClock::decode(&bytes)
    }
}

impl TryFrom<Vec<Entry>> for VClock {
    type Error = String;

    fn try_from(entries: Vec<Entry>) -> Result<Self, String> {
        if entries.len() > MAX_DECODED_ENTRIES {
            return Err(format!("{} entries; at most {MAX_DECODED_ENTRIES}", entries.len()));
        }
        for pair in entries.windows(2) {
            if pair[0].node >= pair[1].node {
                return Err(format!("entries not sorted or repeated at {:?}", pair[1].node));
            }
        }
        if let Some(e) = entries.iter().find(|e| e.counter == 0 || e.node.is_empty()) {
            return Err(format!("entry {:?} has a zero counter or an empty node", e.node));
        }
        if let Some(e) = entries.iter().find(|e| e.counter > MAX_COUNTER) {
            return Err(format!(
                "entry {:?} has counter {}, above the highest possible {MAX_COUNTER}",
                e.node, e.counter
            ));
        }
        if let Some(e) = entries.iter().find(|e| e.node.len() > MAX_ACTOR_BYTES) {
            return Err(format!("actor name of {} bytes; at most {MAX_ACTOR_BYTES}", e.node.len()));
        }
        Ok(VClock { entries })
    }
}

impl From<VClock> for Vec<Entry> {
    fn from(clock: VClock) -> Self {
        clock.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clock(pairs: &[(&str, u64)]) -> VClock {
        let mut c = VClock::new();
        for (node, counter) in pairs {
            c.set(node, *counter, *counter * 10);
        }
        c
    }

    fn arb_clock() -> impl Strategy<Value = VClock> {
        proptest::collection::vec((0u8..5, 1u64..5, 0u64..100), 0..6).prop_map(|entries| {
            let mut c = VClock::new();
            for (node, counter, ts) in entries {
                c.set(&format!("n{node}"), counter, ts);
            }
            c
        })
    }

    #[test]
    fn compare_follows_the_seed() {
        // Figure 6-10: D3 ([Sx,2],[Sy,1]) and D4 ([Sx,2],[Sz,1]) conflict; D5 resolves both.
        let d2 = clock(&[("sx", 2)]);
        let d3 = clock(&[("sx", 2), ("sy", 1)]);
        let d4 = clock(&[("sx", 2), ("sz", 1)]);
        let d5 = clock(&[("sx", 3), ("sy", 1), ("sz", 1)]);
        assert_eq!(d2.compare(&d3), Causality::Before);
        assert_eq!(d3.compare(&d2), Causality::After);
        assert_eq!(d3.compare(&d4), Causality::Concurrent);
        assert_eq!(d5.compare(&d3), Causality::After);
        assert_eq!(d5.compare(&d4), Causality::After);
        assert_eq!(d5.compare(&d5.clone()), Causality::Equal);
        assert_eq!(d3.merged(&d4), clock(&[("sx", 2), ("sy", 1), ("sz", 1)]));
    }

    #[test]
    fn increment_counts_per_node() {
        let mut c = VClock::new();
        assert_eq!(c.increment("a", 5), 1);
        assert_eq!(c.increment("a", 6), 2);
        assert_eq!(c.increment("b", 7), 1);
        assert_eq!((c.get("a"), c.get("b"), c.get("z")), (2, 1, 0));
    }

    #[test]
    fn prune_drops_oldest_but_kept_node() {
        let mut c = VClock::new();
        for i in 0..12u64 {
            c.set(&format!("n{i:02}"), 1, 100 - i);
        }
        // n11 is the oldest; keep it anyway.
        assert_eq!(c.prune(DEFAULT_MAX_ENTRIES, Some("n11")), 2);
        assert_eq!(c.entries().len(), 10);
        assert_eq!(c.get("n11"), 1);
        assert_eq!((c.get("n10"), c.get("n09")), (0, 0));
        assert_eq!(c.get("n00"), 1);
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = clock(&[("node-a", 3), ("node-b", 1)]);
        let token = c.to_token();
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(VClock::from_token(&token).unwrap(), c);
        assert_eq!(VClock::from_token("").unwrap(), VClock::new());
        assert_eq!(VClock::from_token("!!!").unwrap_err(), Error::Base64);
        assert_eq!(VClock::from_token("AA").unwrap_err(), Error::UnknownVersion(0));
        assert!(matches!(VClock::from_token("AQ").unwrap_err(), Error::Malformed(_)));
        assert!(matches!(VClock::from_token(&"A".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(), Error::TooLong(_)));
        // Unsorted entries are refused even when well-formed postcard.
        let mut bytes = vec![ENCODING_V1];
        let entries = vec![
            Entry { node: "b".into(), counter: 1, timestamp: 0 },
            Entry { node: "a".into(), counter: 1, timestamp: 0 },
        ];
        bytes.extend(postcard::to_stdvec(&entries).unwrap());
        assert!(matches!(VClock::decode(&bytes).unwrap_err(), Error::Malformed(_)));
    }

    #[test]
    fn impossible_counters_are_refused() {
        // A counter of u64::MAX would overflow the next dot (`+ 1`): refused at decode time.
        for counter in [u64::MAX, MAX_COUNTER + 1] {
            let mut bytes = vec![ENCODING_V1];
            bytes.extend(postcard::to_stdvec(&vec![Entry { node: "n1".into(), counter, timestamp: 0 }]).unwrap());
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(matches!(VClock::from_token(&token).unwrap_err(), Error::Malformed(m) if m.contains("above")));
        }
        let at_limit = clock(&[("n1", MAX_COUNTER)]);
        assert_eq!(VClock::from_token(&at_limit.to_token()).unwrap(), at_limit);
        let mut long = vec![ENCODING_V1];
        let entries = vec![Entry { node: "a".repeat(MAX_ACTOR_BYTES + 1), counter: 1, timestamp: 0 }];
        long.extend(postcard::to_stdvec(&entries).unwrap());
        assert!(VClock::decode(&long).is_err());
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(a.merged(&b), b.merged(&a));
        }

        #[test]
        fn merge_is_associative(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(a.merged(&a), a.clone());
            let ab = a.merged(&b);
            prop_assert_eq!(ab.merged(&b), ab);
        }

        /// `compare` is a partial order and agrees with merge: a <= b iff merge(a, b) == b.
        #[test]
        fn compare_is_a_partial_order_consistent_with_merge(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(a.compare(&a), Causality::Equal);
            let ab = a.compare(&b);
            let ba = b.compare(&a);
            let flipped = match ab {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(ba, flipped);
            let le = matches!(ab, Causality::Before | Causality::Equal);
            let mut merged = a.merged(&b);
            // Merge keeps timestamps of the max; compare ignores timestamps.
            merged.entries.iter_mut().for_each(|e| e.timestamp = 0);
            let mut b0 = b.clone();
            b0.entries.iter_mut().for_each(|e| e.timestamp = 0);
            prop_assert_eq!(le, merged == b0);
            prop_assert!(matches!(a.compare(&a.merged(&b)), Causality::Before | Causality::Equal));
            // Transitivity.
            if le && matches!(b.compare(&c), Causality::Before | Causality::Equal) {
                prop_assert!(matches!(a.compare(&c), Causality::Before | Causality::Equal));
            }
            // Antisymmetry.
            if ab == Causality::Equal {
                prop_assert!(a.descends(&b) && b.descends(&a));
            }
        }

        #[test]
        fn encoding_round_trips(a in arb_clock()) {
            prop_assert_eq!(VClock::decode(&a.encode()).unwrap(), a.clone());
            prop_assert_eq!(VClock::from_token(&a.to_token()).unwrap(), a);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = VClock::decode(&bytes);
        }
    }
}

//! What the clients did and saw, and the checks run on it.
//!
//! Every client write carries a unique *tag* (its value, and its content type, so tombstones
//! are told apart too). A write made with the context of a read *saw* exactly the versions that
//! read returned; `saw*` is the transitive closure (a write saw what the versions it saw had
//! seen). A replica that ran a coordinate call *created* the write's version, whether or not
//! the client heard back. The ground truth of causality is therefore what clients read, not
//! what clocks claim: a clock that covers a dot its writer never saw is exactly the bug class
//! this checker exists for.
//!
//! The rules (0 and 3 as the history runs, the others once it has quiesced):
//!
//! 0. **Dots never repeat.** Every version a replica creates has a dot no other write's version
//!    ever had: the root invariant behind every comparison of clocks.
//! 1. **Acknowledged writes survive.** An acknowledged put is live in the final state, or some
//!    created write saw it (it was superseded, possibly by a delete that was then purged).
//! 2. **Deletes stay deleted.** No live value was seen by an acknowledged write or delete: that
//!    write's context covered it, so it may only be live if the acknowledged write was lost.
//! 3. **Quorums.** An acknowledgement names at least `w` distinct replicas.
//! 4. **Moves are complete.** When a node finishes gaining a range (join, leave, removal), it
//!    holds every acknowledged write that enough of the range's sources held when the move
//!    started: enough that any `copies_needed` of them must include a holder.
//!
//! A write is exempt from rules 1 and 2 when it had k copies when acknowledged and k disks were
//! lost after it was sent (wiped or removed with their node): no store survives losing every copy, and
//! copies move with joins and leaves, so which nodes lost them does not matter. Histories allow
//! one such loss, so only writes acknowledged by a single replica are ever exempt. A write is
//! also exempt when a former owner discarded the last copy of it anywhere because its key was
//! written longer than half the tombstone grace ago ([`kv_coordinator::plan::hand_off`]): the
//! documented cost of never handing back a version whose delete may have been purged. Only a
//! write no other replica ever received (`w=1`, or its other copies lost) can be discarded so.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How a write ended.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Replicas that acknowledged it.
    pub by: Vec<String>,
    /// Virtual ms of the acknowledgement.
    pub at_ms: u64,
}

/// One client write (a put or a delete).
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// Unique tag: the value and content type of its version.
    pub tag: String,
    /// Key index.
    pub key: usize,
    /// A delete.
    pub tombstone: bool,
    /// Tags of the versions the read behind its context returned (empty: blind).
    pub saw: Vec<String>,
    /// Acknowledgements asked for.
    pub w: usize,
    /// Virtual ms when the client sent it.
    pub started_ms: u64,
    /// Set once acknowledged.
    pub acked: Option<Acked>,
}

/// Counts of what a history did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Histories run.
    pub histories: u64,
    /// Puts without a context.
    pub blind_puts: u64,
    /// Puts with the context of a read.
    pub context_puts: u64,
    /// Deletes (always with the context of a read).
    pub deletes: u64,
    /// Reads, with repair.
    pub reads: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes answered with an error.
    pub failed: u64,
    /// Tombstones purged (replica copies).
    pub purged: u64,
    /// Hints delivered to their targets (or re-routed to the current replicas).
    pub hints: u64,
    /// Keys moved by anti-entropy.
    pub repaired: u64,
    /// Node crashes (each followed by a restart).
    pub crashes: u64,
    /// Partitions between two endpoints (each healed).
    pub partitions: u64,
    /// Messages delivered after their sender had given up.
    pub late: u64,
    /// Replies lost.
    pub lost_replies: u64,
    /// Nodes that joined.
    pub joins: u64,
    /// Nodes that left.
    pub leaves: u64,
    /// Nodes removed by an operator.
    pub removals: u64,
    /// Disks wiped (the node rejoined as a new actor).
    pub wipes: u64,
    /// Nodes paused through their removal, which resumed with their old store and view.
    pub paused_removals: u64,
    /// Membership changes that started while another was in progress.
    pub concurrent_changes: u64,
    /// Clocks set beyond the bound for a while (the node fenced itself).
    pub clock_jumps: u64,
    /// Acknowledged writes checked at the end.
    pub checked_writes: u64,
    /// Live versions checked for resurrection.
    pub checked_versions: u64,
    /// Write/range pairs checked after moves.
    pub checked_moves: u64,
    /// Acknowledged writes whose last copy a former owner discarded as too old to hand off.
    pub discarded: u64,
    /// Rule violations.
    pub violations: u64,
}

impl Counts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Counts) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += other.$f; )* } }
        sum!(
            histories,
            blind_puts,
            context_puts,
            deletes,
            reads,
            acked,
            failed,
            purged,
            hints,
            repaired,
            crashes,
            partitions,
            late,
            lost_replies,
            joins,
            leaves,
            removals,
            wipes,
            paused_removals,
            concurrent_changes,
            clock_jumps,
            checked_writes,
            checked_versions,
            checked_moves,
            discarded,
            violations
        );
    }
}

/// The record of one history.
#[derive(Debug, Default)]
pub struct History {
    /// Every write, in the order clients started them.
    pub writes: Vec<WriteRecord>,
    by_tag: HashMap<String, usize>,
    /// Per write: every write it saw, transitively, as indexes.
    closure: Vec<BTreeSet<usize>>,
    /// Tags of writes some replica created a version for.
    pub created: BTreeSet<String>,
    /// Every dot issued per key, and the write it was issued for (rule 0).
    dots: BTreeMap<(usize, String, u64), String>,
    /// Node id → virtual ms its data was lost (disk wiped, or removed).
    pub lost: BTreeMap<String, u64>,
    /// Writes whose last copy a former owner discarded as too old to hand off.
    discarded: BTreeSet<usize>,
    /// What went wrong.
    pub violations: Vec<String>,
    /// Counts.
    pub counts: Counts,
}

/// A version as the checker sees it: its tag and whether it is a tombstone.
pub type Seen = (String, bool);

impl History {
    /// Records the start of a write; returns its index.
    pub fn begin_write(
        &mut self,
        tag: String,
        key: usize,
        tombstone: bool,
        saw: Vec<String>,
        w: usize,
        started_ms: u64,
    ) -> usize {
        let index = self.writes.len();
        // A write only sees versions of writes begun before it: its closure is complete now.
        let mut all = BTreeSet::new();
        for seen in saw.iter().filter_map(|t| self.by_tag.get(t)) {
            all.insert(*seen);
            all.extend(self.closure[*seen].iter().copied());
        }
        self.closure.push(all);
        self.by_tag.insert(tag.clone(), index);
        self.writes.push(WriteRecord { tag, key, tombstone, saw, w, started_ms, acked: None });
        index
    }

    /// Whether `versions` hold write `index` or a version of a write that saw it.
    pub fn holds(&self, versions: &[Seen], index: usize) -> bool {
        versions.iter().any(|(tag, _)| {
            *tag == self.writes[index].tag || self.by_tag.get(tag).is_some_and(|&v| self.closure[v].contains(&index))
        })
    }

    /// Records that a replica created (or reused) the version of write `tag` with dot
    /// (`actor`, `counter`), checking rule 0: a dot names one write of a key, forever.
    pub fn created(&mut self, tag: &str, actor: &str, counter: u64) {
        self.created.insert(tag.to_owned());
        let Some(key) = self.by_tag.get(tag).map(|&i| self.writes[i].key) else { return };
        match self.dots.get(&(key, actor.to_owned(), counter)) {
            Some(first) if first != tag => {
                let first = first.clone();
                self.violations
                    .push(format!("dot {actor}:{counter} was issued twice: for write {first}, then for {tag}"));
            }
            Some(_) => {}
            None => {
                self.dots.insert((key, actor.to_owned(), counter), tag.to_owned());
            }
        }
    }

    /// Records an acknowledgement, checking rule 3.
    pub fn acknowledged(&mut self, index: usize, by: Vec<String>, at_ms: u64) {
        let distinct: BTreeSet<&String> = by.iter().collect();
        let write = &self.writes[index];
        if distinct.len() != by.len() || by.len() < write.w {
            self.violations.push(format!(
                "write {} (w={}) was acknowledged by {:?}: not {} distinct replicas",
                write.tag, write.w, by, write.w
            ));
        }
        self.writes[index].acked = Some(Acked { by, at_ms });
        self.counts.acked += 1;
    }

    /// A former owner discards its copy `here` of key `key` without handing it off; `elsewhere`
    /// is what every other store holds. Writes it holds that no other store does are exempt.
    pub fn discard(&mut self, key: usize, here: &[Seen], elsewhere: &[Vec<Seen>]) {
        for index in 0..self.writes.len() {
            if self.writes[index].key != key || self.discarded.contains(&index) || !self.holds(here, index) {
                continue;
            }
            // Only a write one replica acknowledged: one that more acknowledged must still be
            // elsewhere, and its loss here is a violation the final check reports.
            let single = self.writes[index].acked.as_ref().is_none_or(|a| a.by.len() <= 1);
            if single && !elsewhere.iter().any(|versions| self.holds(versions, index)) {
                self.discarded.insert(index);
                if self.writes[index].acked.is_some() {
                    self.counts.discarded += 1;
                }
            }
        }
    }

    /// Whether `write` may be lost: it had k copies when acknowledged, and k disks were lost
    /// since it was sent (copies move with leaves and joins, so which nodes lost them does not
    /// matter; a copy may be lost before its acknowledgement arrives).
    fn exempt(&self, write: &WriteRecord) -> bool {
        if self.by_tag.get(&write.tag).is_some_and(|i| self.discarded.contains(i)) {
            return true;
        }
        match &write.acked {
            Some(acked) => self.lost.values().filter(|at| **at >= write.started_ms).count() >= acked.by.len(),
            None => true,
        }
    }

    /// Whether `index` was superseded: some created write saw it.
    fn superseded(&self, index: usize) -> bool {
        self.writes.iter().enumerate().any(|(j, w)| self.closure[j].contains(&index) && self.created.contains(&w.tag))
    }

    /// Rules 1 and 2 on the final state: per key, the versions its replicas hold after repair.
    pub fn check_final(&mut self, finals: &[Vec<Seen>]) {
        let mut violations = Vec::new();
        let mut checked = 0;
        for (index, write) in self.writes.iter().enumerate() {
            if write.acked.is_none() || write.tombstone || self.exempt(write) {
                continue;
            }
            checked += 1;
            let live = finals[write.key].iter().any(|(tag, _)| *tag == write.tag);
            if !live && !self.superseded(index) {
                violations.push(format!(
                    "acknowledged write {} to key {} (w={}, acked by {:?}) is lost: final versions {:?}",
                    write.tag,
                    write.key,
                    write.w,
                    write.acked.as_ref().map(|a| &a.by),
                    finals[write.key]
                ));
            }
        }
        self.counts.checked_writes += checked;
        for (key, versions) in finals.iter().enumerate() {
            for (tag, tombstone) in versions {
                if *tombstone {
                    continue;
                }
                self.counts.checked_versions += 1;
                let Some(&live) = self.by_tag.get(tag) else { continue };
                let seen_by = self
                    .writes
                    .iter()
                    .enumerate()
                    .find(|(j, w)| w.acked.is_some() && !self.exempt(w) && self.closure[*j].contains(&live));
                if let Some((_, by)) = seen_by {
                    violations.push(format!(
                        "value {tag} of key {key} is live, but acknowledged {} {} had seen it",
                        if by.tombstone { "delete" } else { "write" },
                        by.tag
                    ));
                }
            }
        }
        self.violations.extend(violations);
    }

    /// Rule 4: `gainer` finished a move of keys whose held versions `held` gives. `due` lists the
    /// acknowledged writes it must hold (the caller decided from the sources' stores at the
    /// start of the move); each must be held, or be superseded.
    pub fn check_move(&mut self, what: &str, gainer: &str, due: &[usize], held: &dyn Fn(usize) -> Vec<Seen>) {
        let mut violations = Vec::new();
        self.counts.checked_moves += due.len() as u64;
        for &index in due {
            let write = &self.writes[index];
            let versions = held(write.key);
            if !self.holds(&versions, index) && !self.superseded(index) {
                violations.push(format!(
                    "{what}: {gainer} finished gaining key {} without acknowledged write {} that enough sources held (it holds {versions:?})",
                    write.key, write.tag
                ));
            }
        }
        self.violations.extend(violations);
    }

    /// The index of the write with `tag`.
    pub fn index_of(&self, tag: &str) -> Option<usize> {
        self.by_tag.get(tag).copied()
    }
}

/// The `i`th key the clients share.
pub fn key(i: usize) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

/// The index of a key made by [`key`].
pub fn key_index(key: &[u8]) -> Option<usize> {
    std::str::from_utf8(key).ok()?.strip_prefix('k')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superseded_writes_may_go_and_unseen_ones_may_not() {
        let mut h = History::default();
        let a = h.begin_write("a".into(), 0, false, vec![], 2, 0);
        h.acknowledged(a, vec!["n1".into(), "n2".into()], 1);
        let b = h.begin_write("b".into(), 0, false, vec!["a".into()], 2, 0);
        h.acknowledged(b, vec!["n1".into(), "n2".into()], 2);
        h.created.extend(["a".to_owned(), "b".to_owned()]);
        let c = h.begin_write("c".into(), 0, false, vec![], 2, 0);
        h.acknowledged(c, vec!["n1".into(), "n3".into()], 3);
        h.created.insert("c".into());
        // b superseded a; c was blind and must survive.
        h.check_final(&[vec![("b".into(), false)]]);
        assert_eq!(h.violations.len(), 1, "{:?}", h.violations);
        assert!(h.violations[0].contains("write c"));
        // A value seen by an acknowledged delete must not be live.
        let mut h2 = History::default();
        let v = h2.begin_write("v".into(), 0, false, vec![], 2, 0);
        h2.acknowledged(v, vec!["n1".into(), "n2".into()], 1);
        let d = h2.begin_write("d".into(), 0, true, vec!["v".into()], 2, 0);
        h2.acknowledged(d, vec!["n1".into(), "n2".into()], 2);
        h2.created.extend(["v".to_owned(), "d".to_owned()]);
        h2.check_final(&[vec![("v".into(), false)]]);
        assert!(h2.violations.iter().any(|v| v.contains("is live")), "{:?}", h2.violations);
        // Too few acknowledgements.
        let mut h3 = History::default();
        let x = h3.begin_write("x".into(), 0, false, vec![], 3, 0);
        h3.acknowledged(x, vec!["n1".into(), "n1".into(), "n2".into()], 1);
        assert_eq!(h3.violations.len(), 1);
    }
}

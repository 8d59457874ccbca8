//! Which ranges move when membership changes, from whom and to whom: the pure part of
//! rebalancing, shared by `kvnode`'s rebalancer and the model checker.
//!
//! Every plan comes from the ownership diff of two rings ([`kv_ring::diff`]), cut into
//! non-wrapping intervals. The rules that keep acknowledged writes:
//!
//! - **A gained range is merged from every old owner that answers** ([`sources`]), and at least
//!   [`copies_needed`] of them (R, or all there are): a write acknowledged by W replicas is on at
//!   least one of any R of the N old owners when R + W > N, and each old owner may lack writes
//!   the others hold (it was down, or its store was replaced). One old owner is not enough.
//! - **A lost range goes to the nodes that gain it** ([`Move::gained`]), after the leaving node
//!   merged in the other old owners' copies (R copies with its own).
//! - **A dropped key goes to its current owners** ([`drop_targets`]) before it is removed.

use kv_ring::{diff, Ring};

use crate::topology::{Peer, Topology};

/// One interval (`lo..=hi`, not wrapping) whose replicas change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// First key hash.
    pub lo: u64,
    /// Last key hash.
    pub hi: u64,
    /// Replicas before, in preference order.
    pub old: Vec<String>,
    /// Replicas after that were not replicas before.
    pub gained: Vec<String>,
}

fn moves(before: &Ring, after: &Ring, n: usize, keep: impl Fn(&kv_ring::RangeMove) -> bool) -> Vec<Move> {
    diff(before, after, n)
        .into_iter()
        .filter(|m| keep(m))
        .flat_map(|m| {
            let gained: Vec<String> = m.gained().into_iter().map(str::to_owned).collect();
            let old = m.old.clone();
            m.range.intervals().into_iter().map(move |(lo, hi)| Move {
                lo,
                hi,
                old: old.clone(),
                gained: gained.clone(),
            })
        })
        .collect()
}

/// The intervals `me` gains from `before` to `after` (a join, or a removal of another member).
pub fn gained_by(before: &Ring, after: &Ring, n: usize, me: &str) -> Vec<Move> {
    moves(before, after, n, |m| m.gained().contains(&me))
}

/// The intervals `me` loses from `before` to `after` (a leave).
pub fn lost_by(before: &Ring, after: &Ring, n: usize, me: &str) -> Vec<Move> {
    moves(before, after, n, |m| m.lost().contains(&me))
}

/// The old owners a gained interval is merged from: every one of them but `exclude` (ourselves,
/// removed members).
pub fn sources(m: &Move, exclude: &[String]) -> Vec<String> {
    m.old.iter().filter(|id| !exclude.contains(id)).cloned().collect()
}

/// Copies a gained interval must be merged from, of `available` sources: R, or all there are.
pub fn copies_needed(read_quorum: usize, available: usize) -> usize {
    read_quorum.min(available)
}

/// `lo..=hi` cut where its owners in `ring` change: each piece with its `n` owners, in
/// preference order. What a node filling a range merges, and from whom.
pub fn owners_in(ring: &Ring, n: usize, lo: u64, hi: u64) -> Vec<Move> {
    let mut out: Vec<Move> = Vec::new();
    for range in ring.ranges() {
        for (a, b) in range.intervals() {
            let (a, b) = (a.max(lo), b.min(hi));
            if a > b {
                continue;
            }
            let old: Vec<String> = ring.preference_list_at(range.end, n).iter().map(|node| node.id.clone()).collect();
            out.push(Move { lo: a, hi: b, old, gained: Vec::new() });
        }
    }
    out.sort_by_key(|m| m.lo);
    out
}

/// Joins adjacent pieces (`lo..=hi`, sorted by `lo`) that have the same sources, in any order:
/// one scan per source covers them all (a source complete for each piece is complete for their
/// union). A node filling its whole ring in a 3-node cluster makes 2 scans instead of one per
/// vnode range and source (3,074 with the default vnodes).
pub fn coalesce(pieces: Vec<(u64, u64, Vec<String>)>) -> Vec<(u64, u64, Vec<String>)> {
    let mut out: Vec<(u64, u64, Vec<String>)> = Vec::with_capacity(pieces.len());
    for (lo, hi, mut sources) in pieces {
        sources.sort();
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(lo) && last.2 == sources => last.1 = hi,
            _ => out.push((lo, hi, sources)),
        }
    }
    out
}

/// Copies a filling node must merge when `refused` of its `sources` refused to be scanned
/// because they do not hold the range completely: a source that is itself filling the range
/// gained it too, so it is not one of the owners that could hold an acknowledged write the
/// others lack (and waiting for it could wait forever: two nodes filling the same range, each
/// the other's source, as when a cluster forms). R of the others, or all of them, and at least
/// one: with none complete, the fill waits.
pub fn copies_needed_without(read_quorum: usize, sources: usize, refused: usize) -> usize {
    if sources == 0 {
        return 0;
    }
    copies_needed(read_quorum, sources - refused.min(sources)).max(1)
}

/// Whether a key of a range being dropped is handed to its new owners: only if every version
/// it holds is younger than half the tombstone grace, and then the whole record. The hand-off
/// is for writes the node accepted just before it lost the range; a record with an older
/// version may hold one a tombstone superseded that was purged since (the node may learn of
/// the loss late, after a crash or a partition), and a tombstone is newer than what it deletes
/// and purged only once older than the grace. Half the grace leaves room for clock skew and
/// the hand-off itself. Never part of a record: a replica holding a version of an actor holds
/// every version of that actor the coordinator held beside it, and a reader's context covers
/// them all (handing off only the young siblings made the model checker lose writes); and not
/// by the newest version alone: an old sibling would travel with a young one.
pub fn hand_off(record: &kv_types::Record, now_ms: u64, grace_ms: u64) -> bool {
    let oldest = record.versions().iter().map(|v| v.written_at).min().unwrap_or(now_ms);
    now_ms.saturating_sub(oldest) <= grace_ms / 2
}

/// The replicas a dropped key is handed to: its current owners and its owners once the moves
/// in progress complete, except `me` and members known down.
pub fn drop_targets(topology: &Topology, key: &[u8], n: usize, me: &str) -> Vec<Peer> {
    let current = topology.preference_list(key, n);
    let pending = topology.pending_replicas(key, n, &current);
    current.into_iter().chain(pending).filter(|p| p.id != me && !topology.down.contains(&p.id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_ring::Node;

    fn ring(ids: &[&str]) -> Ring {
        Ring::with_vnodes(ids.iter().map(|id| Node::new(*id, "z")), 16).unwrap()
    }

    #[test]
    fn adjacent_pieces_with_the_same_sources_are_one_scan() {
        let s = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        let pieces = vec![
            (0, 9, s(&["a", "b"])),
            (10, 19, s(&["b", "a"])),
            (20, 29, s(&["a", "c"])),
            (31, 40, s(&["a", "c"])),
            (41, u64::MAX, s(&["a", "c"])),
        ];
        assert_eq!(
            coalesce(pieces),
            vec![(0, 19, s(&["a", "b"])), (20, 29, s(&["a", "c"])), (31, u64::MAX, s(&["a", "c"]))]
        );
        // The whole ring of a 3-node cluster: one piece per source set.
        let three = ring(&["a", "b", "c"]);
        let pieces: Vec<_> =
            owners_in(&three, 3, 0, u64::MAX).iter().map(|m| (m.lo, m.hi, sources(m, &["c".to_owned()]))).collect();
        assert!(pieces.len() > 1);
        assert_eq!(coalesce(pieces), vec![(0, u64::MAX, s(&["a", "b"]))]);
    }

    #[test]
    fn a_source_filling_the_same_range_does_not_count() {
        assert_eq!(copies_needed_without(2, 2, 0), 2);
        assert_eq!(copies_needed_without(2, 2, 1), 1, "the other filler is not an old owner");
        assert_eq!(copies_needed_without(2, 3, 1), 2);
        assert_eq!(copies_needed_without(2, 2, 2), 1, "with no complete source, wait");
        assert_eq!(copies_needed_without(2, 0, 0), 0, "nothing to merge from: complete");
    }

    #[test]
    fn a_join_gains_from_every_old_owner_and_a_leave_hands_to_the_gainers() {
        let three = ring(&["a", "b", "c"]);
        let four = ring(&["a", "b", "c", "d"]);
        let gains = gained_by(&three, &four, 3, "d");
        assert!(!gains.is_empty());
        for m in &gains {
            assert_eq!(m.gained, vec!["d".to_owned()]);
            assert_eq!(sources(m, &["d".to_owned()]).len(), 3, "every old owner is a source");
        }
        assert_eq!(copies_needed(2, 3), 2);
        assert_eq!(copies_needed(2, 1), 1);
        let losses = lost_by(&four, &three, 3, "d");
        assert_eq!(
            losses.iter().map(|m| (m.lo, m.hi)).collect::<Vec<_>>(),
            gains.iter().map(|m| (m.lo, m.hi)).collect::<Vec<_>>()
        );
        assert!(losses.iter().all(|m| m.gained.len() == 1 && m.old.contains(&"d".to_owned())));
    }

    #[test]
    fn owners_in_cuts_a_range_where_its_owners_change() {
        let four = ring(&["a", "b", "c", "d"]);
        let pieces = owners_in(&four, 3, 0, u64::MAX);
        assert_eq!(pieces.first().map(|m| m.lo), Some(0));
        assert_eq!(pieces.last().map(|m| m.hi), Some(u64::MAX));
        for pair in pieces.windows(2) {
            assert_eq!(pair[0].hi + 1, pair[1].lo, "pieces tile the range");
        }
        for m in &pieces {
            let key_owners: Vec<String> = four.preference_list_at(m.hi, 3).iter().map(|n| n.id.clone()).collect();
            assert_eq!(m.old, key_owners);
        }
        let part = owners_in(&four, 3, 1000, 2000);
        assert!(part.iter().all(|m| m.lo >= 1000 && m.hi <= 2000));
    }
}

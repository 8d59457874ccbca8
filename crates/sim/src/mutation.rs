//! The rules the model checker can break on purpose, to show that it catches each.

/// A rule broken on purpose, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The rules as they are.
    None,
    /// Dot counters per key, one above the highest the key shows: after a purge a coordinator
    /// reissues dots that a surviving copy of the tombstone already covers.
    PerKeyCounters,
    /// A join copies each range from one old owner only (the first that answers).
    JoinFromOneOwner,
    /// A range a node gains is complete at once: it serves and coordinates it without merging
    /// it from its owners first.
    NoFilling,
    /// A former owner hands off every key it drops, however old: a version a purged delete
    /// superseded comes back.
    HandOffOld,
    /// A former owner hands off only the young versions of a key: the new owner holds a later
    /// dot of an actor without the earlier sibling it covers, and a reader's context drops it.
    HandOffYoungVersions,
    /// Joins and leaves plan against the current ring with only their own change applied, not
    /// against the ring once every move in progress completes: two joins at once each pull
    /// ranges the other takes, and their own accepting sets refuse them (a livelock).
    PlanAgainstCurrentRing,
    /// Peers accept calls from a member that left or was removed: one paused through its
    /// removal resumes and hands out copies that deletes purged since superseded.
    AcceptRemovedSenders,
    /// A node whose clock is off by more than the bound does not fence itself: its stamps and
    /// its judgements of age break the rules that assume clocks agree within the bound.
    NoClockFence,
    /// A replica coordinates a key while a dot it issued for the key is not stored there yet
    /// (rule 15): the new version's set lacks that version, whose dot its counter covers.
    ForgetOutstandingDots,
    /// A node restarted after a crash keeps its actor (no new epoch): a dot the crashed run
    /// issued and never stored there is covered by the next run's counters (rule 15).
    KeepActorAfterCrash,
}

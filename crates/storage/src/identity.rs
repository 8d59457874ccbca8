//! The store's identity as a writer of vector-clock events, and its dot counter.
//!
//! A dot `(actor, counter)` must name one event, forever. Two rules make sure it does:
//!
//! - **An actor is a storage incarnation.** The first time a store is opened it draws a random
//!   64-bit *incarnation* and records it inside the store itself (a reserved key beside the
//!   records, made durable before any dot is issued). The node names its actor after its node
//!   id and this incarnation. A wiped or replaced disk, or the memory engine after a restart,
//!   has no incarnation: it draws a new one and is a new actor, so it can never reissue a dot
//!   its former self issued (the "local amnesia" of Riak KV issue 679).
//! - **Counters never go backwards, across all keys.** One counter per store, not per key:
//!   every dot it issues is above every dot it issued before, for any key, so a dot issued
//!   after a key's tombstone was purged can never be covered by a copy of that tombstone that
//!   survives somewhere (Riak's "doomstone"). The counter is *leased*: the store records
//!   `lease_end` durably and issues counters below it without touching the disk; reaching it
//!   records a new lease first. Every open records a new lease too, and the counter resumes at
//!   the previous `lease_end`, above anything issued before the crash. So each run of a store
//!   holds a lease no earlier run held: a copy of the store taken before its latest lease (a
//!   backup restored over it) has a smaller one, which peers that heard the latest can tell
//!   (`Engine::counter_lease`; the node gossips it and refuses to serve an older copy).
//!
//! - **A run that may have lost track of a dot is a new actor.** A replica issues a dot before
//!   any copy of its version is stored (the front replicates it to every replica at once, this
//!   one included: rule 15 of docs/consistency.md), so a run can end with a dot issued whose
//!   version this store never received. A later run issuing higher counters for that key under
//!   the same actor would claim to have seen it. So every open counts an *epoch*: a run that did
//!   not end by [`crate::Engine::mark_clean`] (a crash, or a clean stop with dots unaccounted
//!   for) makes the next open draw the next epoch, and the node names its actor after it.
//!
//! Evidence of amnesia (a version arriving from a peer with a counter of ours at or above what
//! we would issue next: a store restored from an old copy) moves the counter past it
//! ([`DotCounter::observe`]), as Riak KV's fix for issue 679 does.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::{Error, Result};

/// Name of the reserved key holding the identity.
pub(crate) const IDENTITY_META: &str = "ident";

/// Name of the reserved key holding the run's epoch and whether the last run ended clean.
pub(crate) const RUN_META: &str = "run";

/// The formats of the identity and run records ([`crate::format`]; 0.1.0's were bare postcard
/// of the same shapes).
const IDENTITY_FORMAT: u8 = 1;
const RUN_FORMAT: u8 = 1;

/// Counters issued per recorded lease: one durable write per 65,536 dots. A restart skips what
/// was left of the lease; at this size a node restarted every second for a century uses 2^47 of
/// the 2^56 counters a clock may hold ([`kv_vclock::MAX_COUNTER`]).
pub const COUNTER_LEASE: u64 = 1 << 16;

/// What is recorded in the store.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Recorded {
    incarnation: u64,
    lease_end: u64,
}

/// The epoch of the current run and whether it ended cleanly, recorded beside the identity.
/// A store without it (new, or written by a version that applied every dot it issued before
/// answering) counts as epoch 0, ended cleanly.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Run {
    epoch: u64,
    clean: bool,
}

/// The store's identity as a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Random, drawn when the store was first opened; never reused.
    pub incarnation: u64,
    /// Whether the incarnation was drawn by this open: the store held nothing of a former self
    /// (new, wiped, or a memory store). A node that was a member before must then join again.
    pub fresh: bool,
    /// The counter lease the store had recorded when this open found it: every counter earlier
    /// runs of this store issued is below it, unless the store is an older copy of itself. This
    /// open recorded a larger one ([`crate::Engine::counter_lease`]).
    pub lease_at_open: u64,
    /// The epoch of this run: the number of earlier runs that did not end cleanly
    /// ([`crate::Engine::mark_clean`]). Part of the actor name, so a run that may have issued a
    /// dot it never stored is never continued by a later run under the same actor.
    pub epoch: u64,
}

struct Counter {
    /// The next counter to issue.
    next: u64,
    /// Every issued counter is below this recorded value.
    lease_end: u64,
}

/// The identity and the leased counter.
pub(crate) struct DotCounter {
    identity: Mutex<Identity>,
    counter: Mutex<Counter>,
}

impl DotCounter {
    /// Loads the identity from `backend`, or draws and records a new one.
    pub(crate) fn open(backend: &dyn Backend) -> Result<DotCounter> {
        let key = crate::meta_key(IDENTITY_META);
        let (recorded, fresh) = match backend.get(&key)? {
            Some(bytes) => {
                let recorded: Recorded =
                    crate::format::decode(&bytes, IDENTITY_FORMAT, |r: Recorded| r, "store identity")
                        .map_err(|e| Error::Corrupt(format!("store identity does not decode: {e}")))?;
                (recorded, false)
            }
            None => {
                let incarnation = getrandom::u64()
                    .map_err(|e| Error::Io(format!("no randomness for a new store incarnation: {e}")))?;
                let recorded = Recorded { incarnation, lease_end: 1 };
                write(backend, &recorded)?;
                (recorded, true)
            }
        };
        let counter = DotCounter {
            identity: Mutex::new(Identity {
                incarnation: recorded.incarnation,
                fresh,
                lease_at_open: recorded.lease_end,
                epoch: 0,
            }),
            counter: Mutex::new(Counter { next: recorded.lease_end, lease_end: recorded.lease_end }),
        };
        counter.begin_run(backend)?;
        Ok(counter)
    }

    /// Starts a run: the next epoch unless the last run ended cleanly, recorded as not ended
    /// yet, and a new lease, even if the run issues nothing; all durable before any dot.
    pub(crate) fn begin_run(&self, backend: &dyn Backend) -> Result<()> {
        let key = crate::meta_key(RUN_META);
        let last = match backend.get(&key)? {
            Some(bytes) => crate::format::decode(&bytes, RUN_FORMAT, |r: Run| r, "store run record")
                .map_err(|e| Error::Corrupt(format!("store run record does not decode: {e}")))?,
            None => Run { epoch: 0, clean: true },
        };
        let epoch = if last.clean { last.epoch } else { last.epoch + 1 };
        backend.put(&key, &crate::format::encode(RUN_FORMAT, &Run { epoch, clean: false }))?;
        self.identity.lock().epoch = epoch;
        let mut counter = self.counter.lock();
        let resume = counter.lease_end;
        counter.next = counter.next.max(resume);
        // `cover` syncs, making the run record durable with the lease.
        self.cover(&mut counter, resume, backend)
    }

    /// Records that this run ended with every dot it issued accounted for: the next open keeps
    /// the epoch.
    pub(crate) fn mark_clean(&self, backend: &dyn Backend) -> Result<()> {
        let run = Run { epoch: self.identity().epoch, clean: true };
        backend.put(&crate::meta_key(RUN_META), &crate::format::encode(RUN_FORMAT, &run))?;
        backend.sync()
    }

    /// Records `incarnation` as the identity of an empty backend (deterministic simulation).
    pub(crate) fn preset(backend: &dyn Backend, incarnation: u64) -> Result<()> {
        write(backend, &Recorded { incarnation, lease_end: 1 })
    }

    pub(crate) fn identity(&self) -> Identity {
        *self.identity.lock()
    }

    pub(crate) fn mark_fresh(&self) {
        self.identity.lock().fresh = true;
    }

    /// Every counter issued so far is below this.
    pub(crate) fn ceiling(&self) -> u64 {
        self.counter.lock().next
    }

    /// The recorded lease: every counter issued so far, and until the next lease, is below it.
    pub(crate) fn lease_end(&self) -> u64 {
        self.counter.lock().lease_end
    }

    /// A counter above `floor` and above every counter issued before.
    pub(crate) fn issue(&self, floor: u64, backend: &dyn Backend) -> Result<u64> {
        let mut counter = self.counter.lock();
        let issued = counter.next.max(floor.saturating_add(1));
        if issued > kv_vclock::MAX_COUNTER {
            return Err(Error::Corrupt(format!("dot counter {issued} is beyond the highest possible")));
        }
        self.cover(&mut counter, issued, backend)?;
        counter.next = issued + 1;
        Ok(issued)
    }

    /// Makes every future counter greater than `seen`, a counter of ours found in a version from
    /// elsewhere. Returns whether the counter had to move (evidence of amnesia).
    pub(crate) fn observe(&self, seen: u64, backend: &dyn Backend) -> Result<bool> {
        let mut counter = self.counter.lock();
        if seen < counter.next || seen >= kv_vclock::MAX_COUNTER {
            return Ok(false);
        }
        self.cover(&mut counter, seen + 1, backend)?;
        counter.next = seen + 1;
        Ok(true)
    }

    /// Records a new lease when `counter` is not below the recorded one.
    fn cover(&self, counter: &mut Counter, value: u64, backend: &dyn Backend) -> Result<()> {
        if value >= counter.lease_end {
            let lease_end = value.saturating_add(COUNTER_LEASE).min(kv_vclock::MAX_COUNTER + 1);
            write(backend, &Recorded { incarnation: self.identity().incarnation, lease_end })?;
            counter.lease_end = lease_end;
        }
        Ok(())
    }
}

/// Records `recorded` durably.
fn write(backend: &dyn Backend, recorded: &Recorded) -> Result<()> {
    let bytes = crate::format::encode(IDENTITY_FORMAT, recorded);
    backend.put(&crate::meta_key(IDENTITY_META), &bytes)?;
    backend.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    #[test]
    fn counters_rise_across_keys_and_restarts_and_a_new_store_is_a_new_actor() {
        let backend = MemoryBackend::default();
        let first = DotCounter::open(&backend).unwrap();
        assert!(first.identity().fresh);
        let a = first.issue(0, &backend).unwrap();
        let b = first.issue(0, &backend).unwrap();
        assert!(b > a);
        // A floor from a context or a stored version lifts the counter.
        let c = first.issue(1000, &backend).unwrap();
        assert_eq!(c, 1001);
        // Reopening the same store: same actor, counters above everything issued.
        let again = DotCounter::open(&backend).unwrap();
        assert!(!again.identity().fresh);
        assert_eq!(again.identity().incarnation, first.identity().incarnation);
        assert!(again.issue(0, &backend).unwrap() > c);
        // An empty store is a new actor.
        let other = MemoryBackend::default();
        let wiped = DotCounter::open(&other).unwrap();
        assert!(wiped.identity().fresh);
        assert_ne!(wiped.identity().incarnation, first.identity().incarnation);
    }

    #[test]
    fn a_run_that_did_not_end_clean_makes_the_next_a_new_epoch() {
        let backend = MemoryBackend::default();
        let first = DotCounter::open(&backend).unwrap();
        assert_eq!(first.identity().epoch, 0);
        let issued = first.issue(0, &backend).unwrap();
        // A crash: the next run is the next epoch, and counters still rise.
        let second = DotCounter::open(&backend).unwrap();
        assert_eq!(second.identity().epoch, 1);
        assert!(second.issue(0, &backend).unwrap() > issued);
        // A clean end keeps the epoch, once.
        second.mark_clean(&backend).unwrap();
        let third = DotCounter::open(&backend).unwrap();
        assert_eq!(third.identity().epoch, 1);
        let fourth = DotCounter::open(&backend).unwrap();
        assert_eq!(fourth.identity().epoch, 2);
        // A restart in place (the simulation's) counts the same way.
        fourth.begin_run(&backend).unwrap();
        assert_eq!(fourth.identity().epoch, 3);
        assert_eq!(fourth.identity().incarnation, first.identity().incarnation);
    }

    #[test]
    fn evidence_of_amnesia_moves_the_counter_past_it() {
        let backend = MemoryBackend::default();
        let counter = DotCounter::open(&backend).unwrap();
        let issued = counter.issue(0, &backend).unwrap();
        assert!(!counter.observe(issued, &backend).unwrap(), "our own past counter is no news");
        assert!(counter.observe(issued + 5_000_000, &backend).unwrap());
        assert!(counter.issue(0, &backend).unwrap() > issued + 5_000_000);
        // The move is durable.
        let reopened = DotCounter::open(&backend).unwrap();
        assert!(reopened.issue(0, &backend).unwrap() > issued + 5_000_000);
        assert!(counter.issue(kv_vclock::MAX_COUNTER, &backend).is_err(), "never beyond the bound");
    }
}

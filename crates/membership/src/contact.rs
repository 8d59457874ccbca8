//! Contact with the other members, and freezes of this process: what
//! [`Membership::confirm`](crate::Membership::confirm) decides on.
//!
//! Two different gaps. *Out of contact*: no news of another member for the limit while this
//! process ran (the others are down, or a partition cut it off). *Frozen*: this process itself
//! did not run for the limit (SIGSTOP, a VM pause, a host that slept, a stall far beyond any
//! scheduling delay), so that whatever it holds in its queues and its view predates what the
//! cluster did meanwhile. A watch thread of its own (not a task of the busy runtime: a loaded
//! runtime must not look frozen) beats every 100 ms; a beat, or a check, that finds the last
//! beat older than the limit by the monotonic or the wall clock (the monotonic clock stops while
//! a host sleeps) marks the process frozen until another member answers an exchange sent after
//! the freeze was seen ([`Contact::answered`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the watch thread beats.
const BEAT: Duration = Duration::from_millis(100);
/// The shortest gap between beats taken as a freeze: well above a beat and any scheduling delay
/// of a thread on a loaded host, far below what a removal and a purge take.
const MIN_FREEZE: Duration = Duration::from_secs(1);

/// Contact with the other members, and freezes of this process.
pub(crate) struct Contact {
    started: Instant,
    /// When we last heard news of another member (ms on `started`'s clock); `u64::MAX`: never.
    last_ms: AtomicU64,
    /// The same on the wall clock.
    last_wall_ms: AtomicU64,
    /// The watch thread's last beat, on both clocks; `u64::MAX`: not watching.
    beat_ms: AtomicU64,
    beat_wall_ms: AtomicU64,
    /// A gap longer than this between beats is a freeze, ms.
    limit_ms: AtomicU64,
    /// Freezes seen so far (every gap counts, also one seen while already frozen; an exchange
    /// clears a freeze only if none was seen between its sending and its answer) times two,
    /// plus one while a freeze is not cleared: one word, so that a freeze seen while an answer
    /// clears the previous one is never lost.
    freezes: AtomicU64,
}

impl Contact {
    pub(crate) fn new(started: Instant) -> Contact {
        Contact {
            started,
            last_ms: AtomicU64::new(u64::MAX),
            last_wall_ms: AtomicU64::new(0),
            beat_ms: AtomicU64::new(u64::MAX),
            beat_wall_ms: AtomicU64::new(0),
            limit_ms: AtomicU64::new(u64::MAX),
            freezes: AtomicU64::new(0),
        }
    }

    /// Now on both clocks: ms on `started`'s monotonic clock, ms of the wall clock.
    pub(crate) fn now(&self) -> (u64, u64) {
        (self.started.elapsed().as_millis() as u64, kv_transport::signer::now_ms())
    }

    /// News of another member was merged just now.
    pub(crate) fn heard(&self) {
        let (now, wall) = self.now();
        self.last_ms.store(now, Ordering::Release);
        self.last_wall_ms.store(wall, Ordering::Release);
    }

    /// Whether news of another member came within `after_ms`, by both clocks.
    pub(crate) fn heard_within(&self, after_ms: u64) -> bool {
        let (now, wall) = self.now();
        let last = self.last_ms.load(Ordering::Acquire);
        last != u64::MAX
            && now.saturating_sub(last) <= after_ms
            && wall.saturating_sub(self.last_wall_ms.load(Ordering::Acquire)) <= after_ms
    }

    /// Starts the watch thread: a gap of more than `limit` (at least a second) between two beats
    /// is a freeze. The thread ends when the last reference to `self` goes. Without the thread
    /// the process would look frozen for good: failing to start it is an error.
    pub(crate) fn watch(self: &Arc<Self>, limit: Duration) -> std::io::Result<()> {
        self.limit_ms.store(limit.max(MIN_FREEZE).as_millis() as u64, Ordering::Release);
        self.beat();
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("freeze-watch".into()).spawn(move || {
            while let Some(contact) = weak.upgrade() {
                contact.beat();
                drop(contact);
                std::thread::sleep(BEAT);
            }
        });
        if spawned.is_err() {
            self.limit_ms.store(u64::MAX, Ordering::Release);
        }
        spawned.map(drop)
    }

    /// One beat of the watch thread: the gap since the last beat checked, and the beat stored,
    /// with one reading of the clocks (a pause between two readings would hide its gap).
    fn beat(&self) {
        let (now, wall) = self.now();
        self.gap_check(now, wall);
        self.beat_ms.store(now, Ordering::Release);
        self.beat_wall_ms.store(wall, Ordering::Release);
    }

    /// Marks the process frozen if the last beat is older than the limit at `(now, wall)` by
    /// either clock.
    fn gap_check(&self, now: u64, wall: u64) {
        let beat = self.beat_ms.load(Ordering::Acquire);
        let limit = self.limit_ms.load(Ordering::Acquire);
        if beat == u64::MAX || limit == u64::MAX {
            return;
        }
        let gap = now.saturating_sub(beat).max(wall.saturating_sub(self.beat_wall_ms.load(Ordering::Acquire)));
        // The thread that sees a gap first beats in its place: the gap counts once (every
        // request after a pause sees it until the watch thread runs), and a later pause is a
        // gap of its own.
        if gap > limit && self.beat_ms.compare_exchange(beat, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.beat_wall_ms.store(wall, Ordering::Release);
            let before = self.freezes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| Some((f | 1) + 2));
            if before.is_ok_and(|f| f & 1 == 0) {
                tracing::warn!(
                    gap_ms = gap,
                    limit_ms = limit,
                    "this process did not run for longer than the contact limit (paused, or its host slept): it \
                     confirms that it is still a member before it serves again"
                );
            }
        }
    }

    /// Checks for a gap now.
    fn check_now(&self) {
        let (now, wall) = self.now();
        self.gap_check(now, wall);
    }

    /// The shortest gap between beats taken as a freeze, ms.
    pub(crate) fn freeze_limit_ms(&self) -> u64 {
        self.limit_ms.load(Ordering::Acquire)
    }

    /// Whether this process froze and no confirmation has cleared it since.
    pub(crate) fn frozen(&self) -> bool {
        self.check_now();
        self.freezes.load(Ordering::Acquire) & 1 == 1
    }

    /// The mark of an exchange about to be sent, for [`Contact::answered`]: the freezes seen
    /// until now.
    pub(crate) fn mark(&self) -> u64 {
        self.check_now();
        self.freezes.load(Ordering::Acquire) >> 1
    }

    /// An exchange sent at `mark` ([`Contact::mark`]) was answered by a member that was not
    /// frozen itself, or every member answered it: if no freeze was seen between its sending
    /// and now, the answer (merged before this call) tells what the cluster did while this
    /// process was frozen, and the freeze is cleared.
    pub(crate) fn answered(&self, mark: u64) {
        if self.clear(mark).is_ok() {
            tracing::info!("another member answered since this process resumed: it serves again");
        }
    }

    /// Clears the freeze if it is frozen with exactly `mark` freezes seen; else the word as it
    /// is (freezes times two, plus one while frozen).
    fn clear(&self, mark: u64) -> Result<(), u64> {
        self.check_now();
        let frozen = (mark << 1) | 1;
        self.freezes.compare_exchange(frozen, frozen - 1, Ordering::AcqRel, Ordering::Acquire).map(drop)
    }

    /// An operator who saw `seen` freezes ([`Contact::mark`]) vouched that no member was
    /// removed while this process was frozen: the freeze is cleared as an answer would clear it,
    /// unless another was seen since (that one the operator did not vouch for: `Err` with the
    /// count now). Whether it was frozen.
    pub(crate) fn vouched(&self, seen: u64) -> Result<bool, u64> {
        match self.clear(seen) {
            Ok(()) => Ok(true),
            Err(now) if now & 1 == 0 => Ok(false),
            Err(now) => Err(now >> 1),
        }
    }

    /// Marks the process frozen as if it had not run for longer than the limit (tests).
    #[cfg(test)]
    pub(crate) fn freeze(&self) {
        let _ = self.freezes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| Some((f | 1) + 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_between_beats_is_a_freeze_until_thawed() {
        let contact = Contact::new(Instant::now());
        // Not watching: never frozen.
        assert!(!contact.frozen());
        contact.beat_ms.store(0, Ordering::Release);
        contact.beat_wall_ms.store(kv_transport::signer::now_ms(), Ordering::Release);
        contact.limit_ms.store(50, Ordering::Release);
        assert!(!contact.frozen());
        let before = contact.mark();
        std::thread::sleep(Duration::from_millis(80));
        // No beat for longer than the limit: frozen, and it stays so after the next beat.
        assert!(contact.frozen());
        contact.beat();
        assert!(contact.frozen());
        // An answer to an exchange sent before the freeze was seen does not clear it; one
        // sent after does.
        contact.answered(before);
        assert!(contact.frozen());
        let after = contact.mark();
        contact.answered(after);
        assert!(!contact.frozen());
        // Frozen again: an exchange sent after the first freeze but before a second one,
        // answered after it, clears neither.
        contact.freeze();
        let between = contact.mark();
        std::thread::sleep(Duration::from_millis(80));
        contact.answered(between);
        assert!(contact.frozen(), "a second freeze after the exchange was sent");
        contact.beat();
        contact.answered(contact.mark());
        assert!(!contact.frozen());
        // A wall clock that jumped ahead of the last beat (a host that slept) is a freeze too.
        contact.beat();
        contact.beat_wall_ms.store(kv_transport::signer::now_ms() - 1000, Ordering::Release);
        assert!(contact.frozen());
    }

    #[test]
    fn the_watch_thread_keeps_a_running_process_unfrozen() {
        let contact = Arc::new(Contact::new(Instant::now()));
        contact.watch(Duration::from_millis(400)).unwrap();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            assert!(!contact.frozen());
        }
        assert!(!contact.heard_within(1000), "nothing heard yet");
        contact.heard();
        assert!(contact.heard_within(1000));
    }
}

//! [`ReplayGuard`]: every signed request is accepted once.
//!
//! A signature names its sender (a random 64-bit id drawn by each process at start), its
//! destination, and a sequence number that sender never repeats for that destination. The
//! receiver keeps, per (sender, destination), the highest sequence number seen and a window of
//! the [`WINDOW`] below it (a bitmap, as IPsec's anti-replay window): a number seen before, or
//! below the window, is a replay. Requests from one sender to one destination travel on several
//! connections at once, so they may arrive out of order, but never by more than the sender's
//! calls in flight to it (hundreds), far below the window; numbering per destination keeps a
//! sender's traffic to others from moving the window.
//!
//! Bounded: a sender not heard from for twice the clock skew allowed is forgotten (its requests
//! carry timestamps; any replay of them is refused as too old by then), and at most
//! [`MAX_SENDERS`] are kept: a new sender past that is refused until some are forgotten. Only
//! requests whose signature checked reach the guard, so only holders of the secret can fill it.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Sequence numbers remembered below a sender's highest one.
pub const WINDOW: u64 = 4096;

const WORDS: usize = (WINDOW / 64) as usize;

/// (Sender, destination) pairs remembered at once (about 600 bytes each).
pub const MAX_SENDERS: usize = 65_536;

/// One sender's window: bit `i` set means `max - i` was seen.
struct Window {
    max: u64,
    bits: [u64; WORDS],
    last_ms: u64,
}

impl Window {
    fn seen(&self, offset: u64) -> bool {
        self.bits[(offset / 64) as usize] & (1 << (offset % 64)) != 0
    }

    fn mark(&mut self, offset: u64) {
        self.bits[(offset / 64) as usize] |= 1 << (offset % 64);
    }

    /// Moves the window up by `by` (bit `i` becomes bit `i + by`).
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..WORDS).rev() {
            let low = if i >= words { self.bits[i - words] } else { 0 };
            let lower = if bits > 0 && i > words { self.bits[i - words - 1] >> (64 - bits) } else { 0 };
            self.bits[i] = if bits > 0 { (low << bits) | lower } else { low };
        }
    }
}

/// Why a request was refused as a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Its sequence number was seen before.
    Seen,
    /// Its sequence number is below the sender's window.
    TooOld,
    /// Too many senders are remembered; a new one must wait.
    Full,
}

/// Remembers which (sender, sequence number) pairs were accepted.
pub struct ReplayGuard {
    /// Per sender, its destinations' windows (a sender calls a few destinations: looked up in
    /// place, with no allocation per request).
    senders: Mutex<HashMap<u64, Vec<(String, Window)>>>,
    /// Windows held, all senders together.
    windows: std::sync::atomic::AtomicUsize,
    /// Senders idle this long are forgotten.
    forget_after_ms: u64,
}

impl ReplayGuard {
    /// A guard that forgets senders idle for `forget_after_ms` (twice the allowed clock skew).
    pub fn new(forget_after_ms: u64) -> ReplayGuard {
        ReplayGuard { senders: Mutex::new(HashMap::new()), windows: Default::default(), forget_after_ms }
    }

    /// Accepts `seq` of `sender` for destination `to` at `now_ms` if it was not accepted
    /// before; `seq` is at least 1.
    pub fn check(&self, sender: u64, to: &str, seq: u64, now_ms: u64) -> Result<(), Replay> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut senders = self.senders.lock();
        let known = senders.get(&sender).is_some_and(|ws| ws.iter().any(|(t, _)| t == to));
        if !known && self.windows.load(Relaxed) >= MAX_SENDERS {
            let cutoff = now_ms.saturating_sub(self.forget_after_ms);
            senders.retain(|_, ws| {
                ws.retain(|(_, w)| w.last_ms >= cutoff);
                !ws.is_empty()
            });
            self.windows.store(senders.values().map(Vec::len).sum(), Relaxed);
            if self.windows.load(Relaxed) >= MAX_SENDERS {
                return Err(Replay::Full);
            }
        }
        let windows = senders.entry(sender).or_default();
        let index = match windows.iter().position(|(t, _)| t == to) {
            Some(index) => index,
            None => {
                windows.push((to.to_owned(), Window { max: 0, bits: [0; WORDS], last_ms: now_ms }));
                self.windows.fetch_add(1, Relaxed);
                windows.len() - 1
            }
        };
        let window = &mut windows[index].1;
        window.last_ms = window.last_ms.max(now_ms);
        if seq > window.max {
            window.shift(seq - window.max);
            window.max = seq;
            window.mark(0);
            return Ok(());
        }
        let offset = window.max - seq;
        if offset >= WINDOW {
            return Err(Replay::TooOld);
        }
        if window.seen(offset) {
            return Err(Replay::Seen);
        }
        window.mark(offset);
        Ok(())
    }

    /// (Sender, destination) windows remembered now.
    pub fn senders(&self) -> usize {
        self.windows.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_number_is_accepted_once_in_any_order_within_the_window() {
        let guard = ReplayGuard::new(60_000);
        for seq in [5, 3, 9, 4, 1000, 6, 8] {
            assert_eq!(guard.check(1, "a", seq, 0), Ok(()), "{seq}");
        }
        for seq in [5, 3, 9, 4, 1000, 6, 8] {
            assert_eq!(guard.check(1, "a", seq, 0), Err(Replay::Seen), "{seq}");
        }
        assert_eq!(guard.check(2, "a", 5, 0), Ok(()), "senders are apart");
        assert_eq!(guard.check(1, "b", 5, 0), Ok(()), "and destinations");
        assert_eq!(guard.check(1, "a", 1000 + WINDOW, 0), Ok(()));
        assert_eq!(guard.check(1, "a", 1000, 0), Err(Replay::TooOld));
        assert_eq!(guard.check(1, "a", 1001, 0), Ok(()));
    }

    #[test]
    fn idle_senders_are_forgotten_when_full() {
        let guard = ReplayGuard::new(1000);
        for sender in 0..MAX_SENDERS as u64 {
            guard.check(sender, "a", 1, 0).unwrap();
        }
        assert_eq!(guard.check(u64::MAX, "a", 1, 500), Err(Replay::Full));
        assert_eq!(guard.check(u64::MAX, "a", 1, 2000), Ok(()));
        assert_eq!(guard.senders(), 1);
    }

    proptest! {
        /// Against a set of everything accepted: a number is accepted iff it was never accepted
        /// and is within the window below the highest accepted.
        #[test]
        fn matches_a_model(seqs in proptest::collection::vec(1u64..20_000, 1..400)) {
            let guard = ReplayGuard::new(60_000);
            let mut accepted = std::collections::BTreeSet::new();
            for seq in seqs {
                let max = accepted.iter().next_back().copied().unwrap_or(0);
                let expect = if max >= WINDOW && seq <= max - WINDOW {
                    Err(Replay::TooOld)
                } else if accepted.contains(&seq) {
                    Err(Replay::Seen)
                } else {
                    Ok(())
                };
                prop_assert_eq!(guard.check(7, "a", seq, 0), expect, "seq {}", seq);
                if expect.is_ok() {
                    accepted.insert(seq);
                }
            }
        }
    }
}

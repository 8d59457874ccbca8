//! [`FailureDetector`]: who has gone quiet, as one observer sees it.
//!
//! A heartbeat-timeout detector: every member's (generation, heartbeat) pair is recorded with
//! the time it last rose; a member silent for longer than `suspect_after` is *suspected*. This
//! is only one observer's opinion: [`crate::Gossip::is_down`] declares a member down only when
//! others confirm it (the seed's rule), so one slow or partitioned observer cannot.
//!
//! Pure: time comes in as milliseconds from the caller.

use std::collections::HashMap;

/// When each member's heartbeat last rose, and who is silent for too long.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    /// Per member: the (generation, heartbeat) last seen and when it was first seen.
    seen: HashMap<String, ((u64, u64), u64)>,
    suspect_after_ms: u64,
}

impl FailureDetector {
    /// A detector suspecting members silent for more than `suspect_after_ms`.
    pub fn new(suspect_after_ms: u64) -> FailureDetector {
        FailureDetector { seen: HashMap::new(), suspect_after_ms }
    }

    /// Records that `id` was heard at `version` (generation, heartbeat) at `now_ms`. Callers
    /// report only versions newer than the last (a merge keeps the newer state).
    pub fn heard(&mut self, id: &str, version: (u64, u64), now_ms: u64) {
        self.seen.insert(id.to_owned(), (version, now_ms));
    }

    /// Whether `id` has been silent for longer than the timeout. A member never heard of is
    /// not suspected (there is nothing to time out yet).
    pub fn suspects(&self, id: &str, now_ms: u64) -> bool {
        self.seen.get(id).is_some_and(|(_, since)| now_ms.saturating_sub(*since) > self.suspect_after_ms)
    }

    /// When `id`'s heartbeat last rose.
    pub fn last_heard(&self, id: &str) -> Option<u64> {
        self.seen.get(id).map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_timeout_is_suspected_and_a_new_heartbeat_clears_it() {
        let mut detector = FailureDetector::new(1_000);
        assert!(!detector.suspects("a", 5_000), "never heard: not suspected");
        detector.heard("a", (1, 1), 0);
        assert!(!detector.suspects("a", 1_000));
        assert!(detector.suspects("a", 1_001));
        detector.heard("a", (1, 2), 1_500);
        assert!(!detector.suspects("a", 2_000));
        assert_eq!(detector.last_heard("a"), Some(1_500));
    }
}

//! [`ClockOffsets`]: each peer's clock offset, measured from gossip exchanges, and the clock
//! fence they decide.
//!
//! Tombstones are purged, hints delivered and keys handed off by comparing wall-clock stamps
//! made on one member with the clock of another (docs/consistency.md, "Clocks"). Those rules
//! hold while every member that acts is within `bound` of the cluster's clock, so that any two
//! differ by at most twice that. Every gossip exchange measures the peer's offset as NTP does:
//! the answer carries the peer's clock, and `offset = peer's clock - midpoint(sent, received)`,
//! good to half the round trip. A member whose clock is off by more than `bound` from a strict
//! majority of the members it measured (itself included, at offset 0) is *fenced*: it is the
//! odd one out. A fenced member serves no client, refuses replica calls and sends no peer
//! request but gossip until its clock agrees again. One member cannot fence the others: it sees
//! each of them off, but each of them sees only it off.
//!
//! With two members, neither can tell which clock is wrong, and neither is fenced; past
//! `--auth-max-skew` they refuse each other's signatures, so they cannot exchange data.
//!
//! The bound is `--max-clock-offset` (at most an eighth of the tombstone grace, so that two
//! members that act differ by at most a quarter of it). A refusal of our signature as too far
//! from the peer's clock carries the peer's clock too, so a member whose clock is far off
//! measures it even when every exchange is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{Gauge, GaugeVec, IntGauge, Opts, Registry};

/// How long a measurement counts: a peer not measured for this long (gone, or unreachable) is
/// left out of the decision.
pub const SAMPLE_TTL: Duration = Duration::from_secs(60);

/// One peer's latest measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Its clock minus ours, ms.
    offset_ms: i64,
    /// The round trip it was measured over, ms: the measurement is good to half of it.
    rtt_ms: u64,
    /// When it was taken.
    at: Instant,
}

/// The gauges: `kv_clock_offset_seconds{peer}`, `kv_clock_offset_limit_seconds`,
/// `kv_clock_fenced`.
#[derive(Clone)]
pub struct ClockMetrics {
    offsets: GaugeVec,
    limit: Gauge,
    fenced: IntGauge,
}

impl ClockMetrics {
    /// Creates the gauges and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<ClockMetrics> {
        let offsets = GaugeVec::new(
            Opts::new("kv_clock_offset_seconds", "Each peer's clock minus this process's, measured by gossip"),
            &["peer"],
        )?;
        let limit = Gauge::new(
            "kv_clock_offset_limit_seconds",
            "Largest offset from the cluster's clock a member may have before it fences itself (--max-clock-offset)",
        )?;
        let fenced = IntGauge::new(
            "kv_clock_fenced",
            "1 while this member's clock is off from most members' by more than the limit: it serves nothing",
        )?;
        registry.register(Box::new(offsets.clone()))?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(fenced.clone()))?;
        Ok(ClockMetrics { offsets, limit, fenced })
    }
}

/// Peers' clock offsets and the fence they decide. Cheap to query (an atomic).
pub struct ClockOffsets {
    bound_ms: u64,
    samples: Mutex<BTreeMap<String, Sample>>,
    fenced: AtomicBool,
    metrics: Option<ClockMetrics>,
}

impl ClockOffsets {
    /// Offsets whose fence is `bound` (`None`: never fenced, as in a gateway or a test).
    pub fn new(bound: Option<Duration>, metrics: Option<ClockMetrics>) -> ClockOffsets {
        let bound_ms = bound.map_or(u64::MAX, |b| b.as_millis() as u64);
        if let (Some(metrics), Some(bound)) = (&metrics, bound) {
            metrics.limit.set(bound.as_secs_f64());
        }
        ClockOffsets { bound_ms, samples: Mutex::new(BTreeMap::new()), fenced: AtomicBool::new(false), metrics }
    }

    /// Records a measurement of `peer`: its clock minus ours, over a round trip of `rtt_ms`.
    /// Returns whether the fence changed.
    pub fn record(&self, peer: &str, offset_ms: i64, rtt_ms: u64) -> bool {
        if let Some(metrics) = &self.metrics {
            metrics.offsets.with_label_values(&[peer]).set(offset_ms as f64 / 1000.0);
        }
        let mut samples = self.samples.lock();
        samples.insert(peer.to_owned(), Sample { offset_ms, rtt_ms, at: Instant::now() });
        self.decide(&samples)
    }

    /// Forgets `peer` (it left or was removed).
    pub fn forget(&self, peer: &str) {
        if let Some(metrics) = &self.metrics {
            let _ = metrics.offsets.remove_label_values(&[peer]);
        }
        let mut samples = self.samples.lock();
        if samples.remove(peer).is_some() {
            self.decide(&samples);
        }
    }

    /// Whether this member is fenced: its clock is off by more than the bound from a strict
    /// majority of the members it measured lately (itself included).
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// The median of the recent offsets (ours, 0, included), for messages.
    pub fn median_ms(&self) -> i64 {
        let samples = self.samples.lock();
        let mut offsets: Vec<i64> =
            samples.values().filter(|s| s.at.elapsed() < SAMPLE_TTL).map(|s| s.offset_ms).collect();
        offsets.push(0);
        offsets.sort_unstable();
        offsets[offsets.len() / 2]
    }

    /// The bound, ms.
    pub fn bound_ms(&self) -> u64 {
        self.bound_ms
    }

    fn decide(&self, samples: &BTreeMap<String, Sample>) -> bool {
        let recent: Vec<&Sample> = samples.values().filter(|s| s.at.elapsed() < SAMPLE_TTL).collect();
        let beyond = |sign: i64| {
            recent
                .iter()
                .filter(|s| {
                    // Only what the round trip cannot explain counts.
                    let certain = s.offset_ms.unsigned_abs().saturating_sub(s.rtt_ms / 2);
                    s.offset_ms.signum() == sign && certain > self.bound_ms
                })
                .count()
        };
        // Peers whose clock certainly agrees with ours (the offset plus the round trip's
        // uncertainty within the bound).
        let agree = recent.iter().filter(|s| s.offset_ms.unsigned_abs() + s.rtt_ms / 2 <= self.bound_ms).count();
        let members = recent.len() + 1;
        let was = self.fenced.load(Ordering::Acquire);
        // Fenced when a strict majority (us included) says our clock is off; lifted only when a
        // strict majority, with at least one peer, says it agrees: measurements that age out
        // (a peer gone quiet) never lift it alone.
        let fenced =
            if was { !(agree > 0 && 2 * (agree + 1) > members) } else { 2 * beyond(1).max(beyond(-1)) > members };
        self.fenced.store(fenced, Ordering::Release);
        if let Some(metrics) = &self.metrics {
            metrics.fenced.set(i64::from(fenced));
        }
        was != fenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_odd_clock_out_is_fenced_and_the_others_are_not() {
        let fast = ClockOffsets::new(Some(Duration::from_millis(500)), None);
        fast.record("n1", -20_000, 2);
        assert!(!fast.fenced(), "one peer of two members: a tie, no fence");
        fast.record("n2", -20_000, 2);
        fast.record("n3", -19_990, 2);
        assert!(fast.fenced(), "three of four members say its clock is 20 s ahead");
        assert_eq!(fast.median_ms(), -19_990);

        let normal = ClockOffsets::new(Some(Duration::from_millis(500)), None);
        normal.record("fast", 20_000, 2);
        normal.record("n2", 3, 2);
        normal.record("n3", -4, 2);
        assert!(!normal.fenced(), "only the fast member is off");

        // One peer agrees again, two still disagree: still fenced.
        fast.record("n1", 10, 2);
        assert!(fast.fenced());
        // The fast member's clock is fixed: a majority of measurements agree, the fence lifts.
        for peer in ["n2", "n3"] {
            fast.record(peer, 10, 2);
        }
        assert!(!fast.fenced());
    }

    #[test]
    fn what_the_round_trip_explains_does_not_fence() {
        let clock = ClockOffsets::new(Some(Duration::from_millis(500)), None);
        for peer in ["a", "b", "c"] {
            clock.record(peer, 900, 1000);
        }
        assert!(!clock.fenced(), "900 ms measured over a 1 s round trip may be 400 ms");
        for peer in ["a", "b", "c"] {
            clock.record(peer, 900, 10);
        }
        assert!(clock.fenced());
        let unbounded = ClockOffsets::new(None, None);
        for peer in ["a", "b", "c"] {
            unbounded.record(peer, i64::MAX / 2, 0);
        }
        assert!(!unbounded.fenced());
    }
}

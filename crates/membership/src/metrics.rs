//! Membership metrics.

use prometheus::{GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

/// `kv_members{status}`, `kv_gossip_rounds_total`, `kv_ring_ownership_ratio{member}` and
/// `kv_ranges_under_replicated`.
#[derive(Clone)]
pub struct MembershipMetrics {
    /// `kv_members{status}`: members by status as this process sees them (`down` counted apart).
    pub members: IntGaugeVec,
    /// `kv_gossip_rounds_total`.
    pub gossip_rounds: IntCounter,
    /// `kv_ring_ownership_ratio{member}`: the share of the key space each member is the first
    /// replica of, as this process sees the ring (they sum to 1).
    pub ownership: GaugeVec,
    /// `kv_ranges_under_replicated`: ranges of the ring (arcs between vnode tokens) with fewer
    /// than N replicas that are not down. Every process sees the same ring, so every one
    /// reports about the same number: alert on the largest.
    pub under_replicated: IntGauge,
    /// N, the replicas per key.
    pub replicas: usize,
    /// `kv_cluster_protocol_version`: the newest peer protocol every member speaks (what a
    /// feature that needs every member upgraded waits for).
    pub cluster_protocol: IntGauge,
}

impl MembershipMetrics {
    /// Creates the metrics and registers them in `registry`; `replicas` is N.
    pub fn register(registry: &Registry, replicas: usize) -> prometheus::Result<MembershipMetrics> {
        let members = IntGaugeVec::new(Opts::new("kv_members", "Members by status as seen here"), &["status"])?;
        let gossip_rounds = IntCounter::new("kv_gossip_rounds_total", "Gossip rounds run")?;
        let ownership = GaugeVec::new(
            Opts::new("kv_ring_ownership_ratio", "Share of the key space each member is the first replica of"),
            &["member"],
        )?;
        let under_replicated = IntGauge::new(
            "kv_ranges_under_replicated",
            "Ranges of the ring with fewer than N replicas that are not down, as seen here",
        )?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(gossip_rounds.clone()))?;
        registry.register(Box::new(ownership.clone()))?;
        let cluster_protocol = IntGauge::new(
            "kv_cluster_protocol_version",
            "The newest peer protocol every member speaks, as seen here (below this release's during an upgrade)",
        )?;
        registry.register(Box::new(under_replicated.clone()))?;
        registry.register(Box::new(cluster_protocol.clone()))?;
        Ok(MembershipMetrics { members, gossip_rounds, ownership, under_replicated, replicas, cluster_protocol })
    }

    /// Sets the ring's gauges from a new topology.
    pub(crate) fn ring(&self, topology: &kv_coordinator::Topology) {
        self.ownership.reset();
        for (member, share) in topology.ring.ownership(1) {
            self.ownership.with_label_values(&[&member]).set(share);
        }
        let under = topology
            .ring
            .ranges()
            .iter()
            .filter(|range| {
                let up = topology
                    .ring
                    .preference_list_at(range.end, self.replicas)
                    .iter()
                    .filter(|node| !topology.down.contains(&node.id))
                    .count();
                up < self.replicas
            })
            .count();
        self.under_replicated.set(i64::try_from(under).unwrap_or(i64::MAX));
    }
}

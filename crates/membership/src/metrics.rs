//! Membership metrics.

use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};

/// `kv_members{status}` and `kv_gossip_rounds_total`.
#[derive(Clone)]
pub struct MembershipMetrics {
    /// `kv_members{status}`: members by status as this process sees them (`down` counted apart).
    pub members: IntGaugeVec,
    /// `kv_gossip_rounds_total`.
    pub gossip_rounds: IntCounter,
}

impl MembershipMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<MembershipMetrics> {
        let members = IntGaugeVec::new(Opts::new("kv_members", "Members by status as seen here"), &["status"])?;
        let gossip_rounds = IntCounter::new("kv_gossip_rounds_total", "Gossip rounds run")?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(gossip_rounds.clone()))?;
        Ok(MembershipMetrics { members, gossip_rounds })
    }
}

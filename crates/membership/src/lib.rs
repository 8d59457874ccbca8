//! # Membership: the gossip view of a running process, and the topology built from it
//!
//! [`kv_gossip`] is the pure state machine (member states, merges, the removed set, the
//! [`kv_gossip::FailureDetector`]); this crate runs it in a process and turns it into what the
//! coordinator places keys with. Both `kvnode` and the stateless `kvgateway` use it; it knows
//! nothing of storage.
//!
//! [`Membership`] wraps a [`kv_gossip::Gossip`] (a node's own view, or an observer's in a
//! gateway) and publishes a [`kv_coordinator::Topology`] whenever the members, their status
//! or their liveness change:
//!
//! - the *read ring* holds members that own ranges now: normal and leaving ones, down or not
//!   (a down node keeps its ranges: a temporary failure moves no data);
//! - the *pending ring* holds the owners once moves complete: normal and joining ones; writes
//!   also go to its extra replicas;
//! - *down* members (confirmed by two observers) are tried last as coordinators.
//!
//! Nodes record every member's last state and the removed set in `data-dir/members.json`, so a
//! node restarted while a peer is down still places keys on that peer, and knows its own last
//! status. Every process keeps the removed set (the (id, incarnation) pairs an operator removed)
//! forever; a node that learns it was removed stops serving ([`Membership::removed_me`]).
//!
//! A new cluster *forms* before it serves clients: until a process has seen `--expect-nodes`
//! normal members at once (joining ones now down count), client requests are answered `503 cluster_forming`
//! ([`Membership::formed`]). Formed is gossiped and recorded: once any member saw it, every
//! process (a restarted node, a new gateway) serves at once, whatever left since.
//!
//! A node is *fenced* when it must not act: a peer refused it as no longer a member (it left or
//! was removed while it could not hear of it: [`Membership::fence`]; one that left on its own
//! sends nothing but gossip from then on and stops once `left` has spread), or its clock is off from
//! most members' ([`clock`]). [`Membership::confirm`], called before a node answers a client or
//! a replica call, refuses then, and after this process was frozen (paused, its host asleep:
//! `contact`) first exchanges views with the other members, so a node removed while it was
//! paused learns so before it hands out anything (docs/consistency.md, rules 12 and 13).
//!
//! [`GossipDriver`] is the worker that runs the rounds: bump our heartbeat, exchange states with
//! `--gossip-fanout` random live peers (and now and then with a seed, which heals partitions
//! and lets new members in), merge what comes back. Exchanges go through the one peer transport
//! ([`kv_transport`]) to the peers' `--peer-listen` addresses, which is what members gossip as
//! their address. A gateway runs it as an observer that owns no range.
//!
//! # Layout
//! - [`membership`] — [`Membership`], [`GossipDriver`], [`MemberInfo`], the rings.
//! - [`metrics`] — [`MembershipMetrics`].
//! - [`clock`] — [`clock::ClockOffsets`]: peers' clock offsets from gossip, and the clock fence.

pub mod clock;
mod contact;
pub mod membership;
pub mod metrics;

pub use clock::ClockMetrics;
pub use membership::{
    owns_later, owns_now, read_recorded, resolve, ring_of, validate_state, Exchanger, GossipDriver, MemberInfo,
    MemberList, Membership, NotServing, Probe,
};
pub use metrics::MembershipMetrics;

/// Checks a node id or zone name: 1-64 of `[A-Za-z0-9._-]`.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"))
    }
}

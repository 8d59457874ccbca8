//! Membership for now: a static member list learned from `--seeds`.
//!
//! Each process knows itself (a gateway knows no self) and, every `--refresh-interval`, asks
//! its seeds and every member it knows for their member lists (`GET /cluster/members`), adding
//! whoever it has not seen. A member once learned stays: a node that is down is still a replica
//! of its keys (temporary failures must not move data), so the ring changes only when a new
//! member appears. Nodes record the list in `data-dir/members.json`, so that a node restarted
//! while a peer is down still places keys on that peer. The gossip issue replaces this with
//! gossiped membership, failure detection and removal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::Topology;
use kv_ring::{Node, Ring};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::validate_node_id;

/// Largest member list accepted from a peer; bounds what a confused or hostile peer can make
/// us hold.
const MAX_MEMBERS: usize = 1024;

/// A storage node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// `host:port` of its API.
    pub address: String,
    /// Failure domain.
    pub zone: String,
    /// Relative capacity.
    pub weight: u32,
}

impl Member {
    /// Checks a member received from a peer or read from disk.
    pub fn validate(&self) -> Result<(), String> {
        validate_node_id(&self.id)?;
        validate_node_id(&self.zone).map_err(|e| format!("zone of {}: {e}", self.id))?;
        if !(1..=100).contains(&self.weight) {
            return Err(format!("weight of {} must be 1 to 100", self.id));
        }
        if self.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("address of {} is not HOST:PORT", self.id));
        }
        Ok(())
    }
}

/// Body of `GET /cluster/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberList {
    /// Members, sorted by id.
    pub members: Vec<Member>,
}

/// The known members and the topology built from them.
pub struct Membership {
    local: Option<Member>,
    members: Mutex<BTreeMap<String, Member>>,
    topology: watch::Sender<Arc<Topology>>,
    state_file: Option<PathBuf>,
}

impl Membership {
    /// Membership of a node (`local`) or a gateway (`None`), restoring members recorded in
    /// `state_file` if it exists.
    pub fn new(local: Option<Member>, state_file: Option<PathBuf>) -> Result<Arc<Membership>, String> {
        let mut members = BTreeMap::new();
        if let Some(path) = &state_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let list: MemberList =
                        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                    for member in list.members {
                        member.validate().map_err(|e| format!("{}: {e}", path.display()))?;
                        members.insert(member.id.clone(), member);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        if let Some(me) = &local {
            members.insert(me.id.clone(), me.clone());
        }
        let (topology, _) = watch::channel(Arc::new(build_topology(&members)));
        let membership = Membership { local, members: Mutex::new(members), topology, state_file };
        membership.persist();
        Ok(Arc::new(membership))
    }

    /// Receives every new topology.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.subscribe()
    }

    /// This node, or `None` in a gateway.
    pub fn local(&self) -> Option<&Member> {
        self.local.as_ref()
    }

    /// The known members, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        self.members.lock().values().cloned().collect()
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Adds members not yet known and updates changed addresses; ignores invalid entries and
    /// anything said about this node itself. Returns whether anything changed.
    pub fn learn(&self, learned: Vec<Member>) -> bool {
        let mut members = self.members.lock();
        let mut changed = false;
        for member in learned.into_iter().take(MAX_MEMBERS) {
            if let Err(e) = member.validate() {
                tracing::warn!(error = %e, "ignoring an invalid member from a peer");
                continue;
            }
            if self.local.as_ref().is_some_and(|me| me.id == member.id) || members.len() >= MAX_MEMBERS {
                continue;
            }
            if members.get(&member.id) != Some(&member) {
                tracing::info!(id = %member.id, address = %member.address, zone = %member.zone, "member learned");
                members.insert(member.id.clone(), member);
                changed = true;
            }
        }
        if changed {
            self.topology.send_replace(Arc::new(build_topology(&members)));
            drop(members);
            self.persist();
        }
        changed
    }

    fn persist(&self) {
        let Some(path) = &self.state_file else { return };
        let list = MemberList { members: self.members() };
        let text = serde_json::to_string_pretty(&list).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        // Write then rename, so a crash never leaves a half-written list.
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(error = %e, path = %path.display(), "cannot record members");
        }
    }
}

fn build_topology(members: &BTreeMap<String, Member>) -> Topology {
    let nodes = members.values().map(|m| Node { id: m.id.clone(), zone: m.zone.clone(), weight: m.weight });
    // Members are validated and keyed by id: ids are unique, non-empty, weights non-zero.
    let ring = Ring::new(nodes).unwrap_or_else(|_| Topology::empty().ring);
    let addresses = members.values().map(|m| (m.id.clone(), m.address.clone())).collect();
    Topology { ring, addresses }
}

/// Background job: learns members from the seeds and from every known member.
pub struct MembershipRefresher {
    membership: Arc<Membership>,
    seeds: Vec<String>,
    http: reqwest::Client,
    interval: Duration,
}

impl MembershipRefresher {
    /// A refresher asking `seeds` and known members every `interval`, each call bounded by
    /// `timeout`.
    pub fn new(membership: Arc<Membership>, seeds: Vec<String>, interval: Duration, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        MembershipRefresher { membership, seeds, http, interval }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    async fn refresh(&self) {
        let mut addresses: Vec<String> = self.seeds.clone();
        let me = self.membership.local().map(|m| m.id.clone());
        addresses
            .extend(self.membership.members().into_iter().filter(|m| Some(&m.id) != me.as_ref()).map(|m| m.address));
        addresses.sort();
        addresses.dedup();
        let fetches = addresses.iter().map(|address| self.fetch(address));
        for list in futures::future::join_all(fetches).await.into_iter().flatten() {
            self.membership.learn(list.members);
        }
    }

    async fn fetch(&self, address: &str) -> Option<MemberList> {
        let url = format!("http://{address}/cluster/members");
        match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => match response.json::<MemberList>().await {
                Ok(list) => Some(list),
                Err(e) => {
                    tracing::warn!(%url, error = %e, "bad member list");
                    None
                }
            },
            Ok(response) => {
                tracing::debug!(%url, status = %response.status(), "member list refused");
                None
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "member list unreachable");
                None
            }
        }
    }
}

//! The simulated network: partitions, delays and lost replies, delivery of calls to nodes, and
//! the fronts' view of it ([`Net`]).

use super::*;

impl World {
    pub(super) fn partitioned(&self, a: &str, b: &str) -> bool {
        self.state.lock().partitions.contains(&pair(a, b))
    }

    /// Cuts `a` off from `b` until [`World::heal`].
    pub fn partition(&self, a: &str, b: &str) {
        self.trace(|| format!("partition {a} | {b}"));
        let mut state = self.state.lock();
        state.partitions.insert(pair(a, b));
        state.history.counts.partitions += 1;
    }

    /// Heals the partition between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.trace(|| format!("heal {a} | {b}"));
        self.state.lock().partitions.remove(&pair(a, b));
    }

    /// Heals every partition.
    pub fn heal_all(&self) {
        self.state.lock().partitions.clear();
    }

    /// How a message fares: delay there, delay back, reply lost.
    pub(super) fn fate(&self) -> (u64, u64, bool) {
        let faults = self.config.faults && !self.calm.load(std::sync::atomic::Ordering::Acquire);
        let timeout = self.config.timeout_ms;
        let mut state = self.state.lock();
        let slow = faults && state.rng.chance(4);
        let there = if slow { state.rng.between(timeout / 2, timeout * 3) } else { state.rng.between(0, 8) };
        let back = state.rng.between(0, 8);
        let lost = faults && state.rng.chance(2);
        if there > timeout {
            state.history.counts.late += 1;
        }
        if lost {
            state.history.counts.lost_replies += 1;
        }
        (there, back, lost)
    }

    pub(super) fn deliver(&self, from: &str, to: &str, call: Call) -> Delivery {
        let core = {
            let state = self.state.lock();
            match state.nodes.get(to) {
                Some(node) if node.up => node.core.clone(),
                _ => {
                    self.trace(|| format!("{from} -> {to}: {} refused (down)", describe_call(&call)));
                    return Delivery::Refused;
                }
            }
        };
        if self.fenced(to) || self.not_a_member(from) {
            self.trace(|| format!("{from} -> {to}: {} refused (fenced, or not a member)", describe_call(&call)));
            return Delivery::Refused;
        }
        if self.partitioned(from, to) {
            self.trace(|| format!("{from} -> {to}: {} lost (partition)", describe_call(&call)));
            return Delivery::Partitioned;
        }
        let what = if self.trace { describe_call(&call) } else { String::new() };
        if self.config.mutation == Mutation::ForgetOutstandingDots {
            core.forget_outstanding_dots();
        }
        // Over the wire as between real nodes: what the encoding leaves out (a coordinate
        // call's value) is missing here too.
        let call = wire(&call);
        let mut replies = core.execute(vec![call], self.clock_ms(to));
        let reply = wire(&replies.pop().unwrap_or(Reply::Refused(Refusal::Failed("no reply".into()))));
        self.trace(|| format!("{from} -> {to}: {what} => {}", describe_reply(&reply)));
        if let Some(v) = match &reply {
            Reply::Coordinated(response) => response.created_version(),
            _ => None,
        } {
            self.history(|h| h.created(&v.content_type, &v.dot.node, v.dot.counter));
        }
        Delivery::Reply(reply)
    }
}

fn versions_text(versions: &[Version]) -> String {
    let parts: Vec<String> = versions
        .iter()
        .map(|v| {
            format!(
                "{}{}@{}:{}",
                v.content_type,
                if v.tombstone { "(del)" } else { "" },
                v.dot.node.split('~').next().unwrap_or(""),
                v.dot.counter
            )
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

fn describe_call(call: &Call) -> String {
    let key = String::from_utf8_lossy(call.key()).into_owned();
    match call {
        Call::Coordinate(c) => format!(
            "coordinate {key} {} ctx={:?}",
            c.write.content_type,
            c.write
                .context
                .entries()
                .iter()
                .map(|e| (e.node.split('~').next().unwrap_or("").to_owned(), e.counter))
                .collect::<Vec<_>>()
        ),
        Call::Store(c) => {
            format!("store {key} {} fresh={:?}", versions_text(&c.versions), c.fresh.as_ref().map(|d| d.counter))
        }
        Call::Read(_) => format!("read {key}"),
        Call::Purge(c) => format!("purge {key} {:?}", c.tombstones.iter().map(|d| d.counter).collect::<Vec<_>>()),
        Call::Hint(c) => format!("hint {key} for {} {}", c.target, versions_text(&c.versions)),
    }
}

/// `message` encoded and decoded, as a peer receives it.
fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) -> T {
    kv_proto::decode(&kv_proto::encode(message)).expect("invariant: every message decodes")
}

fn describe_reply(reply: &Reply) -> String {
    match reply {
        Reply::Coordinated(c) => {
            format!("created {}:{} set {}", c.created.node, c.created.counter, versions_text(c.record.versions()))
        }
        Reply::Stored => "stored".into(),
        Reply::Read(v) => format!("read {}", versions_text(v)),
        Reply::Purged => "purged".into(),
        Reply::Refused(refusal) => format!("refused {} {}", refusal.reason(), refusal.message()),
    }
}

impl CallPeer for Net {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(self.send(peer, call))
    }
}

/// A front's network: calls from front `from` to the nodes, through the simulated network.
pub struct Net {
    world: Arc<World>,
    from: String,
}

impl Net {
    /// The network as front `from` sees it.
    pub fn new(world: Arc<World>, from: &str) -> Net {
        Net { world, from: from.to_owned() }
    }

    async fn send(&self, to: &Peer, call: Call) -> Result<Reply, ReplicaError> {
        let (there, back, lost) = self.world.fate();
        let (tx, rx) = oneshot::channel();
        let (world, from, to) = (self.world.clone(), self.from.clone(), to.id.clone());
        // The message travels on its own: it may arrive after the caller gave up.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(there)).await;
            let delivery = world.deliver(&from, &to, call);
            tokio::time::sleep(Duration::from_millis(back)).await;
            if !lost {
                let _ = tx.send(delivery);
            }
        });
        match rx.await {
            Ok(Delivery::Reply(reply)) => Ok(reply),
            Ok(Delivery::Refused) => Err(ReplicaError::NotSent("connection refused".into())),
            // A partition or a lost reply: nothing comes back; the caller's timeout ends it.
            Ok(Delivery::Partitioned) | Err(_) => std::future::pending().await,
        }
    }
}

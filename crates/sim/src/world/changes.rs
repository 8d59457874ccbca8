//! Membership changes as the nodes carry them out: joins, leaves, removals (with a node paused
//! through its own), wiped disks, and the fills and drops of the ranges they move.

use super::*;

impl World {
    /// One pass of node `id`'s dropper: hand each dropping range's keys to their owners, then
    /// remove them ([`plan::drop_targets`]).
    pub fn drop_round(&self, id: &str) {
        let Some((ownership, engine)) =
            self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| (n.ownership.clone(), n.engine.clone()))
        else {
            return;
        };
        if !matches!(self.status(id), Some(Status::Normal | Status::Joining | Status::Leaving)) || self.fenced(id) {
            return;
        }
        let dropping = ownership.dropping();
        if dropping.is_empty() {
            return;
        }
        let topology = self.topology();
        let mut done = Vec::new();
        'spans: for &(lo, hi) in dropping.spans() {
            loop {
                let Ok(page) = engine.scan(lo, hi, None, PAGE) else { continue 'spans };
                if page.is_empty() {
                    done.push((lo, hi));
                    continue 'spans;
                }
                let now = self.clock_ms(id);
                let mut by_target: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
                for (key, record) in &page {
                    let versions: Vec<Version> = match self.config.mutation {
                        Mutation::HandOffOld => record.versions().to_vec(),
                        // The rule before: each version by its own age.
                        Mutation::HandOffYoungVersions => record
                            .versions()
                            .iter()
                            .filter(|v| now.saturating_sub(v.written_at) <= self.config.grace_ms / 2)
                            .cloned()
                            .collect(),
                        _ if plan::hand_off(record, now, self.config.grace_ms) => record.versions().to_vec(),
                        _ => Vec::new(),
                    };
                    if versions.is_empty() {
                        self.discard(id, key, record);
                        continue;
                    }
                    let targets = plan::drop_targets(&topology, key, self.config.n, id);
                    if targets.is_empty() {
                        continue 'spans;
                    }
                    for target in targets {
                        by_target.entry(target.id).or_default().push((key.clone(), versions.clone()));
                    }
                }
                for (target, entries) in by_target {
                    if !self.stream(id, &target, entries) {
                        continue 'spans;
                    }
                }
                let keys: Vec<Vec<u8>> = page.into_iter().map(|(k, _)| k).collect();
                if engine.remove(&keys).is_err() {
                    continue 'spans;
                }
            }
        }
        if !done.is_empty() {
            self.trace(|| format!("{id} dropped {} spans", done.len()));
            let _ = ownership.dropped(&kv_ring::Intervals::from_spans(done), &topology);
        }
    }

    /// Node `id` discards `record` of `key` as too old to hand off: writes no other store holds
    /// are gone (exempt, and counted).
    pub(super) fn discard(&self, id: &str, key: &[u8], record: &Record) {
        let Some(index) = crate::history::key_index(key) else { return };
        let engines: Vec<Arc<dyn Engine>> =
            self.state.lock().nodes.iter().filter(|(n, _)| n.as_str() != id).map(|(_, n)| n.engine.clone()).collect();
        let elsewhere: Vec<Vec<Seen>> = engines.iter().map(|e| seen(&e.get(key).ok().unwrap_or_default())).collect();
        let here = seen(record);
        self.history(|h| h.discard(index, &here, &elsewhere));
    }

    /// One pass of node `id`'s filler: merge each range it gained from its other current owners,
    /// at least [`plan::copies_needed`] of them; then it serves the range.
    pub async fn fill_round(&self, id: &str) {
        let Some(ownership) = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone()) else {
            return;
        };
        if self.fenced(id) {
            return;
        }
        let (filling, epoch) = ownership.filling_snapshot();
        if filling.is_empty() {
            return;
        }
        let ring = self.ring();
        let mut done = Vec::new();
        for &(lo, hi) in filling.spans() {
            let pieces = plan::owners_in(&ring, self.config.n, lo, hi)
                .iter()
                .map(|m| (m.lo, m.hi, plan::sources(m, &[id.to_owned()])))
                .collect();
            for (lo, hi, sources) in plan::coalesce(pieces) {
                let (mut copied, mut refused) = (0, 0);
                for source in &sources {
                    match self.try_copy(source, id, lo, hi).await {
                        Ok(()) => copied += 1,
                        Err(true) => refused += 1,
                        Err(false) => {}
                    }
                }
                self.trace(|| {
                    format!("{id} fill {lo:016x}-{hi:016x} from {sources:?}: {copied} copied, {refused} refused")
                });
                if copied >= plan::copies_needed_without(self.config.r, sources.len(), refused) {
                    done.push((lo, hi));
                }
            }
        }
        if !done.is_empty() && self.is_up(id) {
            self.trace(|| format!("{id} filled {} pieces", done.len()));
            let _ = ownership.filled(&kv_ring::Intervals::from_spans(done), epoch, &self.topology());
        }
    }

    /// Whether any running member still has ranges to fill.
    pub fn filling(&self) -> bool {
        let state = self.state.lock();
        state.nodes.iter().any(|(id, n)| {
            n.up && matches!(state.members.get(id), Some((Status::Normal | Status::Joining | Status::Leaving, _)))
                && !n.ownership.filling().is_empty()
        })
    }

    /// Node `id`'s loss epoch, to pass back to [`World::prefill`] (0 if it is down).
    pub(super) fn loss_epoch(&self, id: &str) -> u64 {
        let ownership = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone());
        ownership.map(|o| o.loss_epoch()).unwrap_or_default()
    }

    pub(super) fn prefill(&self, id: &str, ranges: kv_ring::Intervals, epoch: u64) {
        let ownership = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone());
        if let Some(ownership) = ownership {
            let _ = ownership.prefill(&ranges, epoch, &self.topology());
        }
    }

    /// Whether any running member still has ranges to drop.
    pub fn dropping(&self) -> bool {
        let state = self.state.lock();
        state.nodes.iter().any(|(id, n)| {
            n.up && matches!(state.members.get(id), Some((Status::Normal | Status::Joining | Status::Leaving, _)))
                && !n.ownership.dropping().is_empty()
        })
    }

    /// The acknowledged writes of keys in `m` that `sources` hold (or hold a successor of) so
    /// widely that any `needed` of them include a holder; `own` (a leaving node's copy) counts
    /// as always merged.
    pub(super) fn due(
        &self,
        m: &Move,
        sources: &[String],
        needed: usize,
        own: Option<&str>,
        keys: &[Vec<u8>],
    ) -> Vec<usize> {
        let mut due = Vec::new();
        for (key_index, key) in keys.iter().enumerate() {
            let hash = kv_ring::hash_key(key);
            // An empty key stands for one the caller leaves out.
            if key.is_empty() || hash < m.lo || hash > m.hi {
                continue;
            }
            let held: Vec<(String, Vec<Seen>)> = sources.iter().map(|s| (s.clone(), self.held(s, key))).collect();
            let own_held = own.map(|o| self.held(o, key)).unwrap_or_default();
            let mut history = self.state.lock();
            let history = &mut history.history;
            for index in 0..history.writes.len() {
                let write = &history.writes[index];
                if write.key != key_index || write.acked.is_none() || write.tombstone {
                    continue;
                }
                let holders = held.iter().filter(|(_, versions)| history.holds(versions, index)).count();
                let own = history.holds(&own_held, index);
                if own || holders + needed > sources.len() {
                    due.push(index);
                }
            }
        }
        due
    }

    /// Rule 4 for `gainer` once its move completed: it holds every write of `due`, for the keys
    /// it still accepts (a join or a leave, checked as it completes) or serves (a removal,
    /// checked once every gainer filled). A change that ran at the same time may have moved a
    /// key on since (the gainer dropped it to its new owners): the final checks cover it.
    pub(super) fn check_gainer(&self, what: &str, gainer: &str, due: &[usize], keys: &[Vec<u8>]) {
        let view = self.state.lock().nodes.get(gainer).map(|n| n.core.view());
        let still_held = |key: usize| {
            let hash = kv_ring::hash_key(&keys[key]);
            view.as_ref().is_some_and(|v| if what == "removal" { v.serves(hash) } else { v.accepts(hash) })
        };
        let due: Vec<usize> = self.history(|h| due.iter().copied().filter(|&w| still_held(h.writes[w].key)).collect());
        let snapshot: Vec<Vec<Seen>> = keys.iter().map(|k| self.held(gainer, k)).collect();
        self.history(|h| h.check_move(what, gainer, &due, &|key| snapshot[key].clone()));
    }

    /// A new node `id` joins: announce, wait, merge every gained range from its old owners
    /// (at least R of them), then become normal.
    pub async fn join(self: &Arc<Self>, id: &str, zone: &str, keys: &[Vec<u8>]) {
        if self.status(id).is_none() {
            self.add_node(id, zone, Status::Joining);
        }
        self.trace(|| format!("join {id} announced"));
        self.publish(false);
        tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS)).await;
        loop {
            let epoch = self.loss_epoch(id);
            let before = self.ring();
            // What it owns once every move in progress completes (the pending ring), as kvnode's
            // rebalancer plans: other members may be joining or leaving at the same time.
            let after = match self.config.mutation {
                Mutation::PlanAgainstCurrentRing => {
                    self.ring_of(|m, s| m == id || matches!(s, Status::Normal | Status::Leaving))
                }
                _ => self.ring_of(|m, s| m == id || matches!(s, Status::Normal | Status::Joining)),
            };
            let moves = plan::gained_by(&before, &after, self.config.n, id);
            let exclude = [id.to_owned()];
            let mut due = Vec::new();
            for m in &moves {
                let sources = plan::sources(m, &exclude);
                due.extend(self.due(m, &sources, plan::copies_needed(self.config.r, sources.len()), None, keys));
            }
            let mut complete = true;
            for m in &moves {
                let mut sources = plan::sources(m, &exclude);
                let mut needed = plan::copies_needed(self.config.r, sources.len());
                if self.config.mutation == Mutation::JoinFromOneOwner {
                    sources.truncate(1);
                    needed = needed.min(1);
                }
                let mut copied = 0;
                for source in &sources {
                    if self.copy(source, id, m.lo, m.hi).await {
                        copied += 1;
                    }
                }
                if copied < needed {
                    complete = false;
                    break;
                }
            }
            if complete {
                self.trace(|| format!("join {id} complete"));
                self.check_gainer("join", id, &due, keys);
                self.prefill(id, kv_ring::Intervals::from_spans(moves.iter().map(|m| (m.lo, m.hi))), epoch);
                self.set_status(id, Status::Normal);
                self.publish(false);
                self.history(|h| h.counts.joins += 1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Normal node `id` leaves: announce, wait, gather every range it loses from the other old
    /// owners (R copies with its own), push it to the gainers, then go.
    pub async fn leave(self: &Arc<Self>, id: &str, keys: &[Vec<u8>]) {
        self.set_status(id, Status::Leaving);
        self.trace(|| format!("leave {id} announced"));
        self.publish(false);
        tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS)).await;
        loop {
            let before = self.ring();
            let after = match self.config.mutation {
                Mutation::PlanAgainstCurrentRing => {
                    self.ring_of(|m, s| m != id && matches!(s, Status::Normal | Status::Leaving))
                }
                _ => self.ring_of(|m, s| m != id && matches!(s, Status::Normal | Status::Joining)),
            };
            let moves = plan::lost_by(&before, &after, self.config.n, id);
            let exclude = [id.to_owned()];
            let needed_of = |count: usize| plan::copies_needed(self.config.r.saturating_sub(1), count);
            let mut due: Vec<(String, Vec<usize>)> = Vec::new();
            for m in &moves {
                let sources = plan::sources(m, &exclude);
                let owed = self.due(m, &sources, needed_of(sources.len()), Some(id), keys);
                for gainer in &m.gained {
                    due.push((gainer.clone(), owed.clone()));
                }
            }
            let mut complete = self.is_up(id);
            for m in &moves {
                if !complete {
                    break;
                }
                let sources = plan::sources(m, &exclude);
                let mut copied = 0;
                for source in &sources {
                    if self.copy(source, id, m.lo, m.hi).await {
                        copied += 1;
                    }
                }
                complete = copied >= needed_of(sources.len()) && self.is_up(id);
                for gainer in &m.gained {
                    if !complete {
                        break;
                    }
                    // The first page of a hand-off records the gainer's loss epoch, the last
                    // says it was the whole range.
                    let epoch = self.loss_epoch(gainer);
                    complete = self.copy(id, gainer, m.lo, m.hi).await;
                    if complete {
                        self.prefill(gainer, kv_ring::Intervals::from_spans([(m.lo, m.hi)]), epoch);
                    }
                }
            }
            if complete {
                self.trace(|| format!("leave {id} complete"));
                for (gainer, owed) in &due {
                    self.check_gainer("leave", gainer, owed, keys);
                }
                self.set_status(id, Status::Left);
                if let Some(node) = self.state.lock().nodes.get_mut(id) {
                    node.up = false;
                }
                self.publish(false);
                self.history(|h| h.counts.leaves += 1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An operator removes node `id`, which is killed and whose disk is lost; every node that
    /// gains its ranges fills them from the surviving owners (at least R).
    pub async fn remove(self: &Arc<Self>, id: &str, keys: &[Vec<u8>]) {
        self.trace(|| format!("remove {id}"));
        self.crash(id);
        let before = self.ring();
        let gainers = self.members(&[Status::Normal]).into_iter().filter(|g| g != id).collect::<Vec<_>>();
        let after = self.ring_of(|m, s| m != id && matches!(s, Status::Normal | Status::Leaving));
        let mut due: Vec<(String, Vec<usize>)> = Vec::new();
        for gainer in &gainers {
            let exclude = [id.to_owned(), gainer.clone()];
            // Only what the gainer's own view gains: a node that was down through earlier
            // changes may already count the range as its own (it merely missed writes).
            let view = self.state.lock().nodes.get(gainer).map(|n| n.core.view());
            let mut owed = Vec::new();
            for m in plan::gained_by(&before, &after, self.config.n, gainer) {
                let sources = plan::sources(&m, &exclude);
                let needed = plan::copies_needed(self.config.r, sources.len());
                let unowned: Vec<Vec<u8>> = keys
                    .iter()
                    .map(|k| {
                        if view.as_ref().is_some_and(|v| v.accepts(kv_ring::hash_key(k))) {
                            Vec::new()
                        } else {
                            k.clone()
                        }
                    })
                    .collect();
                owed.extend(self.due(&m, &sources, needed, None, &unowned));
            }
            due.push((gainer.clone(), owed));
        }
        {
            let mut state = self.state.lock();
            let now = 1_000_000 + self.epoch.elapsed().as_millis() as u64;
            state.history.lost.insert(id.to_owned(), now);
            if let Some(member) = state.members.get_mut(id) {
                member.0 = Status::Removed;
            }
        }
        self.publish(false);
        // The fillers do the work; wait until every gainer holds its ranges completely.
        tokio::time::sleep(Duration::from_millis(VIEW_LAG_MS)).await;
        // (A gainer that left or was removed meanwhile, by a change running at the same time,
        // handed off or lost what it held: it is not waited for, nor checked.)
        let member = |g: &String| matches!(self.status(g), Some(Status::Normal | Status::Joining | Status::Leaving));
        while gainers.iter().filter(|g| member(g)).any(|g| !self.is_up(g) || self.node_filling(g)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (gainer, owed) in due.iter().filter(|(g, _)| member(g)) {
            self.check_gainer("removal", gainer, owed, keys);
        }
        self.history(|h| h.counts.removals += 1);
    }

    /// Node `id` is paused (a stopped process, a VM pause: it hears nothing) and an operator
    /// removes it meanwhile; the gainers fill its ranges from the survivors. After `pause_ms`
    /// it resumes with its store and its stale view and, before it learns of its removal, runs
    /// its background work once: an anti-entropy round and its hints. Its peers must refuse it
    /// (rule 12), or its stale copies (a delete it missed, purged since) come back. Then it
    /// stops for good.
    pub async fn pause_remove(self: &Arc<Self>, id: &str, keys: &[Vec<u8>], pause_ms: u64) {
        self.trace(|| format!("pause {id}, then remove it"));
        let engine = self.state.lock().nodes.get(id).map(|n| n.engine.clone());
        self.remove(id, keys).await;
        self.history(|h| h.counts.paused_removals += 1);
        // Meanwhile the collectors purge what was deleted while it was paused.
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(self.config.grace_ms + 20)).await;
        let collector = self.collectors.lock().first().and_then(std::sync::Weak::upgrade);
        if let Some(collector) = collector {
            for key in keys {
                let _ = collector.collect(key).await;
            }
        }
        let paused = started.elapsed().as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(pause_ms.saturating_sub(paused))).await;
        // The process resumes on the store it had (remove() stopped it without touching it).
        let resumed = {
            let mut state = self.state.lock();
            match state.nodes.get_mut(id) {
                Some(node) if engine.as_ref().is_some_and(|e| Arc::ptr_eq(e, &node.engine)) => {
                    node.up = true;
                    true
                }
                _ => false,
            }
        };
        if resumed {
            self.trace(|| format!("{id} resumes, removed, with its old view"));
            self.anti_entropy_round(id);
            self.deliver_hints(id);
            if let Some(node) = self.state.lock().nodes.get_mut(id) {
                node.up = false;
            }
            self.trace(|| format!("{id} learns it was removed and stops"));
        }
    }

    pub(super) fn node_filling(&self, id: &str) -> bool {
        self.state.lock().nodes.get(id).is_some_and(|n| !n.ownership.filling().is_empty())
    }

    /// Node `id` loses its disk: it restarts on an empty store (a new actor) and joins again.
    pub async fn wipe(self: &Arc<Self>, id: &str, keys: &[Vec<u8>]) {
        self.trace(|| format!("wipe {id}"));
        self.crash(id);
        let engine = self.new_engine();
        let zone = {
            let mut state = self.state.lock();
            let now = 1_000_000 + self.epoch.elapsed().as_millis() as u64;
            state.history.lost.insert(id.to_owned(), now);
            state.history.counts.wipes += 1;
            let member = state.members.get_mut(id).expect("invariant: wiped nodes are members");
            member.0 = Status::Joining;
            member.1.clone()
        };
        let extras = self.open_extras(&engine);
        let node = self.start_node(id, engine, extras);
        self.state.lock().nodes.insert(id.to_owned(), node);
        self.join(id, &zone, keys).await;
    }
}

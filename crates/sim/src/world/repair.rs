//! Repairs between nodes: hints handed to their owners, anti-entropy rounds, and the range
//! scans and streams that moves and repairs use.

use super::*;

impl World {
    /// One pass of node `id`'s hint dispatcher, as kvnode's: expired hints dropped; each
    /// other hint, if its versions are younger than half the grace, stored on its target
    /// (when up and reachable) or, if the target no longer holds the key, on every current
    /// replica, and deleted once stored; one too old is dropped. Returns hints delivered.
    pub fn deliver_hints(&self, id: &str) -> usize {
        let Some(hints) = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.hints.clone()) else {
            return 0;
        };
        if self.fenced(id) {
            return 0;
        }
        let now = self.clock_ms(id);
        let _ = hints.expire(now);
        let mut delivered = 0;
        for target in hints.pending().into_keys() {
            let Ok(page) = hints.page(&target, None, 64) else { continue };
            let mut done = Vec::new();
            for (seq, hint) in page {
                let record = kv_vclock::Siblings::from_versions(hint.versions.clone());
                if !plan::hand_off(&record, now, self.config.grace_ms) {
                    self.trace(|| format!("{id}: hint for {target} dropped (too old)"));
                    done.push(seq);
                    continue;
                }
                let store = |to: &str| {
                    let call = Call::Store(StoreRequest::new(hint.key.clone(), hint.versions.clone(), None, 0));
                    match self.deliver(id, to, call) {
                        Delivery::Reply(Reply::Stored) => Some(true),
                        Delivery::Reply(Reply::Refused(Refusal::NotOwner(_))) => Some(false),
                        _ => None,
                    }
                };
                let stored = match store(&target) {
                    Some(true) => true,
                    Some(false) => {
                        let owners: Vec<String> = self
                            .ring()
                            .preference_list(&hint.key, self.config.n)
                            .iter()
                            .map(|n| n.id.clone())
                            .collect();
                        owners.iter().all(|o| store(o) == Some(true))
                    }
                    None => false,
                };
                if stored {
                    done.push(seq);
                    delivered += 1;
                }
            }
            let _ = hints.remove(&target, &done);
        }
        if delivered > 0 {
            self.history(|h| h.counts.hints += delivered as u64);
        }
        delivered
    }

    /// One anti-entropy round of node `id`, as kvnode's: for every segment of the current ring
    /// it holds completely, with every other replica that is up, reachable and holds it
    /// completely too, the trees are compared and the keys of each differing bucket exchanged
    /// both ways (merged, siblings kept). Returns the keys moved.
    pub fn anti_entropy_round(&self, id: &str) -> usize {
        let state = self.state.lock();
        let Some(me) = state.nodes.get(id).filter(|n| n.up) else { return 0 };
        let (core, trees, engine) = (me.core.clone(), me.trees.clone(), me.engine.clone());
        drop(state);
        if self.fenced(id) {
            return 0;
        }
        let ring = self.ring();
        let view = core.view();
        let wanted: Vec<(u64, u64)> =
            segments(&ring).into_iter().filter(|&(lo, hi)| view.serves_range(lo, hi)).collect();
        if trees.keep(&*engine, &wanted).is_err() {
            return 0;
        }
        let mut moved = 0;
        for &(lo, hi) in &wanted {
            for peer in ring.preference_list_at(hi, self.config.n) {
                let peer = peer.id.clone();
                let theirs = self.state.lock().nodes.get(&peer).filter(|n| n.up).map(|n| n.trees.clone());
                let (Some(theirs), Some(mine)) = (theirs, trees.tree(lo, hi)) else { continue };
                let Some(their_tree) = theirs.tree(lo, hi) else { continue };
                if peer == id || self.partitioned(id, &peer) {
                    continue;
                }
                for bucket in mine.diff_local(&their_tree).buckets {
                    let range = mine.bucket_range(bucket);
                    let (first, last) = (*range.start(), *range.end());
                    if first > last {
                        continue;
                    }
                    // The peer answers only for a range it holds completely.
                    let Ok(their_entries) = self.scan(id, &peer, first, last, None) else { continue };
                    let Ok(my_entries) = core.scan(first, last, None, PAGE) else { continue };
                    let lacks = |have: &[Entry], key: &[u8], versions: &[Version]| {
                        let held =
                            have.iter().find(|(k, _)| k.as_slice() == key).map_or(&[][..], |(_, v)| v.as_slice());
                        versions.iter().any(|v| !held.iter().any(|h| h.dot == v.dot))
                    };
                    let to_me: Vec<Entry> =
                        their_entries.iter().filter(|(k, v)| lacks(&my_entries, k, v)).cloned().collect();
                    let to_them: Vec<Entry> =
                        my_entries.iter().filter(|(k, v)| lacks(&their_entries, k, v)).cloned().collect();
                    moved += to_me.len() + to_them.len();
                    if !to_me.is_empty() {
                        self.trace(|| format!("anti-entropy: {id} takes {} keys from {peer}", to_me.len()));
                        let _ = core.store_stream(to_me);
                    }
                    if !to_them.is_empty() {
                        self.trace(|| format!("anti-entropy: {id} gives {} keys to {peer}", to_them.len()));
                        let _ = self.stream(id, &peer, to_them);
                    }
                }
            }
        }
        if moved > 0 {
            self.history(|h| h.counts.repaired += moved as u64);
        }
        moved
    }

    /// One page of `from`'s copy of `lo..=hi` after `after`, read by `by` (`None` if it cannot).
    /// `Err(true)`: `from` refused (it does not hold the range completely); `Err(false)`: down
    /// or cut off.
    pub(super) fn scan(
        &self,
        by: &str,
        from: &str,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
    ) -> Result<Vec<Entry>, bool> {
        let core = self.state.lock().nodes.get(from).filter(|n| n.up).map(|n| n.core.clone()).ok_or(false)?;
        if self.partitioned(by, from) || self.fenced(from) || self.not_a_member(by) {
            return Err(false);
        }
        // Only a source filling the range too is counted out (`GAINING_TOO`); one that does
        // not own it in its view (a lagging view) is retried.
        core.scan(lo, hi, after, PAGE).map_err(|e| e.message().contains(kv_proto::GAINING_TOO))
    }

    /// Streams `entries` from `from` into `to` (`false` if it cannot or `to` refuses).
    pub(super) fn stream(&self, from: &str, to: &str, entries: Vec<Entry>) -> bool {
        let Some(core) = self.state.lock().nodes.get(to).filter(|n| n.up).map(|n| n.core.clone()) else {
            return false;
        };
        if self.not_a_member(from) || self.fenced(to) {
            self.trace(|| format!("{from} -> {to}: stream refused (fenced, or not a member)"));
            return false;
        }
        !self.partitioned(from, to) && core.store_stream(entries).is_ok()
    }

    /// Copies `lo..=hi` from `source` into `target`, page by page (as a pull or a push).
    pub(super) async fn copy(&self, source: &str, target: &str, lo: u64, hi: u64) -> bool {
        self.try_copy(source, target, lo, hi).await.is_ok()
    }

    /// [`World::copy`], saying why it failed: `Err(true)` if `source` refused because it does
    /// not hold the range completely.
    pub(super) async fn try_copy(&self, source: &str, target: &str, lo: u64, hi: u64) -> Result<(), bool> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(target, source, lo, hi, after.as_deref())?;
            let done = page.len() < PAGE;
            after = page.last().map(|(k, _)| k.clone()).or(after);
            if !page.is_empty() && !self.stream(source, target, page) {
                return Err(false);
            }
            if done {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

//! Stores that break a rule on purpose ([`crate::Mutation`]), to show the checker catches it.

use super::*;

/// [`Mutation::PerKeyCounters`]: the rule this store had before, a dot counter per key (one above
/// the highest the key shows), which restarts once a key's tombstones are purged.
pub(super) struct PerKeyCounters(pub(super) Arc<dyn Engine>);

impl Engine for PerKeyCounters {
    fn kind(&self) -> EngineKind {
        self.0.kind()
    }
    fn get(&self, key: &[u8]) -> kv_storage::Result<Record> {
        self.0.get(key)
    }
    fn update(&self, key: &[u8], build: &mut dyn FnMut(&Record) -> Vec<Version>) -> kv_storage::Result<Record> {
        self.0.update(key, build)
    }
    fn update_many(
        &self,
        keys: &[&[u8]],
        apply: &mut dyn FnMut(usize, &Record) -> Record,
    ) -> Vec<kv_storage::Result<Record>> {
        self.0.update_many(keys, apply)
    }
    fn counter_ceiling(&self) -> u64 {
        kv_vclock::MAX_COUNTER
    }
    fn counter_lease(&self) -> u64 {
        self.0.counter_lease()
    }
    fn put_batch(&self, entries: Vec<(Vec<u8>, Vec<Version>)>) -> kv_storage::Result<()> {
        self.0.put_batch(entries)
    }
    fn scan(
        &self,
        first_hash: u64,
        last_hash: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> kv_storage::Result<Vec<(Vec<u8>, Record)>> {
        self.0.scan(first_hash, last_hash, after, limit)
    }
    fn purge_tombstones(&self, key: &[u8], dots: &[Dot]) -> kv_storage::Result<bool> {
        self.0.purge_tombstones(key, dots)
    }
    fn remove(&self, keys: &[Vec<u8>]) -> kv_storage::Result<usize> {
        self.0.remove(keys)
    }
    fn identity(&self) -> Identity {
        self.0.identity()
    }
    fn issue_counter(&self, floor: u64) -> kv_storage::Result<u64> {
        Ok(floor + 1)
    }
    fn observe_counter(&self, _seen: u64) -> kv_storage::Result<bool> {
        Ok(false)
    }
    fn mark_clean(&self) -> kv_storage::Result<()> {
        self.0.mark_clean()
    }
    fn begin_run(&self) -> kv_storage::Result<()> {
        self.0.begin_run()
    }
    fn get_meta(&self, name: &str) -> kv_storage::Result<Option<Vec<u8>>> {
        self.0.get_meta(name)
    }
    fn put_meta(&self, name: &str, value: &[u8]) -> kv_storage::Result<()> {
        self.0.put_meta(name, value)
    }
    fn sync(&self) -> kv_storage::Result<()> {
        self.0.sync()
    }
    fn refresh_gauges(&self) {
        self.0.refresh_gauges()
    }
    fn size(&self) -> (u64, u64) {
        self.0.size()
    }
    fn open_hints(&self, limits: kv_storage::HintLimits) -> kv_storage::Result<kv_storage::HintStore> {
        self.0.open_hints(limits)
    }

    fn observe(&self, observer: Arc<dyn kv_storage::Observer>) -> bool {
        self.0.observe(observer)
    }

    fn while_paused(&self, f: &mut dyn FnMut()) {
        self.0.while_paused(f)
    }
    fn read_durable(&self, f: &mut dyn FnMut()) -> kv_storage::Result<()> {
        self.0.read_durable(f)
    }
}

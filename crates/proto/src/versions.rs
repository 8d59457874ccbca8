//! How a client's write becomes a version, and how replica answers merge: the rules the front and
//! the replicas share.

use kv_types::{Record, Version};
use kv_vclock::{Dot, Siblings, Versioned, DEFAULT_MAX_ENTRIES};

use crate::Write;

/// The version of the same client write (`write_id`) already in `current`, which this write
/// must reuse instead of creating a second version of itself (the same request reaching this
/// replica again). Only the write id identifies a write: two writes with the same value and
/// context are two writes (a later blind write of a value equal to a superseded one must not be
/// swallowed by it).
pub fn reusable(current: &Record, write_id: u128) -> Option<Version> {
    if write_id == 0 {
        return None;
    }
    current.versions().iter().find(|v| v.write_id == write_id).cloned()
}

/// The counter a new dot of `actor` must exceed on top of `current`: every dot of `actor` the
/// key's stored versions carry. The store's own counter is above all it ever issued
/// (`kv_storage::Engine::issue_counter`); this floor only matters when the store forgot (a
/// restored copy). Contexts never move the counter: they come from clients, and a forged one
/// could exhaust it.
pub fn counter_floor(actor: &str, current: &Record) -> u64 {
    current.versions().iter().filter(|v| v.dot.node == actor).map(|v| v.dot.counter).max().unwrap_or(0)
}

/// The version a write coordinated by `actor` creates, with the dot counter the store issued.
/// It takes the write's value and content type over (no copy).
pub fn new_version(actor: &str, counter: u64, write: Write, write_id: u128, now_ms: u64) -> Version {
    let mut context = write.context;
    context.prune(DEFAULT_MAX_ENTRIES, None);
    Version {
        dot: Dot { node: actor.to_owned(), counter, timestamp: now_ms },
        context,
        value: write.value,
        content_type: write.content_type,
        tombstone: write.tombstone,
        written_at: now_ms,
        write_id,
    }
}

/// Whether `replica` lacks something `merged` has (a stale or missing replica to repair).
pub fn is_stale(replica: &Record, merged: &Record) -> bool {
    merged.versions().iter().any(|m| !replica.versions().iter().any(|r| r.dot() == m.dot()))
}

/// Merges replica answers into one sibling set.
pub fn merge_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Record {
    let mut merged = Siblings::new();
    for record in records {
        merged.merge(record.versions().iter().cloned());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, StoreRequest};
    use kv_vclock::VClock;

    fn write(value: &str, context: &VClock) -> Write {
        Write {
            value: value.as_bytes().to_vec().into(),
            content_type: "text/plain".into(),
            context: context.clone(),
            tombstone: false,
        }
    }

    fn version(record: &Record, write: &Write, write_id: u128, counter: u64) -> Version {
        reusable(record, write_id).unwrap_or_else(|| new_version("n1", counter, write.clone(), write_id, 1))
    }

    #[test]
    fn only_the_same_write_reuses_a_version() {
        let mut record = Record::new();
        let first = version(&record, &write("v", &VClock::new()), 7, 1);
        record.insert(first.clone());
        // The same write id (the same request again) reuses it; the same content is a new write.
        assert_eq!(version(&record, &write("other", &VClock::new()), 7, 3), first);
        let again = version(&record, &write("v", &VClock::new()), 8, 2);
        assert_ne!(again.dot, first.dot);
        assert!(record.insert(again));
        assert_eq!(record.len(), 2);
        // The floor is what the stored dots carry, never a context.
        let mut context = VClock::new();
        context.set("n1", 1_000, 1);
        record.insert(version(&record, &write("w", &context), 9, 4));
        assert_eq!(counter_floor("n1", &record), 4);
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let request = StoreRequest::new(b"k".to_vec(), vec![], None, 0);
        let bytes = encode(&request);
        let back: StoreRequest = decode(&bytes).unwrap();
        assert_eq!(back.key, b"k");
        assert!(decode::<StoreRequest>(&[0xff, 0xff, 0xff]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<StoreRequest>(&long).is_err());
    }

    #[test]
    fn stale_means_missing_a_merged_version() {
        let mut full = Record::new();
        full.insert(new_version("n1", 1, write("a", &VClock::new()), 1, 1));
        assert!(is_stale(&Record::new(), &full));
        assert!(!is_stale(&full, &full));
    }
}

//! What a node checks of itself before it serves, and after: which status it starts in, that
//! its store is not an older copy of itself, that the cluster did not remove it.

use kv_gossip::{MemberState, Status};
use kv_membership::Membership;
use kv_server::serve::RunError;

/// Refuses to go on when the cluster removed this node or knows its store to be an old copy.
pub fn refuse_if_stopped(
    membership: &Membership,
    engine: &dyn kv_storage::Engine,
    node_id: &str,
    identity: kv_storage::Identity,
) -> Result<(), RunError> {
    if membership.removed_me() {
        return Err(removed_error(node_id, identity.incarnation));
    }
    if let Some(reason) = membership.fenced() {
        return Err(RunError::Startup(format!(
            "node {node_id} (storage incarnation {:016x}) is no longer a member of the cluster ({reason}); it stopped \
             without serving its old data. To bring this machine back, start it with an empty data directory: it \
             joins as a new member",
            identity.incarnation
        )));
    }
    match membership.restored_me() {
        Some(known) => Err(restored(engine, node_id, identity, known)),
        None => Ok(()),
    }
}

/// Name of the store's metadata entry marking it as an older copy of itself.
pub const RESTORED_META: &str = "restored";

/// The store is an older copy of itself (an earlier run of it used counters up to `known`):
/// marks it so in the store, so that every later start refuses too (by then peers may only
/// know this run's state), and returns the refusal.
pub fn restored(
    engine: &dyn kv_storage::Engine,
    node_id: &str,
    identity: kv_storage::Identity,
    known: u64,
) -> RunError {
    let marker = format!("{known} {}", identity.lease_at_open);
    if let Err(e) = engine.put_meta(RESTORED_META, marker.as_bytes()).and_then(|()| engine.sync()) {
        tracing::error!(error = %e, "cannot mark the store as an older copy of itself");
    }
    restored_error(node_id, identity.incarnation, known, identity.lease_at_open)
}

/// The refusal of a store that is an older copy of itself.
fn restored_error(node_id: &str, incarnation: u64, known: u64, recorded: u64) -> RunError {
    RunError::Startup(format!(
        "node {node_id} (storage incarnation {incarnation:016x}): an earlier run of this store used dot counters up to \
         {known}, but its data directory had recorded only {recorded}: it is an older copy of itself (restored from a \
         backup or a snapshot) and lacks writes it acknowledged, so it must not serve; start it on an empty data \
         directory: it joins again as a new storage incarnation and pulls its ranges from the other replicas"
    ))
}

/// The refusal of a node the cluster removed.
fn removed_error(node_id: &str, incarnation: u64) -> RunError {
    RunError::Startup(format!(
        "node {node_id} (storage incarnation {incarnation:016x}) was removed from the cluster by an operator and must not \
         serve its old data; to bring this machine back, start it with an empty data directory: it joins as a new member"
    ))
}

/// The status a node starts in, from what its store and its recorded membership say.
///
/// - A store with data (not fresh) resumes its recorded status; one that left or was removed
///   refuses to start.
/// - A fresh store (new, wiped or in memory) is a new actor with no data: if this id was a
///   member before, its data is gone, so it joins again and pulls its ranges before it serves
///   reads, whatever it was.
/// - Never recorded: the first node of a cluster (no seeds) starts normal; others join.
pub fn start_status(
    node_id: &str,
    identity: kv_storage::Identity,
    previous: Option<&MemberState>,
    no_seeds: bool,
) -> Result<Status, RunError> {
    match previous {
        Some(recorded) if !identity.fresh => match recorded.status {
            Status::Left => Err(RunError::Startup(format!(
                "node {node_id} has left the cluster; to join again, start it with an empty data directory"
            ))),
            Status::Removed => Err(removed_error(node_id, identity.incarnation)),
            status => Ok(status),
        },
        Some(recorded) => {
            tracing::warn!(
                previous = recorded.status.name(),
                "the store has no identity but this node was a member (its data is gone, or an earlier \
                 release wrote it): joining again as a new actor and pulling its ranges from the other owners"
            );
            Ok(Status::Joining)
        }
        None if no_seeds => Ok(Status::Normal),
        None => Ok(Status::Joining),
    }
}

/// The generation for this start: above the recorded one and at least the wall clock in
/// milliseconds (so a run started from an older copy of the data directory still differs from
/// every run peers saw), recorded in `data-dir/generation`.
pub fn next_generation(data_dir: &std::path::Path) -> Result<u64, String> {
    let path = data_dir.join("generation");
    let previous = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let generation = now.max(previous + 1);
    std::fs::write(&path, format!("{generation}\n")).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(generation)
}

/// Refuses a store once found to be an older copy of itself, whatever peers say now.
pub fn refuse_if_marked_restored(
    engine: &dyn kv_storage::Engine,
    node_id: &str,
    identity: kv_storage::Identity,
) -> Result<(), RunError> {
    if let Some(marker) = engine.get_meta(RESTORED_META).map_err(|e| RunError::Startup(e.to_string()))? {
        let text = String::from_utf8_lossy(&marker).into_owned();
        let mut numbers = text.split(' ').map(|n| n.parse::<u64>().unwrap_or_default());
        let (known, recorded) = (numbers.next().unwrap_or_default(), numbers.next().unwrap_or_default());
        return Err(restored_error(node_id, identity.incarnation, known, recorded));
    }
    Ok(())
}

//! Restore tickets: what `POST /admin/restore/begin` gives and every `POST /admin/restore`
//! batch carries (docs/consistency.md, rule 16).
//!
//! A ticket says: at `issued_ms` the members named by `members` (a digest of their ids and
//! storage incarnations) held no record, or the operator asked to merge anyway
//! (`into_non_empty`); batches under it are accepted until `expires_ms`, the issue plus the
//! tombstone grace. Sealed with a key derived from the cluster secret
//! ([`ContextSealer::seal_ticket`]), so any node or gateway of the cluster checks it with no
//! state of its own. Times are the *cluster's* clock as this process sees it: its own corrected
//! by the median offset it measured to the members' (a gateway's clock is measured, never
//! fenced, and may be off).
//!
//! Why the grace bounds it: a tombstone written over a key this restore stored is younger than
//! the ticket, and is purged no earlier than a grace after it was written; a batch accepted
//! before the ticket expires (and stored within one replica timeout, its deadline capped at the
//! expiry) lands before any such purge, so storing a key again (a retry, a file sent twice) still
//! meets the tombstone that covers it.

use sha2::{Digest as _, Sha256};

use crate::context::ContextSealer;
use crate::{ApiError, ApiState};

/// What a restore ticket is sealed for.
const PURPOSE: &str = "restore";

/// Bytes of a ticket's payload.
const PAYLOAD_BYTES: usize = 8 * 3 + 1;

/// A restore ticket's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreTicket {
    /// When it was issued, ms of the cluster's clock.
    pub issued_ms: u64,
    /// When batches stop being accepted under it, ms of the cluster's clock.
    pub expires_ms: u64,
    /// [`members_digest`] of the cluster it was issued in.
    pub members: u64,
    /// Whether the operator asked to merge into a cluster that holds records.
    pub into_non_empty: bool,
}

impl RestoreTicket {
    /// A ticket issued now by the process of `state`, for its members.
    pub fn issue(state: &ApiState, into_non_empty: bool) -> RestoreTicket {
        let issued_ms = cluster_now(state);
        let grace = state.coordinator.tombstone_grace().as_millis() as u64;
        RestoreTicket { issued_ms, expires_ms: issued_ms + grace, members: members_digest(state), into_non_empty }
    }

    /// The ticket as text (base64url, under a MAC).
    pub fn seal(&self, sealer: &ContextSealer) -> String {
        let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
        payload.extend_from_slice(&self.issued_ms.to_be_bytes());
        payload.extend_from_slice(&self.expires_ms.to_be_bytes());
        payload.extend_from_slice(&self.members.to_be_bytes());
        payload.push(u8::from(self.into_non_empty));
        sealer.seal_ticket(PURPOSE, &payload)
    }

    /// The ticket a text holds, if this cluster's secret sealed it (`400` otherwise).
    pub fn open(sealer: &ContextSealer, text: &str) -> Result<RestoreTicket, ApiError> {
        let payload = sealer.open_ticket(PURPOSE, text).map_err(|e| ApiError::BadParameter(format!("ticket: {e}")))?;
        if payload.len() != PAYLOAD_BYTES {
            return Err(ApiError::BadParameter("ticket: not a restore ticket of this release".into()));
        }
        let word = |i: usize| u64::from_be_bytes(payload[8 * i..8 * i + 8].try_into().unwrap_or_default());
        Ok(RestoreTicket {
            issued_ms: word(0),
            expires_ms: word(1),
            members: word(2),
            into_non_empty: payload[24] == 1,
        })
    }

    /// Until when (ms of the cluster's clock) batches are accepted under it by a process whose
    /// own grace is `grace_ms` (every process should run with the same; the shorter wins).
    pub fn good_until(&self, grace_ms: u64) -> u64 {
        self.expires_ms.min(self.issued_ms.saturating_add(grace_ms))
    }

    /// Whether a batch under this ticket is accepted at `now` (ms of the cluster's clock) by a
    /// process of the cluster whose members digest to `members`, with its `grace_ms` and the
    /// clock skew `skew_ms` it allows. `409` with the reason otherwise.
    pub fn check(&self, now: u64, members: u64, grace_ms: u64, skew_ms: u64) -> Result<(), ApiError> {
        if self.members != members {
            return Err(ApiError::Conflict(
                "the restore ticket names other members than this cluster's: the members changed since the restore \
                 began (a join, leave or removal), or it is another cluster's that shares this secret. Begin again"
                    .into(),
            ));
        }
        if self.issued_ms > now.saturating_add(skew_ms) {
            return Err(ApiError::Conflict(format!(
                "the restore ticket was issued {} ms ahead of this process's clock: the issuer's clock is off; fix it \
                 and begin again",
                self.issued_ms - now
            )));
        }
        let until = self.good_until(grace_ms);
        if now >= until {
            return Err(ApiError::Conflict(format!(
                "the restore ticket expired {} s ago: a restore must end within --tombstone-grace ({} s) of its begin, \
                 as a tombstone written over a key it stored may have been purged since, and storing the key again \
                 would bring the deleted value back. Restore the backup into an empty cluster; merging it into this \
                 one now (into_non_empty) can bring back values deleted since the restore began",
                (now - until) / 1000,
                grace_ms / 1000
            )));
        }
        Ok(())
    }
}

/// The cluster's clock as this process sees it, ms: its own, corrected by the median of the
/// offsets it measured to the members' clocks.
pub fn cluster_now(state: &ApiState) -> u64 {
    kv_coordinator::now_ms().saturating_add_signed(state.membership.clock_offset_ms())
}

/// A digest of the members (ids and storage incarnations of those that have not left or been
/// removed): which cluster, and which membership, a ticket was issued for.
pub fn members_digest(state: &ApiState) -> u64 {
    let mut members: Vec<(String, u64)> =
        state.membership.states().into_iter().filter(|s| s.status.is_member()).map(|s| (s.id, s.incarnation)).collect();
    members.sort_unstable();
    let mut hash = Sha256::new();
    for (id, incarnation) in members {
        hash.update((id.len() as u64).to_be_bytes());
        hash.update(id.as_bytes());
        hash.update(incarnation.to_be_bytes());
    }
    u64::from_be_bytes(hash.finalize()[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_transport::Secrets;

    fn ticket() -> RestoreTicket {
        RestoreTicket { issued_ms: 1_000_000, expires_ms: 1_010_000, members: 7, into_non_empty: false }
    }

    #[test]
    fn a_ticket_seals_and_opens_and_a_changed_byte_is_refused() {
        let sealer = ContextSealer::new(&Secrets::parse(&"a".repeat(32)).unwrap());
        let text = ticket().seal(&sealer);
        assert_eq!(RestoreTicket::open(&sealer, &text).unwrap(), ticket());
        use base64::Engine as _;
        let mut changed = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&text).unwrap();
        *changed.last_mut().unwrap() ^= 0x01;
        let refused = RestoreTicket::open(&sealer, &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(changed));
        assert!(matches!(refused, Err(ApiError::BadParameter(m)) if m.contains("MAC")));
    }

    #[test]
    fn a_ticket_is_good_for_the_shorter_grace_and_for_its_members_only() {
        let (grace, skew) = (10_000, 500);
        let t = ticket();
        assert!(t.check(1_000_000, 7, grace, skew).is_ok());
        assert!(t.check(1_009_999, 7, grace, skew).is_ok());
        let expired = t.check(1_010_000, 7, grace, skew).unwrap_err();
        assert!(matches!(&expired, ApiError::Conflict(m) if m.contains("expired 0 s ago")), "{expired:?}");
        // A receiver with a shorter grace holds it to its own.
        assert!(t.check(1_005_000, 7, 5_000, skew).is_err());
        assert!(t.check(1_004_999, 7, 5_000, skew).is_ok());
        // Another membership, or another cluster sharing the secret.
        assert!(
            matches!(t.check(1_000_000, 8, grace, skew), Err(ApiError::Conflict(m)) if m.contains("other members"))
        );
        // Issued by a clock ahead of the receiver's: within the allowed skew, and beyond it.
        assert!(t.check(999_500, 7, grace, skew).is_ok());
        assert!(matches!(t.check(999_499, 7, grace, skew), Err(ApiError::Conflict(m)) if m.contains("ahead")));
    }
}

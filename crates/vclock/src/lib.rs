//! # Versions: vector clocks, dots and siblings
//!
//! A key may be written on different replicas without coordination (Dynamo §4.4). To know
//! whether one version replaces another or whether both must be kept, every version carries a
//! *vector clock*: a list of (node, counter) pairs. Comparing two clocks ([`VClock::compare`]):
//!
//! - **Before / After**: every counter of one is `<=` the other's (it is an ancestor), so the
//!   older version can be forgotten;
//! - **Concurrent**: each side has some counter greater than the other's: a conflict; both are
//!   kept as *siblings* and the client reconciles them by writing back with the merged context.
//!
//! [`VClock::merge`] takes the per-node maximum. It is commutative, associative and idempotent,
//! and `compare` is a partial order consistent with it: `a <= merge(a, b)` always.
//!
//! ## Dots: why a version is more than its clock
//!
//! Clocks here hold storage node ids only (never clients or gateways), as in Dynamo. That has a
//! known hole: two *blind* writes (no context) coordinated by the same node get clocks `{n:1}`
//! and `{n:2}`, and plain comparison says the second replaces the first, silently losing a
//! concurrent write (Riak hit this with vnode clocks). So each [`Version`]-like value carries
//! its causal *context* (the clock the writer had read) and its own *dot*, the single event
//! `(node, counter)` that created it — the dotted version vectors of Preguiça et al., "Dotted
//! Version Vectors: Logical Clocks for Optimistic Replication" (2010). A version is obsolete only
//! when another version's context contains its dot, i.e. the other writer *saw* it. Two blind
//! writes have empty contexts, so neither sees the other and both stay as siblings.
//! Comparing a context with a dot by counter assumes one invariant, which replication keeps:
//! a replica that holds dot `(n, c)` of a key also holds every earlier dot of `n` for that key,
//! or a version that obsoletes it. A coordinator creates dots in order on its own sibling set
//! and ships that whole set (not just the new version) to the other replicas.
//! The *clock* of a version (`context` plus its dot) is still an ordinary vector clock and
//! compares exactly as above.
//!
//! ## Pruning
//!
//! Each entry carries the wall-clock time (ms) of the event that last advanced it. When a clock
//! grows past [`DEFAULT_MAX_ENTRIES`] (10, as in Dynamo), the oldest entries are dropped. The
//! trade-off: a pruned context may no longer cover an old version's dot, so a version that is
//! really an ancestor can reappear as a sibling (a false conflict the client resolves once). It
//! never drops a version that is not an ancestor: pruning errs toward keeping data. With clocks
//! holding only storage-node ids, a key has at most N entries in normal operation; pruning bites
//! only after many ownership changes.
//!
//! ## Encoding
//!
//! [`VClock::encode`] is a compact binary form (a version byte, then postcard); a client sees a
//! clock only as an opaque base64url context token ([`VClock::to_token`]).
//!
//! # Layout
//! - [`clock`] — [`VClock`], [`Entry`], [`Causality`], the encoding and tokens.
//! - [`siblings`] — [`Dot`], [`Versioned`], [`Siblings`].
//! - [`error`] — [`Error`].

pub mod clock;
pub mod error;
pub mod siblings;

pub use clock::{
    Causality, Entry, VClock, DEFAULT_MAX_ENTRIES, MAX_ACTOR_BYTES, MAX_COUNTER, MAX_DECODED_ENTRIES, MAX_TOKEN_BYTES,
};
pub use error::Error;
pub use siblings::{Dot, Siblings, Versioned};

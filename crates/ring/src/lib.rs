//! # The ring: where a key lives
//!
//! Keys are placed with *consistent hashing* (Karger et al., and Dynamo §4.2): every key is
//! hashed onto a circle of 2^64 positions ("tokens"), and so is every server, many times over.
//! A key belongs to the first server found walking clockwise from its position. Each placement
//! of a server is a *virtual node* (vnode); a server gets `weight × vnodes_per_weight` of them, so
//! a machine twice as large owns about twice as much of the circle (heterogeneity), and the many
//! small arcs even out the share of each server.
//!
//! ## The hash
//!
//! Positions are XXH3-64 with seed 0 (`xxhash-rust`'s `xxh3_64`) of the raw key bytes, and of
//! `"{node_id}#{i}"` for the i-th vnode of a node. XXH3 is stable across platforms and releases
//! (its output is part of its specification), fast on short inputs, and well distributed; it is
//! not cryptographic, which placement does not need. Changing the hash would move every key, so
//! it is fixed here and used by storage too ([`hash_key`]): records are stored under their hash
//! so that a range of the ring is one contiguous scan.
//!
//! ## Replication and zones
//!
//! [`Ring::preference_list`] returns the N nodes that hold a key: walk clockwise, skip vnodes of
//! nodes already chosen (Dynamo §4.3), and prefer nodes of zones not yet used, so that replicas
//! land in min(N, zones) distinct zones before any zone repeats. Once every zone that can be used
//! is used, the remaining places are filled in clockwise order.
//!
//! ## Guarantees
//!
//! - A preference list holds min(n, nodes) distinct nodes and min(n, nodes, zones) zones.
//! - Adding a node only moves ranges *to* the new node; removing one only moves its ranges
//!   away (for primary ownership, exactly; for N replicas, every changed range gains the new node).
//! - Pure: no I/O, no clock, no randomness. The same members give the same ring everywhere.
//!
//! # Layout
//! - [`ring`] — [`Ring`], [`Node`], preference lists and ownership shares.
//! - [`diff`] — [`RangeMove`], the ownership difference between two rings.
//! - [`intervals`] — [`Intervals`], sets of positions (what a node owns, what it drops).
//! - [`error`] — [`Error`].

pub mod diff;
pub mod error;
pub mod intervals;
pub mod ring;

pub use diff::{diff, RangeMove};
pub use error::Error;
pub use intervals::Intervals;
pub use ring::{Node, Ring, TokenRange, DEFAULT_VNODES_PER_WEIGHT};

/// A position on the ring.
pub type Token = u64;

/// The ring position of a key: XXH3-64, seed 0, of its bytes. Storage orders records by this
/// value, so it must never change.
pub fn hash_key(key: &[u8]) -> Token {
    xxhash_rust::xxh3::xxh3_64(key)
}

//! # Gossip membership and failure detection (not built yet)
//!
//! Dynamo §4.8 spreads membership with a gossip protocol: every second each member exchanges
//! its view (members, heartbeats, status) with a random peer, and a member is declared down only
//! when others confirm it. Until the gossip issue fills this crate, membership is the static
//! `--seeds` list given to each process.
//!
//! This crate exports nothing yet, so nothing can depend on behaviour it does not have.

//! # Cluster tests
//!
//! The tests in `tests/` start the real `kvnode`, `kvgateway` and `kvctl` binaries of this
//! build (through [`kv_testkit`]) on free ports with data in temporary directories, drive them
//! as clients and operators do, inject faults (kill -9, SIGSTOP, iptables partitions, wiped
//! disks, skewed clocks, hostile peers) and kill every child they start, even when they fail.
//! They live in a crate of their own, apart from the binaries they test, and need those built
//! first (`cargo build --workspace --bins`; `make test` does it).
//!
//! - `replication`, `safety`, `lifecycle`, `membership`, `faults`, `failures` — Dynamo's
//!   guarantees under crashes, pauses, partitions and membership changes.
//! - `security`, `hostile`, `limits` — authentication, TLS, hostile input and bounded resources.
//! - `observability`, `kvctl`, `backup` — metrics, the operator's tools and backups.

//! # Server scaffolding: what kvnode and kvgateway share around their handlers
//!
//! Both binaries are a few HTTP listeners over shared state plus background workers. This crate
//! is everything around that which does not depend on what they serve:
//!
//! - **Config** ([`config`]): flags, `KV_*` environment variables and a TOML file, layered
//!   (defaults < file < env < flags) and validated into typed values at start-up.
//! - **Listeners** ([`serve`]): a process serves its client API on `--listen`, its admin API on
//!   `--admin-listen` and (nodes) internal traffic on `--peer-listen`, each a separate router on
//!   a separate socket, so a NetworkPolicy or a scrape config can tell them apart.
//! - **HTTP plumbing** ([`http`]): the tower layers every router gets (tracing, a deadline, a
//!   concurrency limit), request metrics by route template, JSON error bodies.
//! - **Admin routes** ([`admin`]): `/health/live`, `/health/ready`, `/metrics` and
//!   `/admin/workers`, which lists every background worker of the process's
//!   [`kv_worker::Supervisor`].
//! - **Shutdown** ([`serve`]): on SIGTERM or Ctrl-C the process reports not ready, stops
//!   accepting, drains in-flight requests, and returns the deadline (`--shutdown-timeout` after
//!   the signal) within which the binary stops its workers stage by stage.
//!
//! # Layout
//! - [`config`] — [`config::ServerSettings`], [`config::ClusterSettings`] and their validated forms.
//! - [`http`] — [`http::HttpMetrics`], layers, error bodies.
//! - [`admin`] — the admin router.
//! - [`serve`] — binding, serving, signals, logging, [`serve::RunError`].

pub mod admin;
pub mod config;
pub mod http;
pub mod serve;

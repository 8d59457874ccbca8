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
//! - **Connections** ([`listen`]): each listener accepts under a connection cap (evicting the
//!   idlest connection when full), closes connections idle or slow past `--idle-timeout`,
//!   bounds request heads, and speaks TLS when configured ([`tls`]).
//! - **HTTP plumbing** ([`http`]): the tower layers every router gets (tracing, a deadline, a
//!   concurrency limit that sheds load with `503` and `Retry-After`), request metrics by route
//!   template, JSON error bodies.
//! - **Security** ([`security`]): the cluster secret, client tokens ([`tokens`]) and TLS
//!   settings; their reload on SIGHUP ([`reload`]) and when certificate files change.
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
//! - [`listen`] — one listener's connections: cap, idle time, header limits, TLS, graceful stop.
//! - [`security`] — [`security::SecuritySettings`]: secret, tokens and TLS files, validated.
//! - [`tokens`] — [`tokens::ClientTokens`] and the client-auth middleware.
//! - [`tls`] — [`tls::Tls`] and its reloader.
//! - [`reload`] — [`reload::HangupReloader`]: secrets and tokens on SIGHUP.

pub mod admin;
pub mod config;
pub mod http;
pub mod listen;
pub mod reload;
pub mod security;
pub mod serve;
pub mod tls;
pub mod tokens;

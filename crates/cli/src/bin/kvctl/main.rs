//! `kvctl`: the store from the command line.
//!
//! Exit codes, for scripts: 0 success; 1 key not found; 2 usage error; 3 siblings (a conflict
//! to resolve); 4 request refused (4xx); 5 server or network unavailable (retry may help).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kv_client::{Client, Error, Read};

mod admin;
mod backup;
mod status;

use admin::Admin;

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_SIBLINGS: u8 = 3;
const EXIT_REFUSED: u8 = 4;
const EXIT_UNAVAILABLE: u8 = 5;

#[derive(Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Put, get and delete values in the kv store",
    after_help = "Exit codes: 0 ok, 1 not found, 2 usage, 3 siblings, 4 refused (4xx), 5 unavailable (retry may help)."
)]
struct Cli {
    /// Client API URL of a gateway or node (its --listen), for put, get, delete, resolve.
    #[arg(long, env = "KV_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Admin URL of a gateway or node (its --admin-listen), for members, ring, leave, remove.
    #[arg(long, env = "KV_ADMIN_URL", default_value = "http://127.0.0.1:8081", global = true)]
    admin_url: String,
    /// Read quorum for this request: 1..N, one, quorum or all [default: the cluster's R].
    #[arg(long, global = true)]
    r: Option<String>,
    /// Write quorum for this request: 1..N, one, quorum or all [default: the cluster's W].
    #[arg(long, global = true)]
    w: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, env = "KV_TIMEOUT", default_value_t = 10, global = true)]
    timeout: u64,
    /// The cluster secret file, to sign admin commands (leave, remove, repair, admin); or set
    /// KV_CLUSTER_SECRET. `make run` writes one to data/cluster.secret.
    #[arg(long, env = "KV_CLUSTER_SECRET_FILE", value_name = "FILE", global = true)]
    cluster_secret_file: Option<PathBuf>,
    /// Admin token (`Authorization: Bearer` on /admin/*, the processes' --admin-tokens-file),
    /// instead of the cluster secret; the secret wins when both are given.
    #[arg(long, env = "KV_ADMIN_TOKEN", global = true, hide_env_values = true)]
    admin_token: Option<String>,
    /// Client token (`Authorization: Bearer`), when the cluster has client tokens on.
    #[arg(long, env = "KV_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for https:// URLs.
    #[arg(long, env = "KV_TLS_CA", value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store a value (blind, or replacing what --context saw).
    Put {
        /// The key (any UTF-8, 1-1024 bytes).
        key: String,
        /// The value; or use --file.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file ("-" for stdin).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Content-Type stored with the value.
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
        /// Context token from an earlier get: the write replaces exactly what that read saw.
        #[arg(long)]
        context: Option<String>,
    },
    /// Print a value to stdout; siblings are listed on stdout with their context.
    Get {
        /// The key.
        key: String,
    },
    /// List a key's siblings with when each was written (a hint for resolving, not an order);
    /// exit 3 when there are several, 0 for one value, 1 when the key has none.
    Siblings {
        /// The key.
        key: String,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Context token: delete exactly what that read saw.
        #[arg(long)]
        context: Option<String>,
    },
    /// List the cluster's members: status, heartbeat, generation, last seen.
    Members,
    /// Decommission the node at --admin-url: it hands its ranges to their new owners and exits.
    Leave {
        /// Show the hand-off's progress and return once the node has left.
        #[arg(long)]
        wait: bool,
    },
    /// Every member's status, zone, release, share of the ring, keys, disk, hints pending and
    /// the ranges it is moving (joins, leaves), asked of each through --admin-url (a node or a
    /// gateway).
    Status,
    /// Declare a member permanently failed; the others re-replicate its ranges.
    Remove {
        /// The member's id.
        id: String,
        /// Remove even if the member is not down (its replicas are discarded).
        #[arg(long)]
        force: bool,
    },
    /// Run an anti-entropy round on the node at --admin-url now (Merkle comparison with every
    /// other replica) and print what it moved.
    Repair,
    /// Let the node at --admin-url serve again after it was frozen, without a member that was not
    /// frozen confirming it: for when one member is down and all the others were frozen at once
    /// (docs/consistency.md, rule 12). The others frozen with it then confirm through it.
    Thaw {
        /// You vouch that no member was removed while the node was frozen (if one was, the node
        /// may answer values deleted since). Required.
        #[arg(long)]
        no_removal: bool,
    },
    /// Show each member's share of the ring.
    Ring,
    /// Back up every record of the cluster into DIR (a new directory): parallel range scans
    /// through --admin-url (a node or gateway), each record read from R replicas and merged,
    /// siblings and tombstones kept as they are.
    Backup {
        /// The directory to create.
        dir: std::path::PathBuf,
        /// Ranges read at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Restore a backup made by `kvctl backup` into an empty cluster: every record merged into
    /// its replicas.
    Restore {
        /// The backup's directory.
        dir: std::path::PathBuf,
        /// Files restored at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Merge into a cluster that holds records (values deleted after the backup whose
        /// tombstones were purged come back).
        #[arg(long)]
        into_non_empty: bool,
        /// Retry a restore that failed, under the ticket it printed (accepted until it expires,
        /// `--tombstone-grace` after that restore began): every file is sent again, which the
        /// merge makes harmless. A new restore into what the failed one stored would need
        /// --into-non-empty instead.
        #[arg(long, conflicts_with = "into_non_empty")]
        ticket: Option<String>,
    },
    /// Any admin request to the process at --admin-url, signed, its JSON answer printed:
    /// e.g. `kvctl admin get /admin/workers`, `kvctl admin get /admin/local/KEY`.
    Admin {
        /// get or post.
        method: String,
        /// The path, starting with /admin/ (percent-encode keys).
        path: String,
    },
    /// Resolve siblings: read the key and write VALUE with the read's context.
    Resolve {
        /// The key.
        key: String,
        /// The value that replaces every sibling.
        value: String,
        /// Content-Type stored with the value.
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kvctl: error: {e:#}");
            if let Some(advice) = advice(&e) {
                eprintln!("kvctl: {advice}");
            }
            let code = match e.downcast_ref::<Error>() {
                Some(err) if err.is_retryable() => EXIT_UNAVAILABLE,
                Some(Error::Server { .. }) => EXIT_REFUSED,
                Some(_) => EXIT_UNAVAILABLE,
                None => 2,
            };
            ExitCode::from(code)
        }
    }
}

/// What to do about an error, where the server's own message names an HTTP detail rather than
/// kvctl's flag.
fn advice(e: &anyhow::Error) -> Option<&'static str> {
    let Some(Error::Server { status, code, message }) = e.downcast_ref::<Error>() else { return None };
    match status {
        404 if code == "no_route" => Some(
            "leave, remove, repair and thaw are a node's admin endpoints, not a gateway's: point --admin-url at a node's \
             admin listener (its --admin-listen, port 7200 by default)",
        ),
        401 if message.contains(kv_transport::SIGNATURE_HEADER) => Some(
            "admin requests are signed with the cluster secret: pass --cluster-secret-file FILE (or KV_CLUSTER_SECRET), \
             or an admin token with --admin-token (KV_ADMIN_TOKEN)",
        ),
        403 if message.contains("admin token may only read") => {
            Some("this admin token is a `read` token: changes need an `admin` token or the cluster secret")
        }
        409 if message.contains("force=true") => {
            Some("to remove a member that is not down anyway (its replicas are discarded), add --force")
        }
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let secrets = match (&cli.cluster_secret_file, std::env::var("KV_CLUSTER_SECRET").ok().filter(|v| !v.is_empty())) {
        (Some(path), _) => Some(kv_transport::Secrets::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        (None, Some(text)) => {
            Some(kv_transport::Secrets::parse(&text).map_err(|e| anyhow::anyhow!("KV_CLUSTER_SECRET: {e}"))?)
        }
        (None, None) => None,
    };
    let ca_pem = match &cli.tls_ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", path.display()))?),
        None => None,
    };
    let timeout = Duration::from_secs(cli.timeout);
    // One attempt: kvctl reports what happened, and a script decides whether to retry (exit 5).
    let client = Client::builder([&cli.url])
        .quorum(cli.r, cli.w)
        .token(cli.token.clone())
        .ca_pem(ca_pem.clone())
        .timeout(timeout)
        .retries(0)
        .build()?;
    let admin = Admin::new(&cli.admin_url, timeout, ca_pem.as_deref(), secrets.as_ref(), cli.admin_token.clone())?;
    match cli.command {
        Command::Put { key, value, file, content_type, context } => {
            let bytes = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    buf
                }
                (None, Some(path)) => {
                    std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                }
                (None, None) => anyhow::bail!("give a VALUE or --file"),
            };
            match client.put(&key, bytes, &content_type, context.as_deref()).await? {
                Some(context) => eprintln!("context: {context}"),
                None => eprintln!("written beside concurrent versions: `kvctl get {key:?}` lists the siblings"),
            }
            Ok(0)
        }
        Command::Get { key } => match client.get(&key).await? {
            Read::Value { value, context, .. } => {
                std::io::stdout().write_all(&value)?;
                eprintln!("context: {context}");
                Ok(0)
            }
            Read::Siblings { context, siblings } => {
                println!("{} siblings (resolve with: kvctl put {key:?} VALUE --context {context})", siblings.len());
                for (i, s) in siblings.iter().enumerate() {
                    let shown = if s.deleted { "<deleted>".to_owned() } else { shown(&s.value) };
                    println!("  [{}] {} ({})", i + 1, shown, s.content_type);
                }
                println!("context: {context}");
                Ok(EXIT_SIBLINGS)
            }
            Read::NotFound { .. } => {
                eprintln!("not found: {key}");
                Ok(EXIT_NOT_FOUND)
            }
        },
        Command::Siblings { key } => match client.get(&key).await? {
            Read::Value { value, content_type, .. } => {
                println!("1 value, no siblings: {} ({content_type})", shown(&value));
                Ok(0)
            }
            Read::Siblings { context, siblings } => {
                println!("{} siblings of {key:?}, newest first:", siblings.len());
                let mut siblings = siblings;
                siblings.sort_by_key(|s| std::cmp::Reverse(s.written_at_ms));
                for s in &siblings {
                    let what = if s.deleted { "<deleted>".to_owned() } else { shown(&s.value) };
                    println!("  written at {} ms: {what} ({})", s.written_at_ms, s.content_type);
                }
                println!("resolve with: kvctl put {key:?} VALUE --context {context}");
                Ok(EXIT_SIBLINGS)
            }
            Read::NotFound { .. } => {
                eprintln!("not found: {key}");
                Ok(EXIT_NOT_FOUND)
            }
        },
        Command::Delete { key, context } => {
            client.delete(&key, context.as_deref()).await?;
            Ok(0)
        }
        Command::Members => {
            let members = admin.view("/cluster/members").await?;
            println!(
                "{:<12} {:<22} {:<10} {:>6} {:<8} {:<9} {:>10} {:>14} {:>9}",
                "id", "address", "zone", "weight", "status", "release", "heartbeat", "generation", "seen ago"
            );
            for m in members["members"].as_array().into_iter().flatten() {
                let seen =
                    m["last_seen_ms_ago"].as_u64().map_or("-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                // Numbers as text: a JSON value ignores width and alignment.
                // A member of a release before 0.2.0 does not say its release.
                let release = m["release"].as_str().filter(|r| !r.is_empty()).unwrap_or("<0.2.0");
                println!(
                    "{:<12} {:<22} {:<10} {:>6} {:<8} {:<9} {:>10} {:>14} {:>9}",
                    text(&m["id"]),
                    text(&m["address"]),
                    text(&m["zone"]),
                    m["weight"].to_string(),
                    text(&m["status"]),
                    release,
                    m["heartbeat"].to_string(),
                    m["generation"].to_string(),
                    seen
                );
            }
            Ok(0)
        }
        Command::Leave { wait } => {
            let id = admin.id().await?;
            admin.call("POST", "/admin/leave", &[reqwest::StatusCode::ACCEPTED]).await?;
            println!("{id} is leaving: it hands off its ranges, then exits");
            if wait {
                status::wait_for_leave(&admin, &id).await?;
            }
            Ok(0)
        }
        Command::Backup { dir, parallel } => {
            backup::backup(std::sync::Arc::new(admin), &dir, parallel).await?;
            Ok(0)
        }
        Command::Restore { dir, parallel, into_non_empty, ticket } => {
            backup::restore(std::sync::Arc::new(admin), &dir, parallel, into_non_empty, ticket).await?;
            Ok(0)
        }
        Command::Status => Ok(if status::print(&admin).await? > 0 { EXIT_UNAVAILABLE } else { 0 }),
        Command::Repair => {
            let report =
                admin.call("POST", "/admin/repair", &[reqwest::StatusCode::OK, reqwest::StatusCode::ACCEPTED]).await?;
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            Ok(0)
        }
        Command::Thaw { no_removal } => {
            if !no_removal {
                anyhow::bail!(
                    "thaw needs --no-removal: you vouch that no member was removed while the node was frozen (if one \
                     was, it, and the members that confirm through it, may answer values deleted since)"
                );
            }
            let seen = admin.get("/admin/thaw").await?;
            if seen["frozen"] != true {
                println!("it is not frozen: nothing to do (serving: {})", seen["serving"]);
                return Ok(0);
            }
            let path = format!("/admin/thaw?no_removal=true&freezes={}", seen["freezes"]);
            let answer = admin.call("POST", &path, &[reqwest::StatusCode::OK]).await?;
            if answer["serving"] == true {
                println!("thawed: it serves again, and the members frozen with it confirm through it");
                Ok(0)
            } else {
                println!(
                    "thawed (was frozen: {}), but it does not serve: {}",
                    answer["was_frozen"],
                    answer["not_serving"].as_str().unwrap_or("?")
                );
                Ok(EXIT_UNAVAILABLE)
            }
        }
        Command::Remove { id, force } => {
            let mut path = format!("/admin/remove/{}", kv_client::encode_key(&id));
            if force {
                path.push_str("?force=true");
            }
            admin.call("POST", &path, &[reqwest::StatusCode::OK]).await?;
            println!("{id} removed: its ranges are being re-replicated");
            Ok(0)
        }
        Command::Ring => {
            let ring = admin.view("/cluster/ring").await?;
            println!("N = {}, zones = {}", ring["replicas"], ring["zones"]);
            println!("{:<16} {:<12} {:>7} {:>9} {:>9}", "id", "zone", "vnodes", "primary", "replica");
            for n in ring["nodes"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<12} {:>7} {:>8.1}% {:>8.1}%",
                    text(&n["id"]),
                    text(&n["zone"]),
                    n["vnodes"].to_string(),
                    n["primary_share"].as_f64().unwrap_or(0.0) * 100.0,
                    n["replica_share"].as_f64().unwrap_or(0.0) * 100.0
                );
            }
            Ok(0)
        }
        Command::Admin { method, path } => {
            let answer = admin.call(&method, &path, &[reqwest::StatusCode::OK]).await?;
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
            Ok(0)
        }
        Command::Resolve { key, value, content_type } => {
            let context = match client.get(&key).await? {
                Read::Value { context, .. } | Read::Siblings { context, .. } => Some(context),
                Read::NotFound { context } => context,
            };
            client.put(&key, value.into_bytes(), &content_type, context.as_deref()).await?;
            Ok(0)
        }
    }
}

/// A value as text when it is UTF-8, else its size.
fn shown(value: &[u8]) -> String {
    String::from_utf8(value.to_vec()).unwrap_or_else(|_| format!("<{} bytes of binary>", value.len()))
}

fn text(value: &serde_json::Value) -> &str {
    value.as_str().unwrap_or("?")
}

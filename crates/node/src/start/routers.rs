//! A node's three listeners: client, peer and admin, each behind its checks.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kv_api::process::{admin_body_limit, Process};
use kv_api::ApiState;
use kv_gossip::Status;
use kv_server::admin::ReadyCheck;
use kv_server::http::ListenerOptions;
use kv_server::serve::{Listener, RunError};
use kv_transport::{BoundCheck, VerifyState};

use super::graph::Graph;
use crate::config::Config;
use crate::NodeState;

/// Largest body of a gossip exchange: a digest of hundreds of members is tens of KiB.
const GOSSIP_BODY_LIMIT: u64 = 1 << 20;

/// Binds the client, peer and admin listeners.
pub async fn listeners(
    graph: &Graph,
    config: &Config,
    node: Arc<NodeState>,
    api: Arc<ApiState>,
    serving: &Arc<AtomicBool>,
) -> Result<Vec<Listener>, RunError> {
    let (process, server, security) = (&graph.process, &config.server, &config.security);
    let names = Arc::new(vec![config.advertise.clone(), graph.node_id.clone()]);
    let verify = |listener, prefix, bound, body_limit| {
        Process::verify_state(&graph.verifier, &names, listener, prefix, bound, body_limit, &graph.auth_metrics)
    };
    let peer_limit = crate::peer_body_limit(server.max_value_bytes);
    let peer_check = verify("peer", "/", crate::peer_bound as BoundCheck, peer_limit);
    let peer_options = ListenerOptions {
        unshed: &[kv_proto::GOSSIP_PATH],
        body_max: peer_limit,
        too_large_code: "body_too_large",
        precheck: Some(prechecked(peer_check.clone(), Some((kv_proto::GOSSIP_PATH, GOSSIP_BODY_LIMIT)))),
        // Every answer says the newest protocol this process speaks: callers send the newest
        // both speak (a rolling upgrade, docs/operations.md#upgrading).
        stamp: Some((
            axum::http::HeaderName::from_static(kv_proto::PROTOCOL_HEADER),
            axum::http::HeaderValue::from(kv_proto::PROTOCOL),
        )),
    };
    let peer = crate::peer_router(node.clone(), peer_check);
    // With --insecure, admin requests are not signed (curl works); peer requests still are,
    // with the built-in key, which catches corruption and other protocol versions.
    let admin_check = (!security.secrets.is_insecure())
        .then(|| {
            verify(
                "admin",
                "/admin/",
                kv_transport::verify::every as BoundCheck,
                admin_body_limit(server.max_value_bytes),
            )
        })
        .map(|check| Process::admin_check(check, security));
    let (scraped, scraped_metrics, data_dir) = (graph.engine.clone(), graph.metrics.clone(), config.data_dir.clone());
    let on_scrape: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        scraped.refresh_gauges();
        scraped_metrics.refresh_disk(&data_dir);
    });
    let admin_state = process.admin_state(serving, ready(graph), Some(on_scrape), graph.node_id.clone());
    Ok(vec![
        process.client_listener(server, security, api.clone()).await?,
        process.listener("peer", "--peer-listen", config.peer_listen, peer, server, peer_options, true).await?,
        process
            .admin_listener(server, admin_state, api, Some(crate::admin_router(node)), admin_check, |check| {
                prechecked(check, None)
            })
            .await?,
    ])
}

/// Whether the node is ready: normal and in contact. Fenced (its clock is off, a peer refused
/// it as no longer a member) or out of contact with every other member, it serves nothing: not
/// ready, so that a load balancer sends its clients elsewhere.
fn ready(graph: &Graph) -> ReadyCheck {
    let membership = graph.membership.clone();
    Arc::new(move || match membership.my_status() {
        Some(Status::Normal) => membership.ready().map_err(|e| e.to_string()),
        Some(other) => Err(format!("node is {}", other.name())),
        None => Err("membership not known".into()),
    })
}

/// The head check of a listener: the signature's form, key and time before the body is read,
/// and (for `small`'s path) a declared body no larger than its limit.
fn prechecked(check: VerifyState, small: Option<(&'static str, u64)>) -> kv_server::http::Precheck {
    Arc::new(move |parts: &mut axum::http::request::Parts| {
        kv_transport::verify::precheck(&check, parts)?;
        if let Some((path, limit)) = small.filter(|(path, _)| parts.uri.path() == *path) {
            let declared = parts
                .headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_none_or(|length| length > limit) {
                return Err(Box::new(kv_server::http::json_error(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    &format!("{path} takes a body of at most {limit} bytes, with its Content-Length"),
                )));
            }
        }
        Ok(())
    })
}

//! The one place where errors become HTTP responses.
//!
//! Bodies are JSON `{"error": "<code>", "message": "..."}`. A 5xx never carries internals: the
//! details go to the log, the client gets a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Everything a client request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key is empty, too long or not UTF-8.
    #[error("{0}")]
    BadKey(String),
    /// The `X-Context` header is not a token this store issued.
    #[error("bad X-Context: {0}")]
    BadContext(String),
    /// Another header or parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than `--max-value-bytes`.
    #[error("{}", kv_server::http::too_large_message(*limit))]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A query parameter is malformed (e.g. `r` or `w` outside 1..=N).
    #[error("{0}")]
    BadParameter(String),
    /// An internal request failed its signature check.
    #[error("{0}")]
    Forbidden(String),
    /// Too few replicas answered ([`kv_coordinator::Error::QuorumNotMet`]), or the key has fewer
    /// replicas than the quorum asks for ([`kv_coordinator::Error::InsufficientReplicas`]): the
    /// coordinator's error itself, so its fields are defined once.
    #[error("{0}")]
    Quorum(kv_coordinator::Error),
    /// The cluster has not formed yet: fewer normal members than `--expect-nodes` were seen.
    #[error("the cluster is forming: {normal} of {expected} expected members are up; retry shortly")]
    Forming {
        /// Normal members seen.
        normal: usize,
        /// `--expect-nodes`.
        expected: usize,
    },
    /// This node does not serve now: it left or was removed, its clock is off from the
    /// cluster's, or it cannot confirm that it is still a member (docs/consistency.md, rule 12).
    /// Another node serves the request.
    #[error("{0}")]
    NotServing(String),
    /// A peer asked this node about a key or range it does not hold in its view.
    #[error("{0}")]
    Misdirected(String),
    /// The request conflicts with the node's or member's state.
    #[error("{0}")]
    Conflict(String),
    /// The key holds as many siblings as allowed; the write was not applied.
    #[error("{0}")]
    TooManySiblings(String),
    /// No member with this id.
    #[error("no member {0:?}")]
    NotFoundMember(String),
    /// The key has no live version (never written, or deleted).
    #[error("key not found")]
    NotFoundKey,
    /// No route matches.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists but not with this method.
    #[error("method not allowed on this endpoint")]
    WrongMethod,
    /// The node is starting or shutting down.
    #[error("node is not ready")]
    NotReady,
    /// Storage failed in a way that may pass (I/O error).
    #[error("storage temporarily unavailable")]
    Unavailable(String),
    /// A peer's request arrived after its deadline (a store-batch stalled on its way): the
    /// sender reads `504` as [`kv_proto::Refusal::TooLate`].
    #[error("{0}")]
    TooLate(String),
    /// Members an admin request needs did not answer (a backup page, a restore batch, a
    /// restore's begin); says which and why.
    #[error("{0}")]
    MembersUnavailable(String),
    /// Anything else; the string is logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        self.status_and_code().0.as_u16()
    }

    /// The full message, internals included: for peers and logs, never for clients.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Unavailable(detail) | ApiError::Internal(detail) => detail.clone(),
            other => other.to_string(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadKey(_) => (StatusCode::BAD_REQUEST, "bad_key"),
            ApiError::BadContext(_) => (StatusCode::BAD_REQUEST, "bad_context"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::BadParameter(_) => (StatusCode::BAD_REQUEST, "bad_parameter"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Quorum(kv_coordinator::Error::InsufficientReplicas { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "insufficient_replicas")
            }
            ApiError::Quorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "quorum_not_met"),
            ApiError::Forming { .. } => (StatusCode::SERVICE_UNAVAILABLE, "cluster_forming"),
            ApiError::NotServing(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_serving"),
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
            ApiError::NotFoundKey => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotFoundMember(_) => (StatusCode::NOT_FOUND, "no_member"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooManySiblings(_) => (StatusCode::CONFLICT, "too_many_siblings"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::WrongMethod => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::TooLate(_) => (StatusCode::GATEWAY_TIMEOUT, "too_late"),
            ApiError::Unavailable(_) | ApiError::MembersUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<kv_coordinator::Error> for ApiError {
    fn from(e: kv_coordinator::Error) -> Self {
        match e {
            quorum @ (kv_coordinator::Error::QuorumNotMet { .. }
            | kv_coordinator::Error::InsufficientReplicas { .. }) => ApiError::Quorum(quorum),
            kv_coordinator::Error::BadQuorum(message) => ApiError::BadParameter(message),
            kv_coordinator::Error::BadContext(message) => ApiError::BadContext(message),
            kv_coordinator::Error::NoMembers => ApiError::NotReady,
            kv_coordinator::Error::TooManySiblings(message) => ApiError::TooManySiblings(message),
            refused @ kv_coordinator::Error::Refused { .. } => ApiError::Internal(refused.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Unavailable(detail) | ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, code, "request failed");
        }
        let mut body = json!({ "error": code, "message": self.to_string() });
        let counts = match &self {
            ApiError::Quorum(kv_coordinator::Error::QuorumNotMet { required, acks, replicas, .. }) => {
                Some((*required, *acks, *replicas))
            }
            ApiError::Quorum(kv_coordinator::Error::InsufficientReplicas { required, replicas, .. }) => {
                Some((*required, 0, *replicas))
            }
            _ => None,
        };
        if let Some((required, acks, replicas)) = counts {
            body["required"] = json!(required);
            body["acks"] = json!(acks);
            body["replicas"] = json!(replicas);
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = counts.and_then(|(_, a, r)| axum::http::HeaderValue::from_str(&format!("{a}/{r}")).ok()) {
            response.headers_mut().insert(crate::api::X_REPLICAS.clone(), value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here passes: members come up, replicas come back.
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

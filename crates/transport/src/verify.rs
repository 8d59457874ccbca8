//! The server side of [`crate::Signer`]: one middleware in front of every internal route.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::signer::{Signer, SIGNATURE_HEADER};

/// What [`verify`] needs: the signer, and the largest body it reads.
#[derive(Clone)]
pub struct VerifyState {
    /// Checks signatures.
    pub signer: Signer,
    /// Bodies larger than this are refused `413` before they are read whole.
    pub body_limit: usize,
}

/// Middleware: reads the whole body (up to the limit) and refuses the request `403` unless its
/// signature covers exactly this method, path and body. Handlers behind it see the same body.
pub async fn verify(State(state): State<VerifyState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, state.body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "internal request body too large or cut short",
            )
        }
    };
    let header = parts.headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Err(message) = state.signer.verify(header, parts.method.as_str(), path, &bytes) {
        tracing::warn!(path, error = %message, "refused an internal request");
        return refuse(StatusCode::FORBIDDEN, "forbidden", &message);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

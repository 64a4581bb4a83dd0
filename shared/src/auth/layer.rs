//! The local server's gate: every route it is put on needs a verified bearer token; the
//! caller it speaks for goes into the request for the handlers. Plus the routes of the
//! embedded authorization server and the SMART configuration.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::authority::Authority;
use super::verifier::{TokenVerifier, VerifyError};
use crate::http::ApiError;

/// Puts the token check in front of every route of `router` (not its fallback: an unknown
/// route is 404 either way).
pub fn protect(router: Router, verifier: Arc<TokenVerifier>) -> Router {
    router.route_layer(axum::middleware::from_fn_with_state(
        verifier,
        require_token,
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn require_token(
    State(verifier): State<Arc<TokenVerifier>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(req.headers()) else {
        super::audit_refusal(req.method().as_str(), req.uri().path(), "no bearer token");
        return ApiError::Unauthorized { reason: None }.into_response();
    };
    match verifier.verify(token).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(VerifyError::Token(e)) => {
            super::audit_refusal(req.method().as_str(), req.uri().path(), &e.to_string());
            ApiError::Unauthorized {
                reason: Some(e.to_string()),
            }
            .into_response()
        }
        Err(e @ VerifyError::KeysUnavailable { .. }) => {
            tracing::error!(error = %e, "bearer token not checked");
            ApiError::AuthUnavailable.into_response()
        }
    }
}

/// `POST /token` and `GET /jwks.json` of the embedded authorization server, to nest where
/// its issuer URL points.
pub fn authority_router(authority: Arc<Authority>) -> Router {
    let jwks = authority.jwks();
    Router::new()
        .route("/token", post(token))
        .route(
            "/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move { json(StatusCode::OK, &jwks) }
            }),
        )
        .with_state(authority)
}

async fn token(State(authority): State<Arc<Authority>>, body: Bytes) -> Response {
    let now = chrono::Utc::now().timestamp();
    match authority.issue(&body, now) {
        Ok(issued) => {
            tracing::info!(
                target: "audit",
                event = "token",
                client_id = %issued.client_id,
                outcome = 200u16,
                scope = %issued.scope,
                "token issued"
            );
            let mut resp = json(StatusCode::OK, &issued.body);
            // RFC 6749 §5.1: token answers are not cached.
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            tracing::info!(
                target: "audit",
                event = "token",
                outcome = e.status(),
                error = e.error,
                reason = %e.description,
                "token refused"
            );
            json(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                &e.body(),
            )
        }
    }
}

fn json(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

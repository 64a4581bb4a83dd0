//! `GET [base]/.well-known/smart-configuration`: where clients get tokens. Open on every host,
//! as `metadata` is: a client reads it before it has a token.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

/// The SMART configuration of a Backend Services issuer (SMART App Launch 2.x, the
/// client-credentials part); `None` fields are left out.
pub fn issuer_configuration(
    issuer: &str,
    jwks_uri: Option<&str>,
    token_endpoint: Option<&str>,
) -> Value {
    let mut c = json!({
        "issuer": issuer,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    });
    if let Some(j) = jwks_uri {
        c["jwks_uri"] = json!(j);
    }
    if let Some(t) = token_endpoint {
        c["token_endpoint"] = json!(t);
    }
    c
}

/// The route, to nest under the FHIR base.
pub fn smart_configuration_router(config: Value) -> Router {
    let config = Arc::new(config);
    Router::new().route(
        "/.well-known/smart-configuration",
        get(move || {
            let config = config.clone();
            async move { axum::Json(config.as_ref().clone()) }
        }),
    )
}

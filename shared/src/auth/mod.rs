//! Access control: SMART scopes as the types a caller may read ([`Grant`]), and, for the
//! local server, bearer-token verification against trusted issuers' JWKS ([`verifier`]), a
//! small SMART Backend Services authorization server ([`authority`]) and the axum layer that
//! puts both in front of the routes ([`layer`]). On AWS the API Gateway JWT authorizer
//! verifies tokens and the functions read its claims (`functions/common`).

mod discovery;
mod narrow;
mod scopes;

pub use discovery::{issuer_configuration, smart_configuration_router};
pub use narrow::{narrow_to_grant, needed_grant};
pub use scopes::Grant;

#[cfg(feature = "local-auth")]
pub mod authority;
#[cfg(feature = "local-auth")]
pub mod layer;
#[cfg(feature = "local-auth")]
pub mod verifier;

/// An audit event for a request refused before any handler saw it (no token, a bad one).
pub fn audit_refusal(method: &str, path: &str, reason: &str) {
    tracing::info!(
        target: "audit",
        event = "refused",
        %method,
        %path,
        outcome = 401u16,
        %reason,
        "request refused"
    );
}

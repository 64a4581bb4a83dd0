//! The host around a function's axum router.

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::request::RequestContext;
use shared::http::{Caller, with_fallbacks};

use super::FunctionConfig;

/// The caller's identity and scopes from the API Gateway JWT authorizer, which has checked
/// the token already (signature, issuer, audience, expiry): the `client_id` claim (SMART
/// Backend Services), else `sub`, and the `scope` claim. Anonymous (every type) without an
/// authorizer, which only a deployment left open on purpose has (`JwtIssuer` empty).
pub fn caller_of(context: Option<&RequestContext>) -> Caller {
    #[allow(irrefutable_let_patterns)]
    if let Some(RequestContext::ApiGatewayV2(ctx)) = context
        && let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
    {
        let iss = jwt.claims.get("iss").map(String::as_str).unwrap_or("");
        let id = jwt
            .claims
            .get("client_id")
            .or_else(|| jwt.claims.get("sub"))
            .map(String::as_str)
            .unwrap_or("");
        // SMART puts scopes in `scope`, some issuers in `scp`; HTTP APIs pass a claim that
        // is a JSON array as `[a b c]`.
        let scope = jwt
            .claims
            .get("scope")
            .or_else(|| jwt.claims.get("scp"))
            .cloned()
            .unwrap_or_else(|| jwt.scopes.clone().unwrap_or_default().join(" "));
        let scope = scope
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .replace(',', " ");
        // A token without a client identity owns nothing and may read nothing.
        return if id.is_empty() {
            Caller {
                id: format!("{iss}#"),
                grant: shared::auth::Grant::none(),
            }
        } else {
            Caller::client(iss, id, &scope)
        };
    }
    Caller::anonymous()
}

async fn identify(mut req: Request, next: Next) -> Response {
    let caller = caller_of(req.extensions().get::<RequestContext>());
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The router a function serves: its own routes under the FHIR base path, the caller's
/// identity in every request, `OperationOutcome`s for unknown routes and methods.
pub fn host(routes: Router, config: &FunctionConfig) -> Router {
    with_fallbacks(Router::new().nest(&config.base_path, routes))
        .layer(axum::middleware::from_fn(identify))
}

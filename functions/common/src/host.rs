//! The host around a function's axum router.

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::request::RequestContext;
use shared::http::{Caller, with_fallbacks};

use super::FunctionConfig;

/// The caller's identity: the JWT authorizer's `client_id` claim (SMART backend services),
/// else its `sub`; anonymous without an authorizer.
pub fn caller_of(context: Option<&RequestContext>) -> Caller {
    #[allow(irrefutable_let_patterns)]
    if let Some(RequestContext::ApiGatewayV2(ctx)) = context
        && let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
    {
        let iss = jwt.claims.get("iss").map(String::as_str).unwrap_or("");
        if let Some(id) = jwt
            .claims
            .get("client_id")
            .or_else(|| jwt.claims.get("sub"))
        {
            return Caller(format!("{iss}#{id}"));
        }
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

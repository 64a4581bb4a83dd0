//! Who is calling. Hosts put a [`Caller`] into the request extensions (the Lambda host from
//! the API Gateway authorizer, the local server from its optional token check); without one
//! the caller is anonymous. Jobs remember their owner and answer nobody else.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

impl Caller {
    pub fn anonymous() -> Self {
        Caller("anonymous".into())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous))
    }
}

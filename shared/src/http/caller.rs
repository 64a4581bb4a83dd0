//! Who is calling and what they may read. Hosts put a [`Caller`] into the request extensions
//! (the Lambda host from the API Gateway JWT authorizer's claims, the local server from the
//! access token it verified); without one the caller is anonymous, which only a deployment
//! without authentication produces. Jobs remember their owner and answer nobody else.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::Grant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The owner key of the caller's jobs: `<issuer>#<client id>`, or `anonymous`.
    pub id: String,
    /// The resource types the caller's scopes let it read.
    pub grant: Grant,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            id: "anonymous".into(),
            grant: Grant::All,
        }
    }

    /// A client of `issuer` with the space-separated SMART `scope`.
    pub fn client(issuer: &str, client_id: &str, scope: &str) -> Self {
        Caller {
            id: format!("{issuer}#{client_id}"),
            grant: Grant::from_scopes(scope),
        }
    }

    /// The client id alone, for the audit log.
    pub fn client_id(&self) -> &str {
        self.id
            .rsplit_once('#')
            .map_or(self.id.as_str(), |(_, c)| c)
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

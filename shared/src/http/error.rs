//! The one place where failures become HTTP statuses and `OperationOutcome` bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::outcome::{Issue, IssueCode, single};
use crate::ports::{ObjectError, QueueError, SourceError, StoreError};
use crate::request::KickoffError;

pub const FHIR_JSON: &str = "application/fhir+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Kickoff(#[from] KickoffError),
    /// Unknown job, someone else's job, or a cancelled one: all look the same from outside.
    #[error("no export at this address (unknown, expired or cancelled)")]
    JobNotFound,
    #[error("no such file in this export")]
    FileNotFound,
    #[error("no such manifest page (yet)")]
    PageNotFound,
    #[error("invalid `{name}`: {message}")]
    InvalidQuery { name: &'static str, message: String },
    #[error("the range asked for starts past the end of the file ({0} bytes)")]
    RangeNotSatisfiable(u64),
    #[error("the export failed: {0}")]
    JobFailed(String),
    #[error("{}", body_refusal(*.0))]
    BodyRejected(StatusCode),
    #[error(
        "the query string is {len} bytes; at most {limit} are accepted (FHIR_EXPORT_MAX_QUERY_BYTES)"
    )]
    QueryTooLong { len: usize, limit: usize },
    /// No bearer token, or one that does not verify; `reason` is safe to show.
    #[error("{}", reason.as_deref().unwrap_or("this server requires a bearer access token (SMART Backend Services)"))]
    Unauthorized { reason: Option<String> },
    /// The token is valid, its scopes do not allow what is asked.
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "this client has {active} exports running; at most {limit} may run at once (FHIR_EXPORT_MAX_ACTIVE_EXPORTS): wait for one to finish or cancel one"
    )]
    TooManyExports {
        active: usize,
        limit: usize,
        retry_after_secs: u64,
    },
    #[error("the token cannot be checked right now")]
    AuthUnavailable,
    #[error("no schedule of this name (for this client)")]
    ScheduleNotFound,
    #[error("{0}")]
    Schedule(String),
    #[error("this route does not exist")]
    RouteNotFound,
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error("job store unavailable")]
    Store(#[from] StoreError),
    #[error("work queue unavailable")]
    Queue(#[from] QueueError),
    #[error("object store unavailable")]
    Object(#[from] ObjectError),
    #[error("data source unavailable")]
    Source(#[from] SourceError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Kickoff(k) => match k {
                KickoffError::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
                KickoffError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                KickoffError::GroupNotFound { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            },
            ApiError::JobNotFound
            | ApiError::FileNotFound
            | ApiError::PageNotFound
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::JobFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::InvalidQuery { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyRejected(s) => *s,
            ApiError::QueryTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyExports { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ScheduleNotFound => StatusCode::NOT_FOUND,
            ApiError::Schedule(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Object(ObjectError::Refused { .. } | ObjectError::Access(_))
            | ApiError::Source(SourceError::Refused { .. } | SourceError::Access(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            // The upstream FHIR server failed the request the kick-off made of it.
            ApiError::Source(
                SourceError::Upstream { .. }
                | SourceError::Unreachable { .. }
                | SourceError::Protocol { .. },
            ) => StatusCode::BAD_GATEWAY,
            ApiError::Store(_) | ApiError::Queue(_) | ApiError::Object(_) | ApiError::Source(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn issue(&self) -> Issue {
        let text = self.to_string();
        match self {
            ApiError::Kickoff(k) => {
                let code = match k {
                    KickoffError::UnsupportedParameter { .. }
                    | KickoffError::NotAcceptable { .. }
                    | KickoffError::UnsupportedMediaType { .. } => IssueCode::NotSupported,
                    KickoffError::UnknownParameter { .. } => IssueCode::NotSupported,
                    KickoffError::GroupNotFound { .. } => IssueCode::NotFound,
                    KickoffError::MissingRespondAsync => IssueCode::Required,
                    KickoffError::InvalidBody { .. } => IssueCode::Structure,
                    KickoffError::TooCostly { .. } => IssueCode::TooCostly,
                    _ => IssueCode::Invalid,
                };
                let issue = Issue::error(code, text);
                match k.expression() {
                    Some(e) => issue.at(e),
                    None => issue,
                }
            }
            ApiError::JobNotFound
            | ApiError::FileNotFound
            | ApiError::PageNotFound
            | ApiError::RouteNotFound => Issue::error(IssueCode::NotFound, text),
            ApiError::JobFailed(_) => Issue::error(IssueCode::Exception, text),
            ApiError::RangeNotSatisfiable(_) => Issue::error(IssueCode::Value, text).at("Range"),
            ApiError::InvalidQuery { name, .. } => Issue::error(IssueCode::Invalid, text).at(*name),
            ApiError::BodyRejected(_) => Issue::error(IssueCode::TooCostly, text),
            ApiError::QueryTooLong { .. } => Issue::error(IssueCode::TooCostly, text),
            ApiError::Unauthorized { .. } => {
                Issue::error(IssueCode::Security, text).at("Authorization")
            }
            ApiError::Forbidden(_) => Issue::error(IssueCode::Forbidden, text),
            ApiError::TooManyExports { .. } => Issue::error(IssueCode::Throttled, text),
            ApiError::AuthUnavailable | ApiError::Schedule(_) => {
                Issue::error(IssueCode::Transient, format!("{text}; try again later"))
            }
            ApiError::ScheduleNotFound => Issue::error(IssueCode::NotFound, text),
            ApiError::MethodNotAllowed => Issue::error(IssueCode::NotSupported, text),
            // A refusal will not pass on a retry: said in words, without the store's internals.
            ApiError::Object(ObjectError::Refused { reason, .. }) => Issue::error(
                IssueCode::Exception,
                format!("the output store refuses the operation: {reason}"),
            ),
            ApiError::Object(ObjectError::Access(fault)) => Issue::error(
                IssueCode::Exception,
                format!("the output store refuses the service: {fault}"),
            ),
            ApiError::Source(SourceError::Access(fault)) => Issue::error(
                IssueCode::Exception,
                format!("the data source refuses the service: {fault}"),
            ),
            ApiError::Source(SourceError::Refused { reason, .. }) => Issue::error(
                IssueCode::Exception,
                format!("the data source refuses to be read: {reason}"),
            ),
            // Names the upstream request and its status (never resource content).
            ApiError::Source(
                e @ (SourceError::Upstream { .. }
                | SourceError::Unreachable { .. }
                | SourceError::Protocol { .. }),
            ) => Issue::error(IssueCode::Exception, e.to_string()),
            // Backend failures say what was unavailable, never the cause (it may name internals);
            // `transient` tells the client that trying again is reasonable.
            ApiError::Store(_) | ApiError::Queue(_) | ApiError::Object(_) | ApiError::Source(_) => {
                Issue::error(IssueCode::Transient, format!("{text}; try again later"))
            }
        }
    }
}

/// Turns an error answer that is not an `OperationOutcome` (the framework's own: a rejected
/// extractor, text/plain) into one with the same status, keeping a short text as its
/// diagnostics. JSON answers, and successes, pass unchanged.
pub(crate) async fn as_outcome(resp: Response) -> Response {
    let status = resp.status();
    // JSON answers are deliberate: an `OperationOutcome`, or an OAuth error of the token
    // endpoint, which OAuth clients expect as it is.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(FHIR_JSON) || v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned(),
    };
    let code = if status.is_server_error() {
        IssueCode::Exception
    } else {
        IssueCode::Invalid
    };
    tracing::info!(status = status.as_u16(), reason = %text, "request refused by the framework");
    let mut out = outcome_response(status, &single(Issue::error(code, text)));
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn body_refusal(status: StatusCode) -> String {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is larger than this server accepts (FHIR_EXPORT_MAX_BODY_BYTES)".into()
    } else {
        "the request body is unreadable".into()
    }
}

/// RFC 6750 §3: the challenge, with `error="invalid_token"` when a token was sent.
fn www_authenticate(reason: Option<&str>) -> HeaderValue {
    let value = match reason {
        None => r#"Bearer realm="fhir-export""#.to_owned(),
        Some(r) => {
            let clean: String = r
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
                .collect();
            format!(
                r#"Bearer realm="fhir-export", error="invalid_token", error_description="{clean}""#
            )
        }
    };
    HeaderValue::from_str(&value)
        .unwrap_or(HeaderValue::from_static(r#"Bearer realm="fhir-export""#))
}

/// An `OperationOutcome` response.
pub fn outcome_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let issue = self.issue();
        if status.is_server_error() && !matches!(self, ApiError::JobFailed(_)) {
            tracing::error!(status = status.as_u16(), error = %crate::error_chain(&self), "request failed");
        } else {
            tracing::info!(
                status = status.as_u16(),
                parameter = issue.expression.as_deref().unwrap_or(""),
                reason = %issue.diagnostics,
                "request refused"
            );
        }
        let mut resp = outcome_response(status, &single(issue));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        }
        match &self {
            ApiError::TooManyExports {
                retry_after_secs, ..
            } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized { reason } => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    www_authenticate(reason.as_deref()),
                );
            }
            _ => {}
        }
        resp
    }
}

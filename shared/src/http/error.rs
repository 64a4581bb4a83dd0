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
    #[error("the range asked for starts past the end of the file ({0} bytes)")]
    RangeNotSatisfiable(u64),
    #[error("the export failed: {0}")]
    JobFailed(String),
    #[error("the request body is too large or unreadable")]
    BodyRejected(StatusCode),
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
            ApiError::BodyRejected(s) => *s,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
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
            ApiError::BodyRejected(_) => Issue::error(IssueCode::TooCostly, text),
            ApiError::MethodNotAllowed => Issue::error(IssueCode::NotSupported, text),
            // Backend failures say what was unavailable, never the cause (it may name internals);
            // `transient` tells the client that trying again is reasonable.
            ApiError::Store(_) | ApiError::Queue(_) | ApiError::Object(_) | ApiError::Source(_) => {
                Issue::error(IssueCode::Transient, format!("{text}; try again later"))
            }
        }
    }
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
        resp
    }
}

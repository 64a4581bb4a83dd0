//! One audit event per kick-off, status, cancel and file request (the token endpoint and the
//! token check write theirs in `crate::auth`): `tracing` target `audit`, with the client id,
//! the job id, the HTTP outcome and the types involved. Never a resource, a token or a patient
//! identifier: the path of these routes holds only a job id and a file name. Hosts route the
//! target where they like (`docs/security.md`).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::Caller;

/// The types a response concerns, for the audit event (set by the handler).
#[derive(Debug, Clone)]
pub(crate) struct AuditTypes(pub String);

pub(crate) async fn audit(State(event): State<&'static str>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.client_id().to_owned());
    let method = req.method().clone();
    let path_job = job_in_path(req.uri().path());
    let file_type = (event == "file")
        .then(|| file_type(req.uri().path()))
        .flatten();
    let resp = next.run(req).await;
    let job = path_job.or_else(|| {
        resp.headers()
            .get(header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(job_in_path)
    });
    let types = resp
        .extensions()
        .get::<AuditTypes>()
        .map(|t| t.0.clone())
        .or(file_type)
        .unwrap_or_default();
    tracing::info!(
        target: "audit",
        event,
        %method,
        client_id = %client,
        job_id = job.as_deref().unwrap_or(""),
        outcome = resp.status().as_u16(),
        types = %types,
        "audit"
    );
    resp
}

/// The job id after `/_export/` (only its characters: it is not trusted).
fn job_in_path(path: &str) -> Option<String> {
    let (_, rest) = path.split_once("/_export/")?;
    let id: String = rest
        .split('/')
        .next()?
        .chars()
        .take(64)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The type a file name starts with (`Observation-2.ndjson` is Observation).
fn file_type(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let t = name.split(['-', '.']).next()?;
    crate::model::ResourceType::parse(t)
        .ok()
        .map(|t| t.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_types_from_paths() {
        assert_eq!(
            job_in_path("/fhir/_export/abc-123/files/Patient-1.ndjson").as_deref(),
            Some("abc-123")
        );
        assert_eq!(
            job_in_path("http://h/fhir/_export/abc").as_deref(),
            Some("abc")
        );
        assert_eq!(job_in_path("/fhir/$export"), None);
        assert_eq!(
            file_type("/fhir/_export/a/files/Observation-2.ndjson").as_deref(),
            Some("Observation")
        );
        assert_eq!(file_type("/fhir/_export/a/files/error/x.ndjson"), None);
    }
}

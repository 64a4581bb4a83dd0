//! `GET [file URL]`: stream a published file, or redirect to a short-lived signed URL.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{Caller, FilesState, owned_job};
use crate::job::{JobState, OutputFile};
use crate::layout::is_published_name;
use crate::settings::FileAccess;

pub const NDJSON: &str = "application/fhir+ndjson";

pub(super) async fn file(
    State(state): State<FilesState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    match serve(&state, &caller, &id, &name).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &FilesState,
    caller: &Caller,
    id: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let job = owned_job(state.jobs.as_ref(), caller, id).await?;
    if !is_published_name(name) {
        return Err(ApiError::FileNotFound);
    }
    let published: Vec<OutputFile> = match job.state {
        JobState::Completed => state.jobs.outputs(&job.id).await?,
        // A partial manifest lists the files of published chunks while the export runs.
        JobState::Running if job.request.allow_partial_manifests => {
            let mut files = job.plan.notes.clone();
            for c in state.jobs.chunks(&job.id).await? {
                if c.renamed {
                    files.extend(c.published.unwrap_or_default());
                }
            }
            files
        }
        _ => return Err(ApiError::FileNotFound),
    };
    let file = published
        .into_iter()
        .find(|f| f.name == name)
        .ok_or(ApiError::FileNotFound)?;
    let key = format!("{}/{}", job.output_prefix, file.name);
    if state.settings.file_access != FileAccess::Served
        && let Some(signer) = state.output.signer()
    {
        let url = signer
            .signed_get_url(&key, state.settings.signed_url_ttl)
            .await?;
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&url) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    let stream = state
        .output
        .read(&key, 0, None)
        .await
        .map_err(|e| match e {
            crate::ports::ObjectError::NotFound(_) => ApiError::FileNotFound,
            other => ApiError::Object(other),
        })?;
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.bytes));
    Ok(resp)
}

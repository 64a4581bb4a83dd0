//! `GET [status URL]`: 202 while running, 200 with the manifest when complete.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{Caller, StatusState, owned_job};
use crate::job::{Job, JobState, OutputFile};
use crate::manifest::manifest;
use crate::settings::FileAccess;

pub(super) async fn status(
    State(state): State<StatusState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    match poll(&state, &caller, &id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `X-Progress`: under 100 characters, a real percentage of chunks done.
pub fn progress_text(job: &Job) -> String {
    match job.state {
        JobState::Accepted | JobState::Planning => "0% complete (planning)".to_owned(),
        JobState::Finalizing => "100% complete (publishing files)".to_owned(),
        _ => format!(
            "{}% complete ({} of {} chunks)",
            job.progress_percent(),
            job.chunks_done,
            job.chunks_total
        ),
    }
}

/// HTTP-date (RFC 9110 IMF-fixdate).
pub fn http_date(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

async fn poll(state: &StatusState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    let job = owned_job(state.jobs.as_ref(), caller, id).await?;
    match job.state {
        JobState::Accepted | JobState::Planning | JobState::Running | JobState::Finalizing => {
            let mut resp = StatusCode::ACCEPTED.into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&progress_text(&job)) {
                h.insert("x-progress", v);
            }
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(state.settings.retry_after.as_secs().max(1)),
            );
            Ok(resp)
        }
        JobState::Completed => {
            let files = state.jobs.outputs(&job.id).await?;
            let urls = file_urls(state, &job, &files).await?;
            let mut urls = urls.into_iter();
            let body = manifest(&job, &files, state.settings.requires_access_token(), |_| {
                urls.next().unwrap_or_default()
            });
            let mut resp = axum::Json(body).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(&http_date(&job.expires_at)) {
                h.insert(header::EXPIRES, v);
            }
            Ok(resp)
        }
        JobState::Failed => Err(ApiError::JobFailed(
            job.failure.unwrap_or_else(|| "unknown cause".into()),
        )),
        JobState::Cancelled => Err(ApiError::JobNotFound),
    }
}

async fn file_urls(
    state: &StatusState,
    job: &Job,
    files: &[OutputFile],
) -> Result<Vec<String>, ApiError> {
    let signer = match state.settings.file_access {
        FileAccess::SignedUrls => state.output.signer(),
        FileAccess::Served | FileAccess::Redirect => None,
    };
    let mut urls = Vec::with_capacity(files.len());
    for f in files {
        let url = match signer {
            Some(s) => {
                s.signed_get_url(
                    &format!("{}/{}", job.output_prefix, f.name),
                    state.settings.signed_url_ttl,
                )
                .await?
            }
            None => state.settings.file_url(&job.id, &f.name),
        };
        urls.push(url);
    }
    Ok(urls)
}

//! `GET [status URL]`: 202 while running (with a partial manifest when the client allowed
//! one and its first page is ready), 200 with the manifest when complete, pages of a large or
//! partial manifest at `[status URL]?page=N`.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{Caller, StatusState, owned_job};
use crate::job::{ChunkRecord, Job, JobState, OutputFile};
use crate::manifest::manifest;
use crate::settings::FileAccess;

pub(super) async fn status(
    State(state): State<StatusState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let page = match page_param(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match poll(&state, &caller, &id, page).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn page_param(query: Option<&str>) -> Result<Option<u32>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("page", v)) => {
                return v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .map(Some)
                    .ok_or_else(|| ApiError::InvalidQuery {
                        name: "page",
                        message: format!("`{v}` is not a page number (1, 2, ...)"),
                    });
            }
            _ => continue,
        }
    }
    Ok(None)
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

fn in_progress(state: &StatusState, job: &Job) -> Response {
    let mut resp = StatusCode::ACCEPTED.into_response();
    add_progress(state, job, &mut resp);
    resp
}

fn add_progress(state: &StatusState, job: &Job, resp: &mut Response) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&progress_text(job)) {
        h.insert("x-progress", v);
    }
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.settings.retry_after.as_secs().max(1)),
    );
}

async fn poll(
    state: &StatusState,
    caller: &Caller,
    id: &str,
    page: Option<u32>,
) -> Result<Response, ApiError> {
    let job = owned_job(state.jobs.as_ref(), caller, id).await?;
    match job.state {
        JobState::Accepted | JobState::Planning | JobState::Finalizing => {
            if page.is_some() {
                return Err(ApiError::PageNotFound);
            }
            Ok(in_progress(state, &job))
        }
        JobState::Running => {
            if page.is_none() && !job.request.allow_partial_manifests {
                return Ok(in_progress(state, &job));
            }
            let k = page.unwrap_or(1);
            let chunks = state.jobs.chunks(&job.id).await?;
            let Some(files) = partial_page(&job, &chunks, k) else {
                return match page {
                    Some(_) => Err(ApiError::PageNotFound),
                    None => Ok(in_progress(state, &job)),
                };
            };
            let next = partial_page(&job, &chunks, k + 1).map(|_| page_url(state, &job, k + 1));
            let mut resp = manifest_response(state, &job, &files, next, None).await?;
            *resp.status_mut() = StatusCode::ACCEPTED;
            add_progress(state, &job, &mut resp);
            Ok(resp)
        }
        JobState::Completed => {
            let all = state.jobs.outputs(&job.id).await?;
            let pages = all.iter().map(|f| f.page).max().unwrap_or(1);
            let k = page.unwrap_or(1);
            if k > pages {
                return Err(ApiError::PageNotFound);
            }
            let files: Vec<OutputFile> = all.into_iter().filter(|f| f.page == k).collect();
            let next = (k < pages).then(|| page_url(state, &job, k + 1));
            // What the export used, for its owner (the only caller who gets this far), on
            // the first page: the manifest's `extension`, which the IG leaves to servers.
            let usage = if k == 1 {
                Some(serde_json::json!({ "usage": state.jobs.usage(&job.id).await? }))
            } else {
                None
            };
            let mut resp = manifest_response(state, &job, &files, next, usage).await?;
            if let Ok(v) = HeaderValue::from_str(&http_date(&job.expires_at)) {
                resp.headers_mut().insert(header::EXPIRES, v);
            }
            Ok(resp)
        }
        JobState::Failed => Err(ApiError::JobFailed(
            job.failure.unwrap_or_else(|| "unknown cause".into()),
        )),
        JobState::Cancelled => Err(ApiError::JobNotFound),
    }
}

fn page_url(state: &StatusState, job: &Job, k: u32) -> String {
    format!("{}?page={k}", state.settings.status_url(&job.id))
}

/// The files of page `k` of a running export, when every chunk of the page is published (a
/// page, once shown, never changes).
fn partial_page(job: &Job, chunks: &[ChunkRecord], k: u32) -> Option<Vec<OutputFile>> {
    let per_page = job.plan.page_chunks.max(1) as usize;
    let start = (k as usize - 1).checked_mul(per_page)?;
    let indices = job.plan.publishing.get(start..)?;
    let indices = &indices[..indices.len().min(per_page)];
    if indices.is_empty() {
        return None;
    }
    let mut files = if k == 1 {
        job.plan.notes.clone()
    } else {
        Vec::new()
    };
    for i in indices {
        let c = chunks.get(*i as usize).filter(|c| c.spec.index == *i)?;
        if !c.renamed {
            return None;
        }
        files.extend(c.published.clone().unwrap_or_default());
    }
    Some(files)
}

async fn manifest_response(
    state: &StatusState,
    job: &Job,
    files: &[OutputFile],
    next: Option<String>,
    extension: Option<serde_json::Value>,
) -> Result<Response, ApiError> {
    let urls = file_urls(state, job, files).await?;
    let access = state
        .settings
        .file_access_for(state.output.signer().is_some());
    let mut body = manifest(
        job,
        files,
        &urls,
        state.settings.requires_access_token_for(access),
        next,
    );
    if let Some(extension) = extension {
        body["extension"] = extension;
    }
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn file_urls(
    state: &StatusState,
    job: &Job,
    files: &[OutputFile],
) -> Result<HashMap<String, String>, ApiError> {
    let signer = match state.settings.file_access {
        FileAccess::SignedUrls => state.output.signer(),
        FileAccess::Served | FileAccess::Redirect => None,
    };
    let mut urls: HashMap<String, String> = HashMap::with_capacity(files.len());
    let names: Vec<String> = files
        .iter()
        .flat_map(|f| std::iter::once(f.name.clone()).chain(f.continues_in.clone()))
        .collect();
    for name in names {
        if urls.contains_key(&name) {
            continue;
        }
        let url = match signer {
            Some(s) => {
                s.signed_get_url(
                    &format!("{}/{}", job.output_prefix, name),
                    state.settings.signed_url_ttl,
                )
                .await?
            }
            None => state.settings.file_url(&job.id, &name),
        };
        urls.insert(name, url);
    }
    Ok(urls)
}

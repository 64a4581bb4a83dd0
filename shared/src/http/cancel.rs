//! `DELETE [status URL]`: cancel an export (or discard a finished one) and remove its files.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, outcome_response};
use super::{Caller, CancelState, owned_job};
use crate::job::JobState;
use crate::job::update_job;
use crate::outcome::{Issue, single};
use crate::worker::{after, clear_stopped_export};

pub(super) async fn cancel(
    State(state): State<CancelState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    match run(&state, &caller, &id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(state: &CancelState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    let job = owned_job(state.jobs.as_ref(), caller, id).await?;
    if job.state.is_active() {
        crate::worker::notify::announce(state.queue.as_ref(), &job.id).await?;
    }
    let now = chrono::Utc::now();
    let cancelled = update_job(state.jobs.as_ref(), &job.id, |j| {
        let mut next = j.transitioned(JobState::Cancelled, now)?;
        // Keep the record a while so that workers still holding messages see the cancel.
        next.expires_at = after(now, state.settings.retention);
        Some(next)
    })
    .await?
    .ok_or(ApiError::JobNotFound)?;
    // Workers stop at their next batch and remove what they publish after this point.
    match clear_stopped_export(state.jobs.as_ref(), state.output.as_ref(), &cancelled).await {
        Ok(n) => {
            tracing::info!(job_id = %cancelled.id, files = n, previous = job.state.as_str(), "export cancelled")
        }
        // The cancel stands; the expiry sweep deletes the folder later.
        Err(e) => {
            tracing::error!(job_id = %cancelled.id, error = %crate::error_chain(&e), "export cancelled but its files could not be deleted yet")
        }
    }
    Ok(outcome_response(
        StatusCode::ACCEPTED,
        &single(Issue::information("export cancelled and its files deleted")),
    ))
}

//! `GET [base]/_schedules`, `GET [base]/_schedules/{name}` and `POST
//! [base]/_schedules/{name}/$run`: a client's schedules, their last completed and current
//! runs and next tick, and a run started now (the same rules as a tick). Each schedule is
//! shown to its owner only; to anyone else it does not exist.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, outcome_response};
use super::{Caller, KickoffState};
use crate::outcome::{Issue, IssueCode, single};
use crate::ports::NoEvents;
use crate::schedule::{ScheduleDef, ScheduleState, TickOutcome, tick};

/// When a definition ticks next, after now.
pub type NextTick =
    Arc<dyn Fn(&ScheduleDef) -> Option<chrono::DateTime<chrono::Utc>> + Send + Sync>;
/// The owner key (`iss#client`) a definition's `owner` stands for.
pub type OwnerKey = Arc<dyn Fn(&ScheduleDef) -> String + Send + Sync>;

/// The schedules a host knows of (the local server's `--schedules FILE`; none on AWS, where
/// definitions arrive with each tick and are kept in the job store), and when each ticks next.
#[derive(Clone, Default)]
pub struct ScheduleBook {
    pub definitions: Vec<ScheduleDef>,
    /// The next tick of a definition after now, when the host keeps the cadence.
    pub next_tick: Option<NextTick>,
    /// The owner key (`iss#client`) a definition's `owner` stands for on this host.
    pub owner_key: Option<OwnerKey>,
}

impl ScheduleBook {
    fn owner_of(&self, def: &ScheduleDef) -> String {
        match &self.owner_key {
            Some(f) => f(def),
            None => def.owner.clone(),
        }
    }
}

/// A schedule as the API shows it: the host's definition and the store's state merged.
struct Entry {
    name: String,
    owner: String,
    definition: Option<ScheduleDef>,
    state: Option<ScheduleState>,
}

async fn entries(state: &KickoffState) -> Result<Vec<Entry>, ApiError> {
    let stored = state.jobs.schedules().await?;
    let mut out: Vec<Entry> = state
        .schedules
        .definitions
        .iter()
        .map(|d| Entry {
            name: d.name.clone(),
            owner: state.schedules.owner_of(d),
            definition: Some(d.clone()),
            state: stored.iter().find(|s| s.name == d.name).cloned(),
        })
        .collect();
    for s in stored {
        if !out.iter().any(|e| e.name == s.name) {
            out.push(Entry {
                name: s.name.clone(),
                owner: s.owner.clone(),
                definition: serde_json::from_value(s.definition.clone()).ok(),
                state: Some(s),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn describe(state: &KickoffState, e: &Entry) -> Result<Value, ApiError> {
    let status = |id: &crate::model::JobId| state.settings.status_url(id);
    let mut in_flight = Value::Null;
    if let Some(id) = e.state.as_ref().and_then(|s| s.in_flight.as_ref()) {
        let job_state = state.jobs.state(id).await?;
        in_flight = json!({
            "job_id": id,
            "status_url": status(id),
            "state": job_state.map(|s| s.as_str()),
        });
    }
    let last_completed = e
        .state
        .as_ref()
        .and_then(|s| s.last_completed.as_ref())
        .map(|l| {
            json!({
                "job_id": l.job,
                "status_url": status(&l.job),
                "transaction_time": l.transaction_time,
            })
        });
    let next_tick = match (&state.schedules.next_tick, &e.definition) {
        (Some(f), Some(d)) if state.schedules.definitions.iter().any(|x| x.name == d.name) => f(d),
        _ => None,
    };
    Ok(json!({
        "name": e.name,
        "definition": e.definition,
        // A run in flight may have completed since the last tick, which records it.
        "last_completed": last_completed,
        "current_run": in_flight,
        "last_tick": e.state.as_ref().and_then(|s| s.last_tick),
        "next_tick": next_tick,
    }))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

pub(super) async fn list(State(state): State<KickoffState>, caller: Caller) -> Response {
    let run = async {
        let mut out = Vec::new();
        for e in entries(&state).await? {
            if e.owner == caller.id {
                out.push(describe(&state, &e).await?);
            }
        }
        Ok::<_, ApiError>(json_response(StatusCode::OK, &json!({ "schedules": out })))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn owned(state: &KickoffState, caller: &Caller, name: &str) -> Result<Entry, ApiError> {
    entries(state)
        .await?
        .into_iter()
        .find(|e| e.name == name && e.owner == caller.id)
        .ok_or(ApiError::ScheduleNotFound)
}

pub(super) async fn one(
    State(state): State<KickoffState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    let run = async {
        let e = owned(&state, &caller, &name).await?;
        Ok::<_, ApiError>(json_response(StatusCode::OK, &describe(&state, &e).await?))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn run_now(
    State(state): State<KickoffState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    let run = async {
        let e = owned(&state, &caller, &name).await?;
        let def = e.definition.ok_or(ApiError::ScheduleNotFound)?;
        // The client's own token decides what the run may read.
        let outcome = tick(&state, &NoEvents, &def, &caller)
            .await
            .map_err(|e| match e {
                crate::schedule::ScheduleError::Kickoff { source, .. } => source,
                other => ApiError::Schedule(other.to_string()),
            })?;
        let (status, job, text) = match outcome {
            TickOutcome::Started { job, .. } => (StatusCode::ACCEPTED, job, "run started"),
            TickOutcome::StillRunning { job } => (
                StatusCode::CONFLICT,
                job,
                "the schedule's previous run is still active; nothing started",
            ),
        };
        let location = state.settings.status_url(&job);
        let issue = if status == StatusCode::CONFLICT {
            Issue::error(IssueCode::Conflict, format!("{text}: {location}"))
        } else {
            Issue::information(format!("{text}; poll {location} for its status"))
        };
        let mut resp = outcome_response(status, &single(issue));
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
        Ok::<_, ApiError>(resp)
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

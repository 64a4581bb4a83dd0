//! `GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, outcome_response};
use super::{Caller, KickoffState};
use crate::auth::narrow_to_grant;
use crate::group::current_members;
use crate::job::{Job, JobState};
use crate::layout;
use crate::model::{JobId, LogicalId, ResourceType};
use crate::outcome::{Issue, single};
use crate::request::{
    ExportLevel, KickoffError, KickoffInput, Method, check_limits, narrow_patients, parse_kickoff,
};
use crate::worker::WorkMessage;

/// How long a job record lives while it runs; a running job this old is given up by the sweep.
const ACTIVE_JOB_TTL: chrono::Duration = chrono::Duration::days(7);

pub(super) async fn system(
    State(state): State<KickoffState>,
    caller: Caller,
    method: HttpMethod,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        kickoff(
            &state,
            caller,
            ExportLevel::System,
            method,
            query,
            &headers,
            body,
        )
        .await,
    )
}

pub(super) async fn patient(
    State(state): State<KickoffState>,
    caller: Caller,
    method: HttpMethod,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        kickoff(
            &state,
            caller,
            ExportLevel::Patient,
            method,
            query,
            &headers,
            body,
        )
        .await,
    )
}

pub(super) async fn group(
    State(state): State<KickoffState>,
    caller: Caller,
    Path(id): Path<String>,
    method: HttpMethod,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(id) = LogicalId::parse(&id) else {
        return ApiError::Kickoff(KickoffError::GroupNotFound { id }).into_response();
    };
    respond(
        kickoff(
            &state,
            caller,
            ExportLevel::Group(id),
            method,
            query,
            &headers,
            body,
        )
        .await,
    )
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

fn header_values(headers: &HeaderMap, name: header::HeaderName) -> Vec<&str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

async fn kickoff(
    state: &KickoffState,
    caller: Caller,
    level: ExportLevel,
    method: HttpMethod,
    query: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let limits = &state.settings.limits;
    if let Some(q) = &query
        && q.len() > limits.query_bytes
    {
        return Err(ApiError::QueryTooLong {
            len: q.len(),
            limit: limits.query_bytes,
        });
    }
    let body = body.map_err(|r| ApiError::BodyRejected(r.status()))?;
    let input = KickoffInput {
        level: level.clone(),
        method: if method == HttpMethod::POST {
            Method::Post
        } else {
            Method::Get
        },
        query: query.as_deref(),
        body: &body,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        accept: header_values(headers, header::ACCEPT),
        prefer: header_values(headers, header::HeaderName::from_static("prefer")),
        url: format!("{}{}", state.settings.public_base_url, level_path(&level)),
    };
    let job = prepare(state, &caller, &input).await?;

    // Before any work is queued: a running identical export is answered again, and a
    // client at its limit waits.
    let running = state.jobs.active_of(&caller.id).await?;
    if !no_cache(headers)
        && let Some(same) = running
            .iter()
            .find(|j| same_request(&j.request, &job.request))
    {
        tracing::info!(job_id = %same.id, client_id = %caller.client_id(), "identical kick-off answered with the running export");
        return Ok(accepted(
            state,
            &same.id,
            &same.request,
            "an identical export is running",
        ));
    }
    if running.len() >= limits.active_exports {
        return Err(ApiError::TooManyExports {
            active: running.len(),
            limit: limits.active_exports,
            retry_after_secs: state.settings.retry_after.as_secs().max(1) * 5,
        });
    }
    state.jobs.create(&job).await?;
    queue_plan(state, &job).await?;
    Ok(accepted(state, &job.id, &job.request, "export accepted"))
}

/// The path of a level's kick-off, relative to the FHIR base.
pub(crate) fn level_path(level: &ExportLevel) -> String {
    match level {
        ExportLevel::System => "/$export".to_owned(),
        ExportLevel::Patient => "/Patient/$export".to_owned(),
        ExportLevel::Group(id) => format!("/Group/{id}/$export"),
    }
}

/// A kick-off checked as the HTTP route checks it (parameters, limits, the caller's scopes,
/// the Group and the patients), made into the job it starts; not stored yet.
pub(crate) async fn prepare(
    state: &KickoffState,
    caller: &Caller,
    input: &KickoffInput<'_>,
) -> Result<Job, ApiError> {
    let mut request = parse_kickoff(input, &state.caps)?;
    check_limits(&request, &state.settings.limits)?;
    narrow_to_grant(&mut request, &caller.grant).map_err(ApiError::Forbidden)?;
    // Whole milliseconds, as the manifest writes it: the `_since` of the next export of a
    // chain is then this instant exactly (what changed in the cut-off fraction is after it,
    // so in the next export).
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3);
    match &input.level {
        ExportLevel::Group(id) => {
            let Some(group) = state.source.read(ResourceType::GROUP, id).await? else {
                return Err(KickoffError::GroupNotFound { id: id.to_string() }.into());
            };
            if !request.patients.is_empty() {
                let members = current_members(&group, now.timestamp_micros());
                narrow_patients(
                    &mut request,
                    &|p| members.binary_search_by(|m| m.as_str().cmp(p)).is_ok(),
                    &format!("not a current member of Group/{id}"),
                )?;
            }
        }
        ExportLevel::Patient if !request.patients.is_empty() => {
            let found = state
                .source
                .existing(ResourceType::PATIENT, &request.patients)
                .await?;
            narrow_patients(
                &mut request,
                &|p| found.iter().any(|f| f.as_str() == p),
                "no such patient",
            )?;
        }
        _ => {}
    }
    let id = JobId::new();
    // On a store whose top-level folders are containers (an Azure account), an export
    // without `_container` gets a container of its own.
    let container = request.container.clone().or_else(|| {
        state
            .settings
            .container_per_export
            .then(|| layout::new_container(now, &id))
    });
    Ok(Job {
        output_prefix: layout::export_prefix(container.as_deref(), &id),
        id,
        owner: caller.id.clone(),
        state: JobState::Accepted,
        version: 1,
        request,
        transaction_time: now,
        created_at: now,
        updated_at: now,
        chunks_total: 0,
        chunks_done: 0,
        recoveries: 0,
        expires_at: now + ACTIVE_JOB_TTL,
        completed_at: None,
        failure: None,
        plan: Default::default(),
        schedule: None,
    })
}

/// Queues the plan of a stored job; without its plan message nobody would ever run it, so a
/// job that cannot be queued is deleted (no half-created jobs).
pub(crate) async fn queue_plan(state: &KickoffState, job: &Job) -> Result<(), ApiError> {
    if let Err(e) = state
        .queue
        .send(
            job.id.as_str(),
            vec![
                WorkMessage::Plan {
                    job: job.id.clone(),
                }
                .encode(),
            ],
        )
        .await
    {
        if let Err(cleanup) = state.jobs.delete(&job.id).await {
            tracing::error!(job_id = %job.id, error = %crate::error_chain(&cleanup), "could not remove unqueued job");
        }
        return Err(e.into());
    }
    tracing::info!(
        job_id = %job.id,
        level = ?job.request.level,
        types = job.request.types.as_ref().map_or(0, Vec::len),
        since = ?job.request.since,
        ignored = job.request.ignored.len(),
        schedule = job.schedule.as_deref().unwrap_or(""),
        "export accepted"
    );
    Ok(())
}

/// 202 with the status URL of `id` in `Content-Location`.
fn accepted(
    state: &KickoffState,
    id: &JobId,
    request: &crate::request::ExportRequest,
    what: &str,
) -> Response {
    let location = state.settings.status_url(id);
    let mut resp = outcome_response(
        StatusCode::ACCEPTED,
        &single(Issue::information(format!(
            "{what}; poll {location} for its status"
        ))),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    resp.extensions_mut().insert(super::audit::AuditTypes(
        crate::auth::needed_grant(request).describe(),
    ));
    resp
}

/// `Cache-Control: no-cache`: the client wants a new export even if an identical one runs.
fn no_cache(headers: &HeaderMap) -> bool {
    header_values(headers, header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

/// Whether two kick-offs ask for the same export (everything parsed, the URL included).
fn same_request(a: &crate::request::ExportRequest, b: &crate::request::ExportRequest) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

//! The protocol: one axum `Router` per function, built from the same handlers whether they run
//! on Lambda (`lambda_http::run(router)`) or merged on one socket by `fhir-export serve`.
//!
//! Paths are relative to the FHIR base; the host nests them (`/fhir` by default):
//!
//! | router | routes |
//! | --- | --- |
//! | kick-off | `GET/POST /$export`, `/Patient/$export`, `/Group/{id}/$export`; `GET /_schedules`, `GET /_schedules/{name}`, `POST /_schedules/{name}/$run` |
//! | status | `GET /_export/{job}` |
//! | cancel | `DELETE /_export/{job}` |
//! | files | `GET /_export/{job}/files/{*name}` |
//! | metadata | `GET /metadata` |

mod audit;
mod caller;
mod cancel;
pub mod error;
mod files;
mod kickoff;
mod metadata;
mod schedules;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get};

pub use caller::Caller;
pub use error::ApiError;
pub use files::NDJSON;
pub(crate) use kickoff::{level_path, prepare, queue_plan};
pub use metadata::Capability;
pub use schedules::ScheduleBook;
pub use status::{http_date, progress_text};

use crate::job::Job;
use crate::model::JobId;
use crate::ports::{JobStore, ObjectStore, ResourceSource, WorkQueue};
use crate::request::Capabilities;
use crate::settings::Settings;

pub const STATUS_PATH: &str = "/_export/{job}";
pub const FILES_PATH: &str = "/_export/{job}/files/{*name}";

/// What the kick-off function needs: it creates jobs, queues their plan, and checks that a
/// Group exists.
#[derive(Clone)]
pub struct KickoffState {
    pub jobs: Arc<dyn JobStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub source: Arc<dyn ResourceSource>,
    pub settings: Arc<Settings>,
    pub caps: Capabilities,
    /// The schedules this host keeps (the `_schedules` routes).
    pub schedules: ScheduleBook,
}

impl KickoffState {
    /// What a worker starts exports with (a scheduled run): its own ports, no schedule book.
    pub fn of_worker(deps: &crate::worker::WorkerDeps) -> Self {
        KickoffState {
            jobs: deps.jobs.clone(),
            queue: deps.queue.clone(),
            source: deps.source.clone(),
            settings: deps.settings.clone(),
            caps: Capabilities::CURRENT,
            schedules: ScheduleBook::default(),
        }
    }
}

/// What the status function needs: it reads jobs, and signs file URLs when so configured.
#[derive(Clone)]
pub struct StatusState {
    pub jobs: Arc<dyn JobStore>,
    pub output: Arc<dyn ObjectStore>,
    pub settings: Arc<Settings>,
}

/// What the cancel function needs: it updates jobs, deletes their files, and queues the
/// announcement of their end.
#[derive(Clone)]
pub struct CancelState {
    pub jobs: Arc<dyn JobStore>,
    pub output: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub settings: Arc<Settings>,
}

/// What the files route needs: it reads jobs and streams or signs files.
#[derive(Clone)]
pub struct FilesState {
    pub jobs: Arc<dyn JobStore>,
    pub output: Arc<dyn ObjectStore>,
    pub settings: Arc<Settings>,
}

/// What the metadata route needs: the CapabilityStatement, which lists the source's types.
#[derive(Clone)]
pub struct MetadataState {
    pub capability: Arc<Capability>,
}

impl MetadataState {
    pub fn new(settings: Arc<Settings>, source: Arc<dyn ResourceSource>) -> Self {
        MetadataState {
            capability: Arc::new(Capability::new(settings, source)),
        }
    }
}

pub fn kickoff_router(state: KickoffState) -> Router {
    let system = get(kickoff::system).post(kickoff::system);
    let patient = get(kickoff::patient).post(kickoff::patient);
    let group = get(kickoff::group).post(kickoff::group);
    // Some clients and proxies percent-encode the `$` (RFC 3986 allows either spelling).
    Router::new()
        .route("/$export", system.clone())
        .route("/%24export", system)
        .route("/Patient/$export", patient.clone())
        .route("/Patient/%24export", patient)
        .route("/Group/{id}/$export", group.clone())
        .route("/Group/{id}/%24export", group)
        .route("/_schedules", get(schedules::list))
        .route("/_schedules/{name}", get(schedules::one))
        .route(
            "/_schedules/{name}/$run",
            axum::routing::post(schedules::run_now),
        )
        .route(
            "/_schedules/{name}/%24run",
            axum::routing::post(schedules::run_now),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.limits.body_bytes,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            "kickoff",
            audit::audit,
        ))
        .with_state(state)
}

pub fn status_router(state: StatusState) -> Router {
    Router::new()
        .route(STATUS_PATH, get(status::status))
        .route_layer(axum::middleware::from_fn_with_state("status", audit::audit))
        .with_state(state)
}

pub fn cancel_router(state: CancelState) -> Router {
    Router::new()
        .route(STATUS_PATH, delete(cancel::cancel))
        .route_layer(axum::middleware::from_fn_with_state("cancel", audit::audit))
        .with_state(state)
}

pub fn files_router(state: FilesState) -> Router {
    Router::new()
        .route(FILES_PATH, get(files::file))
        .route_layer(axum::middleware::from_fn_with_state("file", audit::audit))
        .with_state(state)
}

pub fn metadata_router(state: MetadataState) -> Router {
    Router::new()
        .route("/metadata", get(metadata::metadata))
        .with_state(state)
}

/// 404 for unknown routes, as an `OperationOutcome`. Hosts install it as their fallback.
pub async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// 405 for a known route called with another method, as an `OperationOutcome`.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Installs the `OperationOutcome` fallbacks on a host's router, and makes every error
/// answer one: the framework's own refusals (a path segment that is not UTF-8 once decoded,
/// a body over the limit) come as plain text otherwise.
pub fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(error::as_outcome))
}

/// The job at `id` if it exists and belongs to `caller`; otherwise `JobNotFound`, the same
/// answer for a malformed id, an unknown job and someone else's job. `Forbidden` when the
/// caller's scopes no longer cover the export's types.
pub(crate) async fn owned_job(
    jobs: &dyn JobStore,
    caller: &Caller,
    id: &str,
) -> Result<Job, ApiError> {
    let id = JobId::parse(id).map_err(|_| ApiError::JobNotFound)?;
    let job = match jobs.get(&id).await? {
        Some(job) if job.owner == caller.id => job,
        _ => return Err(ApiError::JobNotFound),
    };
    // The owner's token may have narrower scopes now than at kick-off.
    let needed = crate::auth::needed_grant(&job.request);
    if !caller.grant.covers(&needed) {
        return Err(ApiError::Forbidden(format!(
            "the access token's scopes ({}) no longer cover the types of this export ({})",
            caller.grant.describe(),
            needed.describe()
        )));
    }
    Ok(job)
}

//! The worker: plan, chunk and finalize messages, dead letters, and the stuck-job sweep.
//!
//! Every handler is idempotent: messages arrive at least once, possibly twice at the same
//! time. Chunk attempts write into folders of their own and only the first completion is
//! recorded; the job is published by whoever wins the compare-and-set to `Finalizing`.

mod chunk;
mod context;
mod dead_letter;
mod finalize;
pub mod messages;
pub mod notify;
mod plan;
mod provenance;
mod publish;
mod recovery;
mod reduce;
pub mod runner;
mod select;
pub mod settle;
mod sinks;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use dead_letter::handle_dead_letter;
pub use messages::WorkMessage;
pub use recovery::{SweepReport, sweep};
pub use settle::{Settled, log_failure, settle};

use crate::job::{CountGroup, Job, JobState, update_job};
use crate::model::JobId;
use crate::ports::{
    BoxError, JobStore, ObjectError, ObjectStore, QueueError, ResourceSource, SourceError,
    StoreError, WorkQueue,
};
use crate::settings::Settings;
use crate::usage::Meter;

/// What the worker needs. The kick-off, status and cancel functions need less (see
/// [`crate::http`]).
#[derive(Clone)]
pub struct WorkerDeps {
    pub jobs: Arc<dyn JobStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub output: Arc<dyn ObjectStore>,
    pub source: Arc<dyn ResourceSource>,
    pub settings: Arc<Settings>,
    /// Where the end of each export is announced.
    pub events: Arc<dyn crate::ports::EventSink>,
}

/// How a message failed, which decides what happens to it.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// A backend hiccup: leave the message, it is delivered again (and dead-lettered after
    /// too many attempts).
    #[error("retryable failure")]
    Retryable(#[source] BoxError),
    /// Retrying cannot help (a malformed message, a source that changed under the job): the
    /// job is failed now and the message dropped.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl From<StoreError> for WorkError {
    fn from(e: StoreError) -> Self {
        WorkError::Retryable(Box::new(e))
    }
}

impl From<QueueError> for WorkError {
    fn from(e: QueueError) -> Self {
        WorkError::Retryable(Box::new(e))
    }
}

impl From<ObjectError> for WorkError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::InvalidKey(k) => WorkError::Permanent(format!("invalid object key `{k}`")),
            // Said in words, since it is what the client reads: "no space left", "read-only".
            ObjectError::Refused {
                key,
                reason,
                source,
            } => WorkError::Permanent(format!(
                "the output store refused to write `{key}`: {reason} ({source})"
            )),
            ObjectError::Access(fault) => {
                WorkError::Permanent(format!("the output store refuses the export: {fault}"))
            }
            other => WorkError::Retryable(Box::new(other)),
        }
    }
}

impl From<SourceError> for WorkError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::NotFound(k) => WorkError::Permanent(format!(
                "source object `{k}` disappeared while the export ran"
            )),
            SourceError::Damaged { object, detail } => {
                WorkError::Permanent(format!("source object `{object}` is damaged: {detail}"))
            }
            SourceError::Refused { object, reason } => {
                WorkError::Permanent(format!("source object `{object}` cannot be read: {reason}"))
            }
            SourceError::Access(fault) => {
                WorkError::Permanent(format!("the data source refuses the service: {fault}"))
            }
            // The source retried these itself: what is left persists, and fails the chunk
            // (and the job) in words rather than being retried until the job stalls.
            e @ (SourceError::Upstream { .. }
            | SourceError::Unreachable { .. }
            | SourceError::Protocol { .. }
            | SourceError::Unsupported(_)) => WorkError::Permanent(e.to_string()),
            other => WorkError::Retryable(Box::new(other)),
        }
    }
}

/// Keeps the message being worked on from being redelivered while the work goes on.
#[async_trait]
pub trait Lease: Send + Sync {
    async fn extend(&self) -> Result<(), QueueError>;
}

/// A lease on a queue message (the local pool and the Lambda worker).
pub struct MessageLease {
    pub queue: Arc<dyn WorkQueue>,
    pub receipt: String,
    pub visibility: Duration,
}

#[async_trait]
impl Lease for MessageLease {
    async fn extend(&self) -> Result<(), QueueError> {
        self.queue.extend(&self.receipt, self.visibility).await
    }
}

/// For work run outside a queue (tests, one-shot tools).
pub struct NoLease;

#[async_trait]
impl Lease for NoLease {
    async fn extend(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Handles one message body, and records what the handling used with its job (see
/// [`crate::usage`]).
pub async fn handle_message(
    deps: &WorkerDeps,
    body: &str,
    lease: &dyn Lease,
) -> Result<(), WorkError> {
    let msg = WorkMessage::decode(body).map_err(|e| WorkError::Permanent(e.to_string()))?;
    let meter = Meter::default();
    let result = meter.measure(handle(deps, &msg, lease)).await;
    if let WorkMessage::Chunk { .. } = msg {
        meter.with(|u| u.chunks += 1);
    }
    // Every attempt is recorded, a failed one too: it was billed. The record cannot count
    // its own write (one per message; `fhir-export cost` adds it).
    let key = format!("{}-{}", msg.kind(), uuid::Uuid::new_v4().simple());
    if let Err(e) = deps
        .jobs
        .record_usage(msg.job(), &key, &meter.snapshot())
        .await
    {
        log_failure("usage not recorded", &e);
    }
    result
}

async fn handle(deps: &WorkerDeps, msg: &WorkMessage, lease: &dyn Lease) -> Result<(), WorkError> {
    let result = match msg {
        WorkMessage::Plan { job } => plan::plan(deps, job).await,
        WorkMessage::Chunk { job, chunk } => chunk::chunk(deps, job, *chunk, lease).await,
        WorkMessage::Finalize { job } => finalize::finalize(deps, job).await,
        WorkMessage::Notify { job } => return notify::notify(deps, job).await,
    };
    if let Err(WorkError::Permanent(reason)) = &result {
        tracing::warn!(job_id = %msg.job(), %reason, "permanent failure; failing the job");
        fail_job(deps, msg.job(), reason).await?;
    }
    result
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now()
}

pub(crate) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Deletes everything of an export from the output store: its folder and its staging
/// folder. Returns how many objects went.
pub async fn delete_export(output: &dyn ObjectStore, prefix: &str) -> Result<u64, ObjectError> {
    let mut n = 0;
    for p in crate::layout::export_prefixes(prefix) {
        n += output.delete_prefix(&p).await?;
    }
    Ok(n)
}

/// After a step wrote into an export's folder: if the export was cancelled, failed or
/// removed by now, whoever stopped it may have cleaned the folder before our files arrived,
/// so the folder is removed here (again). A stop records itself (the job's state, then the
/// marks on its count groups) before it cleans, so one of the two always sees the other;
/// a chunk of a `group` looks at its group's mark. `true` when the export was stopped.
pub(crate) async fn clean_if_stopped(
    deps: &WorkerDeps,
    job: &Job,
    group: Option<CountGroup>,
) -> Result<bool, WorkError> {
    if !deps.jobs.stopped(&job.id, group).await? {
        return Ok(false);
    }
    delete_export(deps.output.as_ref(), &job.output_prefix).await?;
    Ok(true)
}

/// The clean-up of an export just stopped (`job` as its stop wrote it): its count groups are
/// marked, then its files deleted, in that order (see [`clean_if_stopped`]). A mark that
/// fails does not keep the files: those a chunk publishes afterwards go with the job's
/// expiry. Returns how many objects went.
pub async fn clear_stopped_export(
    jobs: &dyn JobStore,
    output: &dyn ObjectStore,
    job: &Job,
) -> Result<u64, ObjectError> {
    let groups = job.plan.count_groups();
    if let Err(e) = jobs.mark_groups_stopped(&job.id, groups).await {
        tracing::error!(job_id = %job.id, groups, error = %crate::error_chain(&e), "count groups of a stopped export not marked");
    }
    delete_export(output, &job.output_prefix).await
}

/// Moves a job to `Failed` with a reason and removes its files. A job already finished,
/// failed or cancelled is left as it is.
pub async fn fail_job(deps: &WorkerDeps, id: &JobId, reason: &str) -> Result<(), WorkError> {
    match deps.jobs.state(id).await? {
        Some(state) if state.is_active() => notify::announce(deps.queue.as_ref(), id).await?,
        _ => return Ok(()),
    }
    let t = now();
    let failed = update_job(deps.jobs.as_ref(), id, |job| {
        if !job.state.is_active() {
            return None;
        }
        let mut next = job.transitioned(JobState::Failed, t)?;
        next.failure = Some(reason.to_owned());
        next.expires_at = after(t, deps.settings.retention);
        Some(next)
    })
    .await?;
    if let Some(job) = failed {
        tracing::error!(job_id = %id, %reason, "export failed");
        // The failure stands whether or not its files can be removed now; the expiry sweep
        // (and the bucket's lifecycle rule) remove them later.
        if let Err(e) = clear_stopped_export(deps.jobs.as_ref(), deps.output.as_ref(), &job).await {
            log_failure("files of a failed export not deleted yet", &e);
        }
    }
    Ok(())
}

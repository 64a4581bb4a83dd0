//! The end of an export, announced: a `notify` message is queued just before the job's last
//! transition (by the finalizer, by whoever fails it, by the cancel), and its handler gives
//! the event to the sink once the job has ended. The queue's redelivery makes the delivery
//! at least once, and a sink that is down delays or drops only the announcement: the export
//! itself is over before its event goes out.

use std::time::Duration;

use super::{WorkError, WorkMessage, WorkerDeps};
use crate::job::Job;
use crate::model::JobId;
use crate::ports::{ExportEvent, QueueError, WorkQueue};
use crate::usage::{self, Usage};

/// How long the handler waits for the transition that follows its message.
const SETTLE_WAIT: Duration = Duration::from_millis(200);
const SETTLE_TRIES: u32 = 25;

/// Queues the announcement of `job`'s end.
pub async fn announce(queue: &dyn WorkQueue, job: &JobId) -> Result<(), QueueError> {
    queue
        .send(
            job.as_str(),
            vec![WorkMessage::Notify { job: job.clone() }.encode()],
        )
        .await
}

/// The completion log event's usage line: the figures a dashboard sums, and the whole record
/// (what `fhir-export cost` reads).
fn log_usage(job: &Job, usage: &Usage) {
    tracing::info!(
        job_id = %job.id,
        state = job.state.as_str(),
        messages = usage.messages,
        chunks = usage.chunks,
        resources = usage.resources,
        wall_ms = usage.wall_ms,
        cpu_ms = usage.cpu_ms,
        s3_requests = usage.requests_to(usage::S3),
        sqs_requests = usage.requests_to(usage::SQS),
        dynamodb_requests = usage.requests_to(usage::DYNAMODB),
        dynamodb_write_units = usage.dynamodb_write_units,
        dynamodb_read_units = usage.dynamodb_read_units,
        bytes_written = usage.bytes_written,
        usage = %serde_json::to_string(usage).unwrap_or_default(),
        "export usage"
    );
}

pub(super) async fn notify(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    let mut tries = 0;
    let job = loop {
        match deps.jobs.get(id).await? {
            // Deleted already (expired): nothing left to say.
            None => return Ok(()),
            Some(job) if !job.state.is_active() => break job,
            Some(_) if tries < SETTLE_TRIES => {
                tries += 1;
                tokio::time::sleep(SETTLE_WAIT).await;
            }
            Some(job) => {
                return Err(WorkError::Retryable(
                    format!("export {} has not ended yet ({})", id, job.state.as_str()).into(),
                ));
            }
        }
    };
    let outputs = match job.state {
        crate::job::JobState::Completed => deps.jobs.outputs(id).await?,
        _ => Vec::new(),
    };
    let Some(mut event) = ExportEvent::of(&job, &outputs, deps.settings.status_url(id)) else {
        return Ok(());
    };
    let usage = deps.jobs.usage(id).await?;
    log_usage(&job, &usage);
    event.usage = Some(usage);
    deps.events
        .publish(&(&event).into())
        .await
        .map_err(|e| WorkError::Retryable(Box::new(e)))?;
    tracing::info!(job_id = %id, event_id = %event.id, sink = %deps.events.describe(), "export event delivered");
    Ok(())
}

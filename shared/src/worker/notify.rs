//! The end of an export, announced: a `notify` message is queued just before the job's last
//! transition (by the finalizer, by whoever fails it, by the cancel), and its handler gives
//! the event to the sink once the job has ended. The queue's redelivery makes the delivery
//! at least once, and a sink that is down delays or drops only the announcement: the export
//! itself is over before its event goes out.

use std::time::Duration;

use super::{WorkError, WorkMessage, WorkerDeps};
use crate::model::JobId;
use crate::ports::{ExportEvent, QueueError, WorkQueue};

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
    let Some(event) = ExportEvent::of(&job, &outputs, deps.settings.status_url(id)) else {
        return Ok(());
    };
    deps.events
        .publish(&(&event).into())
        .await
        .map_err(|e| WorkError::Retryable(Box::new(e)))?;
    tracing::info!(job_id = %id, event_id = %event.id, sink = %deps.events.describe(), "export event delivered");
    Ok(())
}

//! Dead letters: a message that failed too often fails its job, with the reason, so that no
//! job is left running forever.

use super::{WorkError, WorkMessage, WorkerDeps, fail_job};

pub async fn handle_dead_letter(deps: &WorkerDeps, body: &str) -> Result<(), WorkError> {
    let msg = match WorkMessage::decode(body) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "dead letter that is not a work message; dropped");
            return Ok(());
        }
    };
    if let WorkMessage::Notify { job } = &msg {
        // The export is over either way; only its announcement is lost.
        tracing::error!(job_id = %job, sink = %deps.events.describe(), "the export's end could not be announced: event not delivered");
        return Ok(());
    }
    let reason = match &msg {
        WorkMessage::Plan { .. } => "planning the export failed repeatedly".to_owned(),
        WorkMessage::Chunk { chunk, .. } => {
            format!("exporting chunk {chunk} failed repeatedly and was given up")
        }
        WorkMessage::Finalize { .. } => "publishing the export failed repeatedly".to_owned(),
        WorkMessage::Notify { .. } => return Ok(()),
    };
    fail_job(deps, msg.job(), &reason).await
}

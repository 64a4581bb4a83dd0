//! The sweep: restarts jobs that made no progress for the stall timeout (then fails them after
//! `max_recoveries` restarts), and deletes expired exports.

use chrono::{DateTime, Utc};

use super::{WorkError, WorkMessage, WorkerDeps, after, fail_job};
use crate::job::update_job;
use crate::job::{Job, JobState};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub restarted: u32,
    pub failed: u32,
    pub expired: u32,
}

/// What a running job needs sent to move on: the unfinished chunks of its earliest
/// unfinished phase (only that phase may run), or finalize when every chunk is done.
pub(super) async fn pending_messages(
    deps: &WorkerDeps,
    job: &Job,
) -> Result<Vec<String>, WorkError> {
    let chunks = deps.jobs.chunks(&job.id).await?;
    let phase = chunks
        .iter()
        .filter(|c| !c.is_done())
        .map(|c| c.spec.phase)
        .min();
    let pending: Vec<String> = chunks
        .iter()
        .filter(|c| !c.is_done() && Some(c.spec.phase) == phase)
        .map(|c| {
            WorkMessage::Chunk {
                job: job.id.clone(),
                chunk: c.spec.index,
            }
            .encode()
        })
        .collect();
    Ok(if pending.is_empty() {
        vec![
            WorkMessage::Finalize {
                job: job.id.clone(),
            }
            .encode(),
        ]
    } else {
        pending
    })
}

pub async fn sweep(deps: &WorkerDeps, now: DateTime<Utc>) -> Result<SweepReport, WorkError> {
    let mut report = SweepReport::default();
    let stall =
        chrono::Duration::from_std(deps.settings.stall_timeout).unwrap_or(chrono::Duration::MAX);
    let cutoff = now - stall;
    for job in deps.jobs.stalled(cutoff).await? {
        if job.recoveries >= deps.settings.max_recoveries {
            let reason = format!(
                "no progress for {} s after {} restarts; the export was given up",
                deps.settings.stall_timeout.as_secs(),
                job.recoveries
            );
            fail_job(deps, &job.id, &reason).await?;
            report.failed += 1;
            continue;
        }
        let Some(job) = update_job(deps.jobs.as_ref(), &job.id, |j| {
            if !j.state.is_active() || j.updated_at >= cutoff {
                return None;
            }
            let mut next = j.clone();
            next.version += 1;
            next.recoveries += 1;
            next.updated_at = now;
            Some(next)
        })
        .await?
        else {
            continue;
        };
        let messages: Vec<String> = match job.state {
            JobState::Accepted | JobState::Planning => {
                vec![
                    WorkMessage::Plan {
                        job: job.id.clone(),
                    }
                    .encode(),
                ]
            }
            JobState::Running => pending_messages(deps, &job).await?,
            JobState::Finalizing => vec![
                WorkMessage::Finalize {
                    job: job.id.clone(),
                }
                .encode(),
            ],
            _ => Vec::new(),
        };
        tracing::warn!(
            job_id = %job.id,
            state = job.state.as_str(),
            recoveries = job.recoveries,
            messages = messages.len(),
            "stalled export restarted"
        );
        deps.queue.send(job.id.as_str(), messages).await?;
        report.restarted += 1;
    }
    match deps.output.clean_abandoned().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "temporary files of dead processes removed"),
        Err(e) => super::log_failure("temporary files of dead processes not removed", &e),
    }
    for job in deps.jobs.expired(now).await? {
        if job.state.is_active() && after(job.updated_at, deps.settings.stall_timeout) > now {
            continue;
        }
        super::delete_export(deps.output.as_ref(), &job.output_prefix).await?;
        deps.jobs.delete(&job.id).await?;
        tracing::info!(job_id = %job.id, "expired export deleted");
        report.expired += 1;
    }
    Ok(report)
}

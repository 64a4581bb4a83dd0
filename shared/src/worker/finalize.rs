//! Finalize: once every chunk is done, publish whatever a chunk's first attempt left
//! unpublished, record the file list (notes first, then chunks in publishing order) and
//! complete the job. Exactly one finalizer wins the compare-and-set to `Finalizing`; a
//! finalizer that died half-way is safely repeated.

use super::publish::{publish, publishes};
use super::{WorkError, WorkerDeps, after, now};
use crate::job::update_job;
use crate::job::{FileKind, JobState, OutputFile};
use crate::layout;
use crate::model::JobId;

pub(super) async fn finalize(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    let Some(job) = deps.jobs.get(id).await? else {
        return Ok(());
    };
    let mut chunks = deps.jobs.chunks(id).await?;
    let job = match job.state {
        JobState::Running => {
            let done = chunks.iter().filter(|c| c.is_done()).count();
            if done < job.chunks_total as usize {
                tracing::debug!(job_id = %id, done, total = job.chunks_total, "finalize: not all chunks done yet");
                return Ok(());
            }
            let t = now();
            match update_job(deps.jobs.as_ref(), id, |j| {
                if j.state == JobState::Running {
                    j.transitioned(JobState::Finalizing, t)
                } else {
                    None
                }
            })
            .await?
            {
                Some(j) => j,
                None => return Ok(()),
            }
        }
        // A finalizer died half-way, or a duplicate is racing the first: both may go on.
        JobState::Finalizing => job,
        _ => return Ok(()),
    };
    // Every chunk is done, so the list read above changes only where a chunk's publishing is
    // finished (here, or by a duplicate delivery racing us).
    let mut published_here = false;
    for chunk in &chunks {
        if publishes(&job, chunk.spec.role) && !chunk.renamed {
            publish(deps, &job, chunk).await?;
            published_here = true;
        }
    }
    if published_here {
        chunks = deps.jobs.chunks(id).await?;
    }
    let mut outputs: Vec<OutputFile> = job.plan.notes.clone();
    for index in &job.plan.publishing {
        let Some(files) = chunks
            .get(*index as usize)
            .filter(|c| c.spec.index == *index)
            .and_then(|c| c.published.clone())
        else {
            return Err(WorkError::Permanent(format!(
                "chunk {index} has no published files at finalize"
            )));
        };
        outputs.extend(files);
    }
    deps.jobs.put_outputs(id, &outputs).await?;
    super::notify::announce(deps.queue.as_ref(), id).await?;
    let t = now();
    let completed = update_job(deps.jobs.as_ref(), id, |j| {
        if j.state != JobState::Finalizing {
            return None;
        }
        let mut next = j.transitioned(JobState::Completed, t)?;
        next.completed_at = Some(t);
        next.expires_at = after(t, deps.settings.retention);
        Some(next)
    })
    .await?;
    // Staging is removed whether we or a racing finalizer completed the job.
    deps.output
        .delete_prefix(&layout::staging_root(&job.output_prefix))
        .await?;
    match completed {
        Some(_) => {
            let resources: u64 = outputs
                .iter()
                .filter(|f| f.kind == FileKind::Output)
                .map(|f| f.count)
                .sum();
            tracing::info!(job_id = %id, files = outputs.len(), resources, "export completed");
        }
        // Not completed by us: a racing finalizer did, or the export was stopped meanwhile.
        None => {
            super::clean_if_stopped(deps, &job, None).await?;
        }
    }
    Ok(())
}

//! Finalize: once every chunk is done, publish the staged parts under their final names
//! (`Type-1.ndjson`, `Type-2.ndjson`, ... in chunk order), record the file list and complete
//! the job. Exactly one finalizer wins the compare-and-set to `Finalizing`; a finalizer that
//! died half-way is safely repeated (every move is idempotent).

use std::collections::HashMap;

use bytes::Bytes;

use super::{WorkError, WorkerDeps, after, now, update_job};
use crate::job::{ChunkRecord, FileKind, Job, JobState, OutputFile};
use crate::layout;
use crate::model::{JobId, ResourceType};
use crate::outcome::single;
use crate::ports::ObjectError;

pub(super) async fn finalize(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    let Some(job) = deps.jobs.get(id).await? else {
        return Ok(());
    };
    let job = match job.state {
        JobState::Running => {
            let chunks = deps.jobs.chunks(id).await?;
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
    let chunks = deps.jobs.chunks(id).await?;
    let outputs = publish(deps, &job, &chunks).await?;
    deps.jobs.put_outputs(id, &outputs).await?;
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
        None => {
            if deps
                .jobs
                .get(id)
                .await?
                .is_none_or(|j| j.state == JobState::Cancelled)
            {
                deps.output
                    .delete_prefix(&format!("{}/", job.output_prefix))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Moves every recorded part to its published name and returns the file list, outputs by
/// type then number, error files last.
async fn publish(
    deps: &WorkerDeps,
    job: &Job,
    chunks: &[ChunkRecord],
) -> Result<Vec<OutputFile>, WorkError> {
    let prefix = &job.output_prefix;
    let mut outputs = Vec::new();
    let mut errors = 0usize;
    if !job.request.ignored.is_empty() {
        errors += 1;
        let name = layout::error_name(errors);
        let mut body = Vec::new();
        for issue in &job.request.ignored {
            serde_json::to_writer(&mut body, &single(issue.clone()))
                .map_err(|e| WorkError::Retryable(e.into()))?;
            body.push(b'\n');
        }
        let bytes = body.len() as u64;
        deps.output
            .put(&format!("{prefix}/{name}"), Bytes::from(body))
            .await?;
        outputs.push(OutputFile {
            kind: FileKind::Error,
            resource_type: ResourceType::OPERATION_OUTCOME,
            name,
            count: job.request.ignored.len() as u64,
            bytes,
        });
    }
    let mut numbers: HashMap<ResourceType, usize> = HashMap::new();
    let mut ordered: Vec<&ChunkRecord> = chunks.iter().collect();
    ordered.sort_by_key(|c| c.spec.index);
    for chunk in ordered {
        let Some(result) = &chunk.result else {
            return Err(WorkError::Permanent(format!(
                "chunk {} has no result at finalize",
                chunk.spec.index
            )));
        };
        for f in &result.files {
            let name = match f.kind {
                FileKind::Output => {
                    let n = numbers.entry(f.resource_type).or_insert(0);
                    *n += 1;
                    layout::output_name(f.resource_type, *n)
                }
                FileKind::Error => {
                    errors += 1;
                    layout::error_name(errors)
                }
            };
            move_once(
                deps,
                &format!("{prefix}/{}", f.path),
                &format!("{prefix}/{name}"),
            )
            .await?;
            outputs.push(OutputFile {
                kind: f.kind,
                resource_type: f.resource_type,
                name,
                count: f.count,
                bytes: f.bytes,
            });
        }
    }
    outputs.sort_by(|a, b| {
        (a.kind, a.resource_type, file_number(&a.name)).cmp(&(
            b.kind,
            b.resource_type,
            file_number(&b.name),
        ))
    });
    Ok(outputs)
}

fn file_number(name: &str) -> u64 {
    name.trim_end_matches(".ndjson")
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Renames `from` to `to`; a missing `from` is fine if `to` exists (an earlier finalizer
/// moved it).
async fn move_once(deps: &WorkerDeps, from: &str, to: &str) -> Result<(), WorkError> {
    match deps.output.rename(from, to).await {
        Ok(()) => Ok(()),
        Err(ObjectError::NotFound(_)) => {
            if deps.output.head(to).await?.is_some() {
                Ok(())
            } else {
                Err(WorkError::Permanent(format!(
                    "staged file `{from}` is missing; the export cannot be published"
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

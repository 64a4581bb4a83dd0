//! Chunk: stream one chunk's records from the source, keep what the request selects, write
//! NDJSON parts, record the result once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::Value;

use super::{Lease, WorkError, WorkMessage, WorkerDeps, now};
use crate::compartment::for_each_patient;
use crate::job::{ChunkRecord, ChunkResult, FileKind, Job, JobState};
use crate::layout;
use crate::model::{JobId, ResourceType, ids::is_logical_id};
use crate::ndjson::{PartWriter, read_head};
use crate::outcome::{Issue, IssueCode, single};
use crate::ports::{RecordBatch, RecordReader};
use crate::request::ExportLevel;

/// How often a running chunk looks at its job (cancel) and renews its lease.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn chunk(
    deps: &WorkerDeps,
    id: &JobId,
    index: u32,
    lease: &dyn Lease,
) -> Result<(), WorkError> {
    let Some(job) = deps.jobs.get(id).await? else {
        return Ok(());
    };
    match job.state {
        JobState::Running => {}
        JobState::Accepted | JobState::Planning => {
            // A redelivered plan raced ahead of us; come back when the job runs.
            return Err(WorkError::Retryable(
                format!("job {id} is still planning").into(),
            ));
        }
        _ => return Ok(()),
    }
    let Some(record) = deps.jobs.chunk(id, index).await? else {
        return Err(WorkError::Permanent(format!(
            "chunk {index} of job {id} does not exist"
        )));
    };
    if record.is_done() {
        tracing::debug!(job_id = %id, chunk = index, "duplicate delivery of a finished chunk");
        return maybe_finalize(deps, id).await;
    }
    let attempt = uuid::Uuid::new_v4().simple().to_string();
    let dir = layout::chunk_attempt_dir(&job.output_prefix, index, &attempt);
    let started = Instant::now();
    let result = match export_chunk(deps, &job, &record, &dir, lease).await {
        Ok(Some(result)) => result,
        Ok(None) => {
            tracing::info!(job_id = %id, chunk = index, "chunk stopped: export cancelled or finished elsewhere");
            deps.output.delete_prefix(&dir).await?;
            return Ok(());
        }
        Err(e) => {
            let _ = deps.output.delete_prefix(&dir).await;
            return Err(e);
        }
    };
    let completion = deps.jobs.complete_chunk(id, index, &result, now()).await?;
    tracing::info!(
        job_id = %id,
        chunk = index,
        r#type = %record.spec.resource_type,
        resources = result.resources,
        errors = result.errors,
        files = result.files.len(),
        first = completion.first,
        done = completion.done,
        total = completion.total,
        ms = started.elapsed().as_millis() as u64,
        "chunk done"
    );
    if !completion.first {
        // Another attempt was recorded first; these files are nobody's.
        deps.output.delete_prefix(&dir).await?;
    } else if deps
        .jobs
        .get(id)
        .await?
        .is_none_or(|j| j.state == JobState::Cancelled)
    {
        // Cancelled while our last part was being published: the cancel's clean-up may have
        // run before it existed.
        deps.output.delete_prefix(&dir).await?;
        return Ok(());
    }
    if completion.done >= completion.total {
        deps.queue
            .send(vec![WorkMessage::Finalize { job: id.clone() }.encode()])
            .await?;
    }
    Ok(())
}

/// A finished chunk delivered again still nudges finalize, in case the first delivery died
/// between recording the chunk and sending the finalize message.
async fn maybe_finalize(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    if let Some(job) = deps.jobs.get(id).await?
        && job.state == JobState::Running
        && job.chunks_done >= job.chunks_total
    {
        deps.queue
            .send(vec![WorkMessage::Finalize { job: id.clone() }.encode()])
            .await?;
    }
    Ok(())
}

/// Which patients' compartments a patient-level export covers.
enum Scope {
    Everything,
    AnyPatient,
    Members(HashSet<String>),
}

struct Selection {
    resource_type: ResourceType,
    since: Option<i64>,
    until: Option<i64>,
    transaction_time: i64,
    scope: Scope,
}

enum Verdict {
    Keep,
    Skip,
    Error(Issue),
}

impl Selection {
    fn judge(&self, line: &[u8]) -> Verdict {
        let head = match read_head(line) {
            Ok(h) => h,
            Err(e) => return Verdict::Error(Issue::error(IssueCode::Structure, e.to_string())),
        };
        if head.resource_type != self.resource_type.as_str() {
            return Verdict::Error(Issue::error(
                IssueCode::Structure,
                format!(
                    "resourceType `{}` in a file of {} resources",
                    head.resource_type, self.resource_type
                ),
            ));
        }
        if !is_logical_id(&head.id) {
            return Verdict::Error(Issue::error(
                IssueCode::Structure,
                "id is not a valid FHIR id",
            ));
        }
        if let Some(t) = head.last_updated {
            if t > self.transaction_time
                || self.since.is_some_and(|s| t <= s)
                || self.until.is_some_and(|u| t >= u)
            {
                return Verdict::Skip;
            }
        }
        let in_scope = match &self.scope {
            Scope::Everything => true,
            Scope::AnyPatient | Scope::Members(_) => {
                let resource: Value = match serde_json::from_slice(line) {
                    Ok(v) => v,
                    Err(e) => {
                        return Verdict::Error(Issue::error(IssueCode::Structure, e.to_string()));
                    }
                };
                let mut found = false;
                for_each_patient(self.resource_type, &resource, |pid| {
                    found |= match &self.scope {
                        Scope::Members(set) => set.contains(pid),
                        _ => true,
                    };
                });
                found
            }
        };
        if in_scope {
            Verdict::Keep
        } else {
            Verdict::Skip
        }
    }
}

async fn selection(deps: &WorkerDeps, job: &Job, t: ResourceType) -> Result<Selection, WorkError> {
    let scope = match &job.request.level {
        ExportLevel::System => Scope::Everything,
        ExportLevel::Patient => Scope::AnyPatient,
        ExportLevel::Group(_) => {
            let key = layout::members_key(&job.output_prefix);
            let bytes: Vec<u8> = deps
                .output
                .read(&key, 0, None)
                .await?
                .try_fold(Vec::new(), |mut acc, b| async move {
                    acc.extend_from_slice(&b);
                    Ok(acc)
                })
                .await?;
            let ids: Vec<String> = serde_json::from_slice(&bytes)
                .map_err(|e| WorkError::Permanent(format!("group member list unreadable: {e}")))?;
            Scope::Members(ids.into_iter().collect())
        }
    };
    Ok(Selection {
        resource_type: t,
        since: job.request.since.map(|t| t.timestamp_micros()),
        until: job.request.until.map(|t| t.timestamp_micros()),
        transaction_time: job.transaction_time.timestamp_micros(),
        scope,
    })
}

/// Exports the chunk into `dir`. `None` when the job stopped (cancelled, failed) or the
/// chunk was finished by another attempt meanwhile.
async fn export_chunk(
    deps: &WorkerDeps,
    job: &Job,
    record: &ChunkRecord,
    dir: &str,
    lease: &dyn Lease,
) -> Result<Option<ChunkResult>, WorkError> {
    let spec = &record.spec;
    let select = selection(deps, job, spec.resource_type).await?;
    let relative_to = format!("{}/", job.output_prefix);
    let mut output = PartWriter::new(
        deps.output.clone(),
        dir.to_owned(),
        relative_to.clone(),
        spec.resource_type.as_str(),
        FileKind::Output,
        spec.resource_type,
        deps.settings.max_file_bytes,
    );
    let mut errors = PartWriter::new(
        deps.output.clone(),
        dir.to_owned(),
        relative_to,
        "error",
        FileKind::Error,
        ResourceType::OPERATION_OUTCOME,
        deps.settings.max_file_bytes,
    );
    let outcome = run(deps, job, record, &select, &mut output, &mut errors, lease).await;
    match outcome {
        Ok(true) => {
            let mut files = output.finish().await?;
            let resources = files.iter().map(|f| f.count).sum();
            let error_files = errors.finish().await?;
            let error_count = error_files.iter().map(|f| f.count).sum();
            files.extend(error_files);
            Ok(Some(ChunkResult {
                files,
                resources,
                errors: error_count,
            }))
        }
        Ok(false) => {
            output.abort().await;
            errors.abort().await;
            Ok(None)
        }
        Err(e) => {
            output.abort().await;
            errors.abort().await;
            Err(e)
        }
    }
}

/// The record loop. Returns `false` when it stopped early.
async fn run(
    deps: &WorkerDeps,
    job: &Job,
    record: &ChunkRecord,
    select: &Selection,
    output: &mut PartWriter,
    errors: &mut PartWriter,
    lease: &dyn Lease,
) -> Result<bool, WorkError> {
    let mut reader: Box<dyn RecordReader> = deps.source.open(&record.spec).await?;
    let mut batch = RecordBatch::default();
    let mut last_check = Instant::now();
    let mut last_lease = Instant::now();
    let lease_every = deps.settings.visibility_timeout / 3;
    while reader.next_batch(&mut batch).await? {
        if last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if !still_wanted(deps, job, record.spec.index).await? {
                return Ok(false);
            }
            if last_lease.elapsed() >= lease_every {
                last_lease = Instant::now();
                lease.extend().await?;
                deps.jobs.heartbeat(&job.id, now()).await?;
            }
        }
        for (line, origin) in batch.iter() {
            let verdict = if line.is_empty() {
                Verdict::Error(Issue::error(
                    IssueCode::TooCostly,
                    format!(
                        "line longer than {} bytes",
                        crate::adapters::ndjson_source::MAX_LINE_BYTES
                    ),
                ))
            } else {
                select.judge(line)
            };
            match verdict {
                Verdict::Keep => output.write_line(line).await?,
                Verdict::Skip => {}
                Verdict::Error(issue) => {
                    let place = reader.describe(origin).await;
                    let issue = Issue {
                        diagnostics: format!("{place}: {}", issue.diagnostics),
                        ..issue
                    };
                    tracing::warn!(job_id = %job.id, chunk = record.spec.index, %place, "source line skipped");
                    let body = serde_json::to_vec(&single(issue))
                        .map_err(|e| WorkError::Retryable(e.into()))?;
                    errors.write_line(&body).await?;
                }
            }
        }
    }
    Ok(true)
}

/// Whether this attempt should go on: the job still runs and nobody finished the chunk.
async fn still_wanted(deps: &WorkerDeps, job: &Job, index: u32) -> Result<bool, WorkError> {
    let Some(current) = deps.jobs.get(&job.id).await? else {
        return Ok(false);
    };
    if current.state != JobState::Running {
        return Ok(false);
    }
    Ok(!deps
        .jobs
        .chunk(&job.id, index)
        .await?
        .is_some_and(|c| c.is_done()))
}

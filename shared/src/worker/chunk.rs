//! Chunk: run one unit of work, record it once, publish its files, and move the job on (the
//! next phase's chunks, or finalize).

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::context::{ChunkCtx, Consumer, Produced};
use super::publish::{naming, publish, publishes};
use super::select::Kept;
use super::sinks::{Sink, write_sorted};
use super::{
    Lease, WorkError, WorkMessage, WorkerDeps, clean_if_stopped, finalize, now, provenance, reduce,
};
use crate::job::{ChunkRecord, ChunkRole, FileKind, Job, JobState, ReadSpec, StagedFile};
use crate::layout;
use crate::model::{JobId, ResourceType};
use crate::outcome::{Issue, IssueCode};
use crate::usage::Meter;

pub(super) async fn chunk(
    deps: &WorkerDeps,
    id: &JobId,
    index: u32,
    lease: &dyn Lease,
) -> Result<(), WorkError> {
    // Most chunks find their job running, and a chunk that starts on a job cancelled a moment
    // ago stops at its first look at the state; anything else is read again for certain.
    let job = match deps.jobs.peek(id).await? {
        Some(job) if job.state == JobState::Running => Some(job),
        _ => deps.jobs.get(id).await?,
    };
    let Some(job) = job else {
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
        // The last chunk finalizes the export right after it is recorded. If its worker died
        // while finalizing, this message (delivered again) is what is left to finish it: no
        // finalize message was sent, since finalizing was not known to have failed.
        JobState::Finalizing => {
            tracing::info!(job_id = %id, chunk = index, "resuming an export's interrupted finalize");
            return finalize::finalize(deps, id).await;
        }
        // A message of a finished export: an attempt at this chunk may have died writing
        // (that is why it came again), after the export's staging was removed. Whatever it
        // left goes; a completed export keeps only its published files.
        JobState::Completed => {
            deps.output
                .delete_prefix(&layout::staging_root(&job.output_prefix))
                .await?;
            return Ok(());
        }
        JobState::Failed | JobState::Cancelled => {
            super::delete_export(deps.output.as_ref(), &job.output_prefix).await?;
            return Ok(());
        }
    }
    let Some(record) = deps.jobs.chunk(id, index).await? else {
        return Err(WorkError::Permanent(format!(
            "chunk {index} of job {id} does not exist"
        )));
    };
    if record.is_done() {
        tracing::debug!(job_id = %id, chunk = index, "duplicate delivery of a finished chunk");
        return nudge(deps, &job, &record).await;
    }
    if !previous_phases_done(deps, &job, record.spec.phase).await? {
        return Err(WorkError::Retryable(
            format!("chunk {index} waits for the previous phase").into(),
        ));
    }
    let attempt = uuid::Uuid::new_v4().simple().to_string();
    let dir = layout::chunk_attempt_dir(&job.output_prefix, index, &attempt);
    let started = Instant::now();
    tracing::debug!(job_id = %id, chunk = index, %attempt, "chunk started");
    let outcome = {
        let mut ctx = ChunkCtx::new(deps, &job, &record, &dir, lease).await?;
        let produced = match record.spec.role {
            ChunkRole::Export | ChunkRole::Index | ChunkRole::Deletions => export(&mut ctx).await,
            ChunkRole::ProvenanceIndex => provenance::index(&mut ctx).await,
            ChunkRole::ProvenanceSelect => provenance::select(&mut ctx).await,
            ChunkRole::Reduce { partition } => reduce::reduce(&mut ctx, partition).await,
        };
        match produced {
            Ok(Some((files, resources))) => ctx.finish(files, resources).await.map(Some),
            Ok(None) => {
                ctx.abort().await;
                Ok(None)
            }
            Err(e) => {
                ctx.abort().await;
                Err(e)
            }
        }
    };
    let result = match outcome {
        Ok(Some(result)) => result,
        Ok(None) => {
            tracing::info!(job_id = %id, chunk = index, "chunk stopped: export cancelled or finished elsewhere");
            // A stopped export loses everything (what this chunk wrote after the cancel's
            // clean-up included); a chunk finished elsewhere loses only this attempt's files.
            if !clean_if_stopped(deps, &job, record.spec.group).await? {
                deps.output.delete_prefix(&dir).await?;
            }
            return Ok(());
        }
        Err(e) => {
            let _ = deps.output.delete_prefix(&dir).await;
            return Err(e);
        }
    };
    let publishing = publishes(&job, record.spec.role);
    let (completion, published) = deps
        .jobs
        .complete_and_name(
            id,
            index,
            &result,
            now(),
            record.spec.group,
            publishing.then(|| naming(&job, &record.spec, &result)),
        )
        .await?;
    tracing::info!(
        job_id = %id,
        chunk = index,
        role = ?record.spec.role,
        r#type = %record.spec.resource_type,
        packed = record.spec.packed.len(),
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
        return Ok(());
    }
    Meter::current(|u| {
        u.bytes_written += result.files.iter().map(|f| f.bytes).sum::<u64>();
        if publishing {
            u.resources += result.resources;
        }
    });
    if completion.state == JobState::Cancelled {
        // Cancelled while we worked: the cancel's clean-up may have run before our files
        // existed (nor is the rest of the export's folder anybody's now). The completion
        // says so already: no need to read the state again.
        super::delete_export(deps.output.as_ref(), &job.output_prefix).await?;
        return Ok(());
    }
    if publishing {
        let done = ChunkRecord {
            result: Some(result),
            published,
            ..record
        };
        // Looked at whether publishing worked or not: a cancel that deleted the staged files
        // while they were being moved makes the move fail after some had arrived.
        let published = publish(deps, &job, &done).await;
        if clean_if_stopped(deps, &job, done.spec.group).await? {
            return Ok(());
        }
        published?;
    }
    if completion.counted {
        return advance(deps, &job, completion.done, completion.total).await;
    }
    // Counted on its group only: the job's item, which the sweep reads for signs of life,
    // hears of the export once per group. A group takes long when its chunks do, or when
    // few workers run: then a heartbeat, if the job looked quiet when this chunk began.
    let quiet = deps.settings.stall_timeout / 4;
    if now() - job.updated_at > chrono::Duration::from_std(quiet).unwrap_or(chrono::Duration::MAX) {
        deps.jobs.heartbeat(&job.id, now()).await?;
    }
    Ok(())
}

/// Whether every chunk of the phases before `phase` is done. The job's counter says so
/// cheaply; when it lags (a store that counts in a second write, and a worker that died
/// between the two), the chunk records decide.
async fn previous_phases_done(deps: &WorkerDeps, job: &Job, phase: u32) -> Result<bool, WorkError> {
    let start = job.plan.phase_range(phase as usize).start;
    if job.chunks_done >= start {
        return Ok(true);
    }
    // The first look may have been a moment old: the job, read for certain, before the
    // chunks (a query of every chunk of the export).
    if deps
        .jobs
        .get(&job.id)
        .await?
        .is_some_and(|j| j.chunks_done >= start)
    {
        return Ok(true);
    }
    let done = deps
        .jobs
        .chunks(&job.id)
        .await?
        .iter()
        .filter(|c| c.spec.index < start && c.is_done())
        .count();
    Ok(done as u32 >= start)
}

/// After the chunk that completes a phase, send the next phase; after the last, finalize.
async fn advance(deps: &WorkerDeps, job: &Job, done: u32, total: u32) -> Result<(), WorkError> {
    if done >= total {
        // Finalized right here: a trip through the queue would add a delivery (on Lambda, an
        // invocation) to the end of every export. If this attempt fails, the finalize
        // message takes over, with the queue's retries.
        return match finalize::finalize(deps, &job.id).await {
            Err(WorkError::Retryable(e)) => {
                tracing::warn!(job_id = %job.id, error = %crate::error_chain(e.as_ref()), "finalize failed; handing it to the queue");
                deps.queue
                    .send(
                        job.id.as_str(),
                        vec![
                            WorkMessage::Finalize {
                                job: job.id.clone(),
                            }
                            .encode(),
                        ],
                    )
                    .await?;
                Ok(())
            }
            other => other,
        };
    }
    let messages: Vec<String> = if let Some(next) = job.plan.phase_completed_by(done) {
        tracing::info!(job_id = %job.id, phase = next, "next phase");
        job.plan
            .phase_range(next)
            .map(|chunk| {
                WorkMessage::Chunk {
                    job: job.id.clone(),
                    chunk,
                }
                .encode()
            })
            .collect()
    } else {
        Vec::new()
    };
    deps.queue.send(job.id.as_str(), messages).await?;
    Ok(())
}

/// A finished chunk delivered again finishes what its first attempt may have left undone:
/// publishing its files, and moving the job on.
async fn nudge(deps: &WorkerDeps, job: &Job, record: &ChunkRecord) -> Result<(), WorkError> {
    let published = if publishes(job, record.spec.role) && !record.renamed {
        publish(deps, job, record).await
    } else {
        Ok(())
    };
    if clean_if_stopped(deps, job, record.spec.group).await? {
        return Ok(());
    }
    published?;
    if let Some(j) = deps.jobs.get(&job.id).await?
        && j.state == JobState::Running
    {
        let done = j.chunks_done;
        if done >= j.chunks_total || j.plan.phase_completed_by(done).is_some() {
            advance(deps, &j, done, j.chunks_total).await?;
        }
    }
    Ok(())
}

/// Export and index chunks: kept resources to the output sink, and (when Provenance is chosen
/// by association) the list of what was selected.
struct ExportConsumer {
    sink: Sink,
    refs: Option<Vec<String>>,
}

#[async_trait]
impl Consumer for ExportConsumer {
    async fn keep(&mut self, t: ResourceType, kept: Kept<'_>) -> Result<(), WorkError> {
        if let Some(refs) = &mut self.refs {
            refs.push(format!(
                "{t}/{}\t{}",
                kept.id,
                kept.owner.as_deref().unwrap_or("")
            ));
        }
        self.sink.keep(t, kept.owner.as_deref(), &kept.bytes).await
    }

    fn takes_runs(&self) -> bool {
        self.refs.is_none() && matches!(self.sink, Sink::Files(_))
    }

    async fn keep_run(&mut self, run: Bytes, lines: u64) -> Result<(), WorkError> {
        match &mut self.sink {
            Sink::Files(w) => Ok(w.write_run(run, lines).await?),
            _ => Err(WorkError::Permanent(
                "kept lines sent in runs to a sink that is not files".into(),
            )),
        }
    }
}

/// Types of a packed chunk whose files are held open, waiting to be finished together: each
/// holds a write buffer, so memory stays bounded however many small types a source has.
const OPEN_TYPES: usize = 8;

async fn export(ctx: &mut ChunkCtx<'_>) -> Produced {
    let record: &ChunkRecord = ctx.record;
    ctx.own_read()?;
    // A chunk with several (small) types reads them one after the other, then finishes their
    // files together, so that their syncs overlap instead of adding up.
    let mut files = Vec::new();
    let mut resources = 0;
    let mut scanned: Vec<(ResourceType, ExportConsumer)> = Vec::new();
    for (t, read) in record.spec.reads() {
        let outcome = scan_type(ctx, t, read).await;
        let stopped = match outcome {
            Ok(Some(consumer)) => {
                scanned.push((t, consumer));
                if scanned.len() >= OPEN_TYPES {
                    let (f, n) = finish_types(ctx, std::mem::take(&mut scanned)).await?;
                    files.extend(f);
                    resources += n;
                }
                continue;
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        for (_, c) in scanned {
            c.sink.abort().await;
        }
        return stopped;
    }
    let (f, n) = finish_types(ctx, scanned).await?;
    files.extend(f);
    resources += n;
    Ok(Some((files, resources)))
}

/// Finishes the files of scanned types, all at once; their staged files in type order.
async fn finish_types(
    ctx: &mut ChunkCtx<'_>,
    scanned: Vec<(ResourceType, ExportConsumer)>,
) -> Result<(Vec<StagedFile>, u64), WorkError> {
    let finishing = scanned.into_iter().map(|(t, c)| {
        let store = ctx.store().clone();
        let dir = ctx.dir;
        let omitted = match &c.sink {
            Sink::Map(m) => m.omitted,
            _ => 0,
        };
        async move {
            let done = c.sink.finish(&store, dir).await;
            done.map(|(files, n)| (t, files, n, c.refs, omitted))
        }
    });
    let finished = futures::future::join_all(finishing).await;
    let mut files = Vec::new();
    let mut resources = 0;
    for done in finished {
        let (t, staged, n, refs, omitted) = done?;
        files.extend(staged);
        resources += n;
        if let Some(refs) = refs {
            let key = ctx.staged("refs.tsv");
            files.extend(write_sorted(ctx.store(), refs, FileKind::Refs, &key).await?);
        }
        if omitted > 0 {
            ctx.report(Issue {
                severity: crate::outcome::Severity::Information,
                code: IssueCode::Informational,
                diagnostics: format!(
                    "{omitted} {t} resources are in no patient's compartment and have no place in output organized by Patient"
                ),
                expression: None,
            })
            .await?;
        }
    }
    Ok((files, resources))
}

/// Streams what `read` holds of type `t` into a new sink; `None` when the work stopped.
async fn scan_type(
    ctx: &mut ChunkCtx<'_>,
    t: ResourceType,
    read: &ReadSpec,
) -> Result<Option<ExportConsumer>, WorkError> {
    let records_refs = ctx.job.plan.records_refs;
    let organized = ctx.job.plan.partitions > 0;
    let role = ctx.record.spec.role;
    let mut select = if role == ChunkRole::Deletions {
        // Bundles the source made of what it reports deleted: checked for time only.
        ctx.deletions_selection()
    } else {
        ctx.selection(t)
    };
    if (records_refs || organized) && role != ChunkRole::Deletions {
        select = select.with_owner();
    }
    let sink = match role {
        ChunkRole::Index => Sink::Nothing,
        ChunkRole::Deletions => {
            Sink::Files(ctx.part_writer("Bundle", FileKind::Deleted, ResourceType::BUNDLE))
        }
        _ => ctx.output_sink(t),
    };
    let mut consumer = ExportConsumer {
        sink,
        refs: records_refs.then(Vec::new),
    };
    match ctx.scan(read, &select, &mut consumer).await {
        Ok(true) => Ok(Some(consumer)),
        Ok(false) => {
            consumer.sink.abort().await;
            Ok(None)
        }
        Err(e) => {
            consumer.sink.abort().await;
            Err(e)
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::Value;

    use super::*;
    use crate::adapters::local_fs::LocalFsStore;
    use crate::adapters::sqlite::{SqliteDb, SqliteJobStore, SqliteQueue};
    use crate::model::LogicalId;
    use crate::ports::{
        JobStore, Origin, ReadCriteria, RecordBatch, RecordReader, ResourceSource, SourceError,
        SourcePlan, WorkQueue,
    };
    use crate::settings::Settings;
    use crate::worker::{NoLease, handle_message};

    /// A source without end: every batch is one Patient. The batch numbered `cancel_at`
    /// cancels the job on its way out, as a DELETE landing while that batch is read.
    struct Endless {
        jobs: Arc<dyn JobStore>,
        job: JobId,
        cancel_at: usize,
        batches: Arc<AtomicUsize>,
    }

    struct EndlessReader {
        jobs: Arc<dyn JobStore>,
        job: JobId,
        cancel_at: usize,
        batches: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl RecordReader for EndlessReader {
        async fn next_batch(&mut self, batch: &mut RecordBatch) -> Result<bool, SourceError> {
            let n = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
            batch.clear();
            batch.push(
                Bytes::from(format!(r#"{{"resourceType":"Patient","id":"p{n}"}}"#)),
                Origin {
                    part: 0,
                    offset: 0,
                    line: n as u64,
                },
            );
            if n == self.cancel_at {
                let err = |e: String| SourceError::Backend(e.into());
                let job = self
                    .jobs
                    .get(&self.job)
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err("no job".into()))?;
                let cancelled = job
                    .transitioned(JobState::Cancelled, chrono::Utc::now())
                    .ok_or_else(|| err("not cancellable".into()))?;
                self.jobs
                    .update(&cancelled, job.version)
                    .await
                    .map_err(|e| err(e.to_string()))?;
            }
            Ok(true)
        }
        async fn describe(&mut self, _: Origin) -> String {
            "endless".into()
        }
    }

    #[async_trait]
    impl ResourceSource for Endless {
        async fn plan(&self, _: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
            Ok(SourcePlan::default())
        }
        async fn types(&self) -> Result<Vec<ResourceType>, SourceError> {
            Ok(vec![ResourceType::PATIENT])
        }
        async fn open(&self, _: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
            Ok(Box::new(EndlessReader {
                jobs: self.jobs.clone(),
                job: self.job.clone(),
                cancel_at: self.cancel_at,
                batches: self.batches.clone(),
            }))
        }
        async fn read(&self, _: ResourceType, _: &LogicalId) -> Result<Option<Value>, SourceError> {
            Ok(None)
        }
        async fn existing(
            &self,
            _: ResourceType,
            _: &[LogicalId],
        ) -> Result<HashSet<LogicalId>, SourceError> {
            Ok(HashSet::new())
        }
        fn describe(&self) -> String {
            "endless".into()
        }
    }

    #[tokio::test]
    async fn a_chunk_stops_at_the_batch_after_a_cancel_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = SqliteDb::in_memory().expect("db");
        let jobs: Arc<dyn JobStore> = Arc::new(SqliteJobStore::new(db.clone()));
        let queue: Arc<dyn WorkQueue> = Arc::new(SqliteQueue::new(
            db,
            "work",
            std::time::Duration::from_secs(30),
        ));
        let mut job = crate::testkit::sample_job(JobState::Running, chrono::Utc::now());
        job.chunks_total = 1;
        jobs.create(&job).await.expect("create");
        jobs.put_chunks(&job.id, &[crate::testkit::sample_chunk(0)])
            .await
            .expect("chunks");
        let batches = Arc::new(AtomicUsize::new(0));
        let output = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        let deps = WorkerDeps {
            jobs: jobs.clone(),
            queue,
            output,
            source: Arc::new(Endless {
                jobs: jobs.clone(),
                job: job.id.clone(),
                cancel_at: 40,
                batches: batches.clone(),
            }),
            settings: Arc::new(Settings::new("http://localhost/fhir")),
            events: Arc::new(crate::ports::NoEvents),
        };
        let msg = WorkMessage::Chunk {
            job: job.id.clone(),
            chunk: 0,
        }
        .encode();
        handle_message(&deps, &msg, &NoLease)
            .await
            .expect("a cancelled chunk is no failure");
        assert_eq!(
            batches.load(Ordering::SeqCst),
            40,
            "the chunk read on after the batch that saw the cancel"
        );
        assert!(
            !jobs
                .chunk(&job.id, 0)
                .await
                .expect("chunk")
                .expect("exists")
                .is_done(),
            "a stopped chunk is not recorded done"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("root")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != ".tmp")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

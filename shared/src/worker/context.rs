//! What every chunk role (export, Provenance index and select, reduce) runs in: the chunk's
//! context (its job, record, staged-file prefix, scope, compiled filters, error file and
//! progress watch), the scan that feeds kept resources to a [`Consumer`], and what a role
//! produces. The roles depend on this module alone; `chunk` runs them.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;

use super::select::{Kept, Scope, Selection, Verdict};
use super::sinks::{MapBuffer, Sink};
use super::watch::Watch;
use super::{Lease, WorkError, WorkerDeps};
use crate::elements::ElementsFilter;
use crate::job::{ChunkRecord, ChunkResult, FileKind, Job, ReadSpec, StagedFile};
use crate::layout;
use crate::model::{JobId, ResourceType};
use crate::ndjson::PartWriter;
use crate::outcome::{Issue, IssueCode, single};
use crate::ports::{ObjectStore, RecordBatch, Run};
use crate::request::ExportLevel;
use crate::search::TypeFilterSet;

/// Jobs whose filters were compiled last in this process, most recent last: every chunk of
/// an export has the same filters, and a long OR list (100,000 codes) takes tens of
/// milliseconds to compile.
static COMPILED: std::sync::Mutex<Vec<(JobId, Arc<TypeFilterSet>)>> =
    std::sync::Mutex::new(Vec::new());
const COMPILED_KEPT: usize = 8;

/// The job's filters, compiled at its transaction time so that `ap` means the same in every
/// chunk (and so the same whichever chunk compiled them first).
fn compiled_filters(job: &Job) -> Result<Arc<TypeFilterSet>, WorkError> {
    if let Ok(mut cache) = COMPILED.lock()
        && let Some(i) = cache.iter().position(|(id, _)| *id == job.id)
    {
        let hit = cache.remove(i);
        let set = hit.1.clone();
        cache.push(hit);
        return Ok(set);
    }
    let set = Arc::new(
        TypeFilterSet::compile_at(&job.request.type_filters, job.transaction_time).map_err(
            |e| {
                WorkError::Permanent(format!(
                    "a _typeFilter accepted at kick-off no longer compiles: {e}"
                ))
            },
        )?,
    );
    if let Ok(mut cache) = COMPILED.lock() {
        if cache.len() >= COMPILED_KEPT {
            cache.remove(0);
        }
        cache.push((job.id.clone(), set.clone()));
    }
    Ok(set)
}

fn part_writer(
    deps: &WorkerDeps,
    dir: &str,
    stem: &str,
    kind: FileKind,
    resource_type: impl Into<Option<ResourceType>>,
) -> PartWriter {
    PartWriter::new(
        deps.output.clone(),
        dir.to_owned(),
        stem,
        kind,
        resource_type,
        deps.settings.max_file_bytes,
    )
    .with_encoding(deps.settings.output_encoding)
}

/// What every role needs while it runs.
pub(crate) struct ChunkCtx<'a> {
    pub deps: &'a WorkerDeps,
    pub job: &'a Job,
    pub record: &'a ChunkRecord,
    /// Key prefix of this attempt's staged files (see [`layout::chunk_attempt_dir`]).
    pub dir: &'a str,
    pub watch: Watch<'a>,
    pub scope: Scope,
    pub filters: Option<Arc<TypeFilterSet>>,
    pub elements: Option<Arc<ElementsFilter>>,
    /// The patients whose resources this chunk keeps, when its source read by patient.
    pub owners: Option<Arc<HashSet<String>>>,
    pub errors: PartWriter,
}

impl<'a> ChunkCtx<'a> {
    pub(super) async fn new(
        deps: &'a WorkerDeps,
        job: &'a Job,
        record: &'a ChunkRecord,
        dir: &'a str,
        lease: &'a dyn Lease,
    ) -> Result<ChunkCtx<'a>, WorkError> {
        let errors = part_writer(
            deps,
            dir,
            "error",
            FileKind::Error,
            ResourceType::OPERATION_OUTCOME,
        );
        let filters = if job.request.type_filters.is_empty() {
            None
        } else {
            Some(compiled_filters(job)?)
        };
        Ok(ChunkCtx {
            deps,
            job,
            record,
            dir,
            watch: Watch::new(deps, job, &record.spec, lease),
            scope: scope(deps, job).await?,
            filters,
            elements: ElementsFilter::new(&job.request.elements).map(Arc::new),
            owners: record
                .spec
                .owners
                .as_ref()
                .map(|o| Arc::new(o.iter().cloned().collect())),
            errors,
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.deps.output
    }

    /// A part writer under this attempt's prefix, cut and encoded as the settings say.
    pub(crate) fn part_writer(
        &self,
        stem: &str,
        kind: FileKind,
        resource_type: impl Into<Option<ResourceType>>,
    ) -> PartWriter {
        part_writer(self.deps, self.dir, stem, kind, resource_type)
    }

    /// A key under this attempt's prefix.
    pub(crate) fn staged(&self, name: &str) -> String {
        format!("{}{name}", self.dir)
    }

    /// The selection for this chunk's type, in this job's scope, keeping what the chunk's
    /// patients own when its source read by patient.
    pub(crate) fn selection(&self, t: ResourceType) -> Selection {
        Selection::new(
            self.job,
            t,
            self.scope.clone(),
            self.filters.clone(),
            self.elements.clone(),
        )
        .owned_by(self.owners.clone())
    }

    /// The selection of a deletions chunk: `DELETE` Bundles, for time alone.
    pub(crate) fn deletions_selection(&self) -> Selection {
        Selection::new(
            self.job,
            ResourceType::BUNDLE,
            Scope::Everything,
            None,
            None,
        )
    }

    /// The per-type part writer (or map buffer) kept resources go to.
    pub(crate) fn output_sink(&self, t: ResourceType) -> Sink {
        if self.job.plan.partitions > 0 {
            Sink::Map(MapBuffer::new(self.job.plan.partitions))
        } else {
            Sink::Files(self.part_writer(t.as_str(), FileKind::Output, t))
        }
    }

    /// What the chunk reads of its own type.
    pub(crate) fn own_read(&self) -> Result<&'a ReadSpec, WorkError> {
        let record: &'a ChunkRecord = self.record;
        record
            .spec
            .read
            .as_ref()
            .ok_or_else(|| WorkError::Permanent("this chunk has nothing to read".into()))
    }

    /// Streams `read`'s records through `select`, handing kept ones to `consumer` and
    /// reporting bad lines. `false` when the work stopped early.
    pub(crate) async fn scan(
        &mut self,
        read: &ReadSpec,
        select: &Selection,
        consumer: &mut (dyn Consumer + Send),
    ) -> Result<bool, WorkError> {
        let mut reader = self.deps.source.open(read).await?;
        let mut batch = RecordBatch::default();
        let runs = consumer.takes_runs();
        while reader.next_batch(&mut batch).await? {
            if !self.watch.tick().await? {
                return Ok(false);
            }
            // Lines kept whole that lie one after the other in a read buffer go to the
            // consumer together, as one slice of it.
            let mut run: Option<Run> = None;
            for i in 0..batch.len() {
                let (line, origin) = batch.get(i);
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
                let whole = runs && matches!(&verdict, Verdict::Keep(kept) if kept.is_whole(line));
                if whole && run.as_mut().is_some_and(|r| batch.extend_run(r, i)) {
                    continue;
                }
                if let Some(r) = run.take() {
                    consumer.keep_run(batch.run_bytes(&r), r.lines).await?;
                }
                if whole {
                    run = batch.run_of(i);
                    if run.is_some() {
                        continue;
                    }
                }
                match verdict {
                    Verdict::Keep(kept) => consumer.keep(select.resource_type, kept).await?,
                    Verdict::Skip => {}
                    Verdict::Error(issue) => {
                        let place = reader.describe(origin).await;
                        tracing::warn!(job_id = %self.job.id, chunk = self.record.spec.index, %place, "source line skipped");
                        self.report(Issue {
                            diagnostics: format!("{place}: {}", issue.diagnostics),
                            ..issue
                        })
                        .await?;
                    }
                }
            }
            if let Some(r) = run.take() {
                consumer.keep_run(batch.run_bytes(&r), r.lines).await?;
            }
            for fault in batch.take_faults() {
                let place = reader.describe(fault.origin).await;
                tracing::warn!(job_id = %self.job.id, chunk = self.record.spec.index, %place, reason = %fault.message, "damaged source file");
                self.report(Issue::error(
                    IssueCode::Structure,
                    format!("{place}: {}", fault.message),
                ))
                .await?;
            }
        }
        Ok(true)
    }

    /// Writes one `OperationOutcome` line to the chunk's error file.
    pub(crate) async fn report(&mut self, issue: Issue) -> Result<(), WorkError> {
        let body =
            serde_json::to_vec(&single(issue)).map_err(|e| WorkError::Retryable(e.into()))?;
        self.errors.write_line(&body).await?;
        Ok(())
    }

    /// Closes the error writer and assembles the result.
    pub(crate) async fn finish(
        self,
        mut files: Vec<StagedFile>,
        resources: u64,
    ) -> Result<ChunkResult, WorkError> {
        let error_files = self.errors.finish().await?;
        let errors = error_files.iter().map(|f| f.count).sum();
        files.extend(error_files);
        Ok(ChunkResult {
            files,
            resources,
            errors,
        })
    }

    pub(crate) async fn abort(self) {
        self.errors.abort().await;
    }
}

/// What a role produced: its staged files and how many resources it wrote; `None` when it
/// stopped early.
pub(crate) type Produced = Result<Option<(Vec<StagedFile>, u64)>, WorkError>;

/// Receives the kept resources of a scan.
#[async_trait]
pub(crate) trait Consumer {
    async fn keep(&mut self, t: ResourceType, kept: Kept<'_>) -> Result<(), WorkError>;

    /// Whether kept lines that are written as they are, with nothing else recorded of them,
    /// may come through [`Consumer::keep_run`] instead of one by one.
    fn takes_runs(&self) -> bool {
        false
    }

    /// `lines` kept lines, whole and each ended by `\n`; only when `takes_runs`.
    async fn keep_run(&mut self, _run: Bytes, _lines: u64) -> Result<(), WorkError> {
        Err(WorkError::Permanent(
            "kept lines sent in runs to a consumer that takes them one by one".into(),
        ))
    }
}

/// The scope of a job: everything, any patient, or the member list the plan step wrote.
async fn scope(deps: &WorkerDeps, job: &Job) -> Result<Scope, WorkError> {
    let members = match (&job.request.level, job.request.patients.is_empty()) {
        (ExportLevel::System, _) => return Ok(Scope::Everything),
        (ExportLevel::Patient, true) if !job.plan.members_listed => {
            return Ok(Scope::AnyPatient);
        }
        _ => layout::members_key(&job.output_prefix),
    };
    let bytes: Vec<u8> = deps
        .output
        .read(&members, 0, None)
        .await?
        .try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await?;
    let ids: Vec<String> = serde_json::from_slice(&bytes)
        .map_err(|e| WorkError::Permanent(format!("patient list unreadable: {e}")))?;
    Ok(Scope::Members(Arc::new(
        ids.into_iter().collect::<HashSet<_>>(),
    )))
}

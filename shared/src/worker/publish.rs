//! Publishing a chunk's files as soon as the chunk is recorded done: names are decided once
//! (numbers reserved per type from the job's counters, then recorded with the chunk), the
//! staged files are moved under them, and the chunk is marked renamed. Every step can be
//! repeated by whoever finds it unfinished (a duplicate delivery, finalize).

use super::{WorkError, WorkerDeps};
use crate::job::{ChunkRecord, ChunkRole, FileKind, Job, OutputFile, StagedFile};
use crate::ports::ObjectError;

/// Name of the `k`-th published file of a counter.
fn published_name(f: &StagedFile, k: u64) -> String {
    match (f.kind, f.resource_type) {
        (FileKind::Error, _) => crate::layout::error_name(k as usize),
        (_, Some(t)) => crate::layout::output_name(t, k as usize),
        (_, None) => format!("patients-{k}.ndjson"),
    }
}

fn counter(f: &StagedFile) -> String {
    match (f.kind, f.resource_type) {
        (FileKind::Error, _) => "error".to_owned(),
        (_, Some(t)) => t.to_string(),
        (_, None) => "patients".to_owned(),
    }
}

/// Whether a chunk's files appear in the manifest.
pub(crate) fn publishes(job: &Job, role: ChunkRole) -> bool {
    match role {
        ChunkRole::Export | ChunkRole::ProvenanceSelect => job.plan.partitions == 0,
        ChunkRole::Reduce { .. } => true,
        ChunkRole::Index | ChunkRole::ProvenanceIndex => false,
    }
}

/// The manifest page of a publishing chunk (1-based).
pub(crate) fn page_of(job: &Job, index: u32) -> u32 {
    let per_page = job.plan.page_chunks.max(1) as usize;
    let rank = job
        .plan
        .publishing
        .iter()
        .position(|i| *i == index)
        .unwrap_or(0);
    u32::try_from(rank / per_page + 1).unwrap_or(u32::MAX)
}

/// Gives the chunk's output and error files their published names and moves them there.
pub(crate) async fn publish(
    deps: &WorkerDeps,
    job: &Job,
    record: &ChunkRecord,
) -> Result<(), WorkError> {
    if record.renamed {
        return Ok(());
    }
    let Some(result) = &record.result else {
        return Err(WorkError::Permanent(format!(
            "chunk {} is published before it is done",
            record.spec.index
        )));
    };
    let files = match &record.published {
        Some(files) => files.clone(),
        None => {
            let staged: Vec<&StagedFile> = result
                .files
                .iter()
                .filter(|f| f.kind.is_published())
                .collect();
            let mut next: Vec<(String, u64)> = Vec::new();
            for f in &staged {
                let c = counter(f);
                match next.iter_mut().find(|(name, _)| *name == c) {
                    Some(_) => {}
                    None => {
                        let n = staged.iter().filter(|g| counter(g) == c).count();
                        let first = deps
                            .jobs
                            .reserve(&job.id, &c, u32::try_from(n).unwrap_or(u32::MAX))
                            .await?;
                        next.push((c, first));
                    }
                }
            }
            let page = page_of(job, record.spec.index);
            let mut names: Vec<OutputFile> = Vec::with_capacity(staged.len());
            for f in &staged {
                let c = counter(f);
                let slot = next
                    .iter_mut()
                    .find(|(name, _)| *name == c)
                    .map(|(_, k)| k)
                    .ok_or_else(|| WorkError::Permanent("counter vanished".into()))?;
                let name = published_name(f, *slot);
                *slot += 1;
                names.push(OutputFile {
                    kind: f.kind,
                    resource_type: f.resource_type,
                    name,
                    count: f.count,
                    bytes: f.bytes,
                    continues_in: None,
                    staged: f.path.clone(),
                    page,
                });
            }
            // A block that continues points at the chunk's next output file.
            for i in 0..staged.len() {
                if staged[i].continues
                    && let Some(j) =
                        (i + 1..staged.len()).find(|j| staged[*j].kind == FileKind::Output)
                {
                    names[i].continues_in = Some(names[j].name.clone());
                }
            }
            deps.jobs
                .set_published(&job.id, record.spec.index, &names)
                .await?
        }
    };
    for f in &files {
        move_once(
            deps,
            &format!("{}/{}", job.output_prefix, f.staged),
            &format!("{}/{}", job.output_prefix, f.name),
        )
        .await?;
    }
    deps.jobs.mark_renamed(&job.id, record.spec.index).await?;
    Ok(())
}

/// Renames `from` to `to`; a missing `from` is fine if `to` exists (moved before).
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

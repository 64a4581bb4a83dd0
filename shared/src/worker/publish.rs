//! Publishing a chunk's files as soon as the chunk is recorded done: names are decided once
//! (numbers reserved per type from the job's counters, then recorded with the chunk), the
//! staged files are moved under them, and the chunk is marked renamed. Every step can be
//! repeated by whoever finds it unfinished (a duplicate delivery, finalize).

use futures::{StreamExt, TryStreamExt};

use super::{WorkError, WorkerDeps};
use crate::job::{
    ChunkRecord, ChunkResult, ChunkRole, ChunkSpec, FileKind, Job, OutputFile, StagedFile,
};
use crate::model::ResourceType;
use crate::ports::{Naming, ObjectError};

/// Staged files of one chunk moved at once.
const MOVES_AT_ONCE: usize = 8;

/// Name of the `k`-th published file of a counter.
fn published_name(f: &StagedFile, k: u64) -> String {
    match (f.kind, f.resource_type) {
        (FileKind::Error, _) => crate::layout::error_name(k as usize),
        (FileKind::Deleted, _) => crate::layout::deleted_name(k as usize),
        (_, Some(t)) => crate::layout::output_name(t, k as usize),
        (_, None) => format!("patients-{k}.ndjson"),
    }
}

fn counter(f: &StagedFile) -> String {
    match (f.kind, f.resource_type) {
        (FileKind::Error, _) => "error".to_owned(),
        (FileKind::Deleted, _) => "deleted".to_owned(),
        (_, Some(t)) => t.to_string(),
        (_, None) => "patients".to_owned(),
    }
}

/// Whether a chunk's files appear in the manifest.
pub(crate) fn publishes(job: &Job, role: ChunkRole) -> bool {
    match role {
        ChunkRole::Export | ChunkRole::ProvenanceSelect => job.plan.partitions == 0,
        ChunkRole::Reduce { .. } | ChunkRole::Deletions => true,
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

/// How the published files of chunk `spec`, which produced `result`, are named: the first
/// output file of each type it reads takes the number the plan gave it (no counter is
/// written); any other file takes the next numbers of its counter (one per resource type, one
/// for error files), after those the plan gave, in the order of the staged files.
pub(crate) fn naming<'a>(job: &'a Job, spec: &ChunkSpec, result: &'a ChunkResult) -> Naming<'a> {
    let staged: Vec<&StagedFile> = result
        .files
        .iter()
        .filter(|f| f.kind.is_published())
        .collect();
    // Each staged file's number from the plan, if it has one.
    let planned: Vec<Option<u64>> = {
        let reads: Vec<ResourceType> = spec.reads().map(|(t, _)| t).collect();
        let mut taken: Vec<ResourceType> = Vec::new();
        staged
            .iter()
            .map(|f| match (f.kind, f.resource_type) {
                (FileKind::Output, Some(t)) if !taken.contains(&t) => {
                    let n = reads
                        .iter()
                        .position(|r| *r == t)
                        .and_then(|i| spec.numbers.get(i))?;
                    taken.push(t);
                    Some(u64::from(*n))
                }
                _ => None,
            })
            .collect()
    };
    let mut counters: Vec<(String, u32)> = Vec::new();
    for (f, p) in staged.iter().zip(&planned) {
        if p.is_some() {
            continue;
        }
        let c = counter(f);
        match counters.iter_mut().find(|(name, _)| *name == c) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => counters.push((c, 1)),
        }
    }
    let order: Vec<String> = counters.iter().map(|(c, _)| c.clone()).collect();
    let page = page_of(job, spec.index);
    Naming {
        counters,
        name: Box::new(move |firsts: &[u64]| {
            let mut next: Vec<u64> = firsts.to_vec();
            let mut names: Vec<OutputFile> = Vec::with_capacity(staged.len());
            for (f, planned) in staged.iter().zip(&planned) {
                let c = counter(f);
                let k = match planned {
                    Some(k) => *k,
                    None => {
                        let slot = order.iter().position(|o| *o == c).unwrap_or(0);
                        let k = next.get(slot).copied().unwrap_or(1);
                        if let Some(n) = next.get_mut(slot) {
                            *n += 1;
                        }
                        // After the numbers the plan gave.
                        k + u64::from(job.plan.numbered.get(&c).copied().unwrap_or(0))
                    }
                };
                names.push(OutputFile {
                    kind: f.kind,
                    resource_type: f.resource_type,
                    name: published_name(f, k),
                    count: f.count,
                    bytes: f.bytes,
                    continues_in: None,
                    staged: f.path.clone(),
                    page,
                    encoding: f.encoding,
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
            names
        }),
    }
}

/// Gives the chunk's output and error files their published names (unless the record has
/// them already) and moves them there.
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
            deps.jobs
                .name_files(
                    &job.id,
                    record.spec.index,
                    naming(job, &record.spec, result),
                )
                .await?
        }
    };
    // On a cloud store a move is two calls (copy, delete) of a few milliseconds each, for
    // every file: a chunk's files move together.
    let moves: Vec<_> = files
        .iter()
        .map(|f| {
            let to = format!("{}/{}", job.output_prefix, f.name);
            move_once(deps, f.staged.clone(), to)
        })
        .collect();
    futures::stream::iter(moves)
        .buffer_unordered(MOVES_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    deps.jobs.mark_renamed(&job.id, record.spec.index).await?;
    Ok(())
}

/// Renames `from` to `to`; a missing `from` is fine if `to` exists (moved before).
async fn move_once(deps: &WorkerDeps, from: String, to: String) -> Result<(), WorkError> {
    let (from, to) = (from.as_str(), to.as_str());
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

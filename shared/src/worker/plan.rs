//! Plan: decide the types and the patients, cut the job into chunks and phases, fan out.
//!
//! Phases, each sent when the previous one is done:
//! 1. export (and index) chunks over the source pieces;
//! 2. Provenance index chunks (`LatestProvenanceResources` only);
//! 3. Provenance select chunks (when Provenance is chosen by association);
//! 4. reduce chunks, one per partition (output organized by patient).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{WorkError, WorkMessage, WorkerDeps, clean_if_stopped, now};
use crate::compartment::in_patient_compartment;
use crate::group::current_members;
use crate::job::update_job;
use crate::job::{
    ChunkRole, ChunkSpec, CountGroup, FileKind, GROUP_SIZE, GROUPED_FROM, Job, JobPlan, JobState,
    OutputFile, PackedRead, ProvenanceMode, SourcePiece,
};
use crate::layout;
use crate::model::{JobId, LogicalId, ResourceType};
use crate::outcome::{Issue, IssueCode, Severity, single};
use crate::ports::{ReadCriteria, SourcePlan};
use crate::request::{AssociatedData, ExportLevel};

/// A source piece as planned: the role of its chunk, and the small pieces packed after it.
type Piece = (ChunkRole, SourcePiece, Vec<PackedRead>);

/// Name of the file holding the warnings about the request (lenient handling), fixed so that
/// a repeated plan rewrites it rather than adding another.
pub(crate) const NOTES_NAME: &str = "error/OperationOutcome-request.ndjson";

pub(super) async fn plan(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    let t = now();
    let Some(job) = update_job(deps.jobs.as_ref(), id, |job| match job.state {
        JobState::Accepted | JobState::Planning => job.transitioned(JobState::Planning, t),
        _ => None,
    })
    .await?
    else {
        return redeliver(deps, id).await;
    };

    // A store that will not take the export fails it now, in words, before any chunk runs
    // (rather than each chunk failing and being retried until the job stalls).
    let new_container =
        job.request.container.is_none() && layout::created_container(&job.output_prefix).is_some();
    deps.output
        .prepare_export(&job.output_prefix, new_container)
        .await?;
    let mut notes: Vec<Issue> = job.request.ignored.clone();
    let patients = patient_list(deps, &job).await?;
    if let Some(patients) = &patients {
        tracing::info!(job_id = %id, patients = patients.len(), "patients resolved");
        let body = serde_json::to_vec(patients).map_err(|e| WorkError::Retryable(e.into()))?;
        deps.output
            .put(&layout::members_key(&job.output_prefix), Bytes::from(body))
            .await?;
    }
    let (chunks, mut plan) = cut(deps, &job, patients.as_deref(), &mut notes).await?;
    plan.page_chunks = deps.settings.manifest_page_chunks;
    plan.members_listed = patients.is_some();
    if !notes.is_empty() {
        plan.notes.push(write_notes(deps, &job, &notes).await?);
    }
    deps.jobs.put_chunks(id, &chunks).await?;
    let total = u32::try_from(chunks.len())
        .map_err(|_| WorkError::Permanent("export needs more than 2^32 chunks".into()))?;
    let t = now();
    let Some(running) = update_job(deps.jobs.as_ref(), id, |j| {
        if j.state != JobState::Planning {
            return None;
        }
        let mut next = j.transitioned(JobState::Running, t)?;
        next.chunks_total = total;
        next.plan = plan.clone();
        Some(next)
    })
    .await?
    else {
        // Cancelled (or planned by a duplicate) meanwhile: a cancel's clean-up may have
        // run before the member list and notes above were written.
        clean_if_stopped(deps, &job, None).await?;
        return Ok(());
    };
    tracing::info!(job_id = %id, chunks = total, phases = ?running.plan.phases, provenance = ?running.plan.provenance, partitions = running.plan.partitions, "export planned");
    let messages: Vec<String> = if chunks.is_empty() {
        vec![
            WorkMessage::Finalize {
                job: running.id.clone(),
            }
            .encode(),
        ]
    } else {
        dispatch_order(&chunks, running.plan.phase_range(0), &running)
            .into_iter()
            .map(|chunk| {
                WorkMessage::Chunk {
                    job: running.id.clone(),
                    chunk,
                }
                .encode()
            })
            .collect()
    };
    deps.queue.send(running.id.as_str(), messages).await?;
    mark_dispatched(deps, id).await
}

/// Records that the first messages went out, so that the plan message, if delivered again,
/// sends nothing more.
async fn mark_dispatched(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    update_job(deps.jobs.as_ref(), id, |j| {
        if j.state != JobState::Running || j.plan.dispatched {
            return None;
        }
        let mut next = j.clone();
        next.version += 1;
        next.plan.dispatched = true;
        Some(next)
    })
    .await?;
    Ok(())
}

/// A plan message for a job planned already: a duplicate, or a delivery after a crash
/// between recording the plan and sending its first messages, which are then sent now.
async fn redeliver(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    let Some(job) = deps.jobs.get(id).await? else {
        return Ok(());
    };
    match job.state {
        JobState::Running if !job.plan.dispatched => {
            let messages = super::recovery::pending_messages(deps, &job).await?;
            tracing::info!(job_id = %id, messages = messages.len(), "sending an export's first messages again");
            deps.queue.send(id.as_str(), messages).await?;
            mark_dispatched(deps, id).await
        }
        JobState::Finalizing => super::finalize::finalize(deps, id).await,
        _ => {
            tracing::debug!(job_id = %id, state = job.state.as_str(), "plan: already planned");
            Ok(())
        }
    }
}

/// The order a phase's chunks are sent in. Manifest pages are cut in plan order, so an
/// export that asked for partial manifests runs its chunks in that order and its pages fill
/// one after the other; any other runs biggest first.
fn dispatch_order(chunks: &[ChunkSpec], range: std::ops::Range<u32>, job: &Job) -> Vec<u32> {
    if job.request.allow_partial_manifests {
        range.collect()
    } else {
        largest_first(chunks, range).collect()
    }
}

/// The chunks of `range` biggest first: the export ends when its last chunk does, so the
/// long ones must not be the ones left to start when the workers free up (queues are
/// close to first-in first-out, SQS included, though it does not promise it).
pub(super) fn largest_first(
    chunks: &[ChunkSpec],
    range: std::ops::Range<u32>,
) -> impl Iterator<Item = u32> + use<> {
    let mut order: Vec<(u64, u32)> = chunks
        .iter()
        .filter(|c| range.contains(&c.index))
        .map(|c| (c.bytes, c.index))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    order.into_iter().map(|(_, index)| index)
}

/// Puts the chunks of each large phase in groups of [`GROUP_SIZE`], in the order they are
/// sent ([`largest_first`]), so that groups finish one after the other and the job's count
/// moves steadily.
fn count_in_groups(chunks: &mut [ChunkSpec], phases: &[u32]) {
    let mut start = 0u32;
    let mut next_group = 0u32;
    for &n in phases {
        let range = start..start + n;
        start += n;
        if n < GROUPED_FROM {
            continue;
        }
        let order: Vec<u32> = largest_first(chunks, range).collect();
        for run in order.chunks(GROUP_SIZE as usize) {
            let group = CountGroup {
                id: next_group,
                size: u32::try_from(run.len()).unwrap_or(GROUP_SIZE),
            };
            next_group += 1;
            for index in run {
                if let Some(c) = chunks.get_mut(*index as usize) {
                    c.group = Some(group);
                }
            }
        }
    }
}

/// Numbers the published file of each type of each export chunk, in chunk order; returns how
/// many numbers each type took.
fn number_files(chunks: &mut [ChunkSpec]) -> BTreeMap<String, u32> {
    let mut next: BTreeMap<String, u32> = BTreeMap::new();
    for c in chunks.iter_mut().filter(|c| c.role == ChunkRole::Export) {
        let types: Vec<ResourceType> = c.reads().map(|(t, _)| t).collect();
        c.numbers = types
            .iter()
            .map(|t| {
                let n = next.entry(t.to_string()).or_insert(0);
                *n += 1;
                *n
            })
            .collect();
    }
    next
}

/// The patients of a Group export (its current members, narrowed by `patient`), or of a
/// Patient export narrowed by `patient`; `None` when every patient is in scope.
async fn patient_list(deps: &WorkerDeps, job: &Job) -> Result<Option<Vec<String>>, WorkError> {
    let narrowed: Vec<&str> = job.request.patients.iter().map(LogicalId::as_str).collect();
    match &job.request.level {
        ExportLevel::System => Ok(None),
        // Every patient: a source that reads by patient lists them, any other is read whole.
        ExportLevel::Patient if narrowed.is_empty() => {
            Ok(deps.source.patients(job.transaction_time).await?)
        }
        ExportLevel::Patient => {
            let mut ids: Vec<String> = narrowed.iter().map(|s| (*s).to_owned()).collect();
            ids.sort();
            ids.dedup();
            Ok(Some(ids))
        }
        ExportLevel::Group(group) => {
            let Some(resource) = deps.source.read(ResourceType::GROUP, group).await? else {
                return Err(WorkError::Permanent(format!(
                    "Group/{group} no longer exists in the source"
                )));
            };
            let mut members = current_members(&resource, job.transaction_time.timestamp_micros());
            if !narrowed.is_empty() {
                // `patient` narrows a Group; it can never add a non-member.
                members.retain(|m| narrowed.contains(&m.as_str()));
            }
            Ok(Some(members))
        }
    }
}

fn provenance_mode(job: &Job, types: &[ResourceType]) -> ProvenanceMode {
    let asked = &job.request.include_associated;
    if asked.contains(&AssociatedData::RelevantProvenanceResources) {
        // Both values: the least restrictive wins (IG).
        ProvenanceMode::Relevant
    } else if asked.contains(&AssociatedData::LatestProvenanceResources) {
        ProvenanceMode::Latest
    } else if job.request.is_patient_level() && types.contains(&ResourceType::PROVENANCE) {
        ProvenanceMode::Compartment
    } else {
        ProvenanceMode::Plain
    }
}

/// Cuts the job into chunks and phases.
async fn cut(
    deps: &WorkerDeps,
    job: &Job,
    patients: Option<&[String]>,
    notes: &mut Vec<Issue>,
) -> Result<(Vec<ChunkSpec>, JobPlan), WorkError> {
    let available = deps.source.types().await?;
    if let Some(asked) = &job.request.types {
        let missing: Vec<ResourceType> = asked
            .iter()
            .copied()
            .filter(|t| !available.contains(t))
            .collect();
        if !missing.is_empty() {
            let strict = job.request.handling == crate::request::Handling::Strict;
            for w in deps.source.missing_types(&missing, strict).await? {
                notes.push(Issue {
                    severity: Severity::Warning,
                    code: IssueCode::NotSupported,
                    diagnostics: w,
                    expression: Some("_type".into()),
                });
            }
        }
    }
    let organized = job.request.organize_output_by.is_some();
    let mut types = export_types(job, &available);
    if organized && !job.request.is_patient_level() {
        let (keep, drop): (Vec<_>, Vec<_>) =
            types.into_iter().partition(|t| in_patient_compartment(*t));
        types = keep;
        if !drop.is_empty() {
            notes.push(Issue {
                severity: crate::outcome::Severity::Information,
                code: IssueCode::Informational,
                diagnostics: format!(
                    "output organized by Patient holds the Patient compartment only; not exported: {}",
                    drop.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                ),
                expression: Some("organizeOutputBy".into()),
            });
        }
    }
    let mode = provenance_mode(job, &types);
    let associated = mode != ProvenanceMode::Plain;
    let main: Vec<ResourceType> = types
        .iter()
        .copied()
        .filter(|t| !associated || *t != ResourceType::PROVENANCE)
        .collect();
    // Provenance of a resource in the compartment is wanted even when `_type` does not export
    // that resource: those types are read for their ids only.
    let index: Vec<ResourceType> = if mode == ProvenanceMode::Compartment {
        available
            .iter()
            .copied()
            .filter(|t| {
                in_patient_compartment(*t)
                    && !main.contains(t)
                    && *t != ResourceType::PROVENANCE
                    && *t != ResourceType::GROUP
            })
            .collect()
    } else {
        Vec::new()
    };
    let chunk_bytes = deps.settings.chunk_bytes;
    let criteria = ReadCriteria {
        types: &main,
        chunk_bytes,
        since: job.request.since,
        until: job.request.until,
        transaction_time: job.transaction_time,
        type_filters: &job.request.type_filters,
        patients,
        elements: &job.request.elements,
    };
    let mut phases: Vec<Vec<Piece>> = Vec::new();
    let mut first: Vec<Piece> = Vec::new();
    for p in planned(deps, job, &criteria, notes).await? {
        first.push((ChunkRole::Export, p, Vec::new()));
    }
    // Read for their ids only: `_elements` would cut what the compartment test reads.
    let index_criteria = ReadCriteria {
        types: &index,
        elements: &[],
        ..criteria
    };
    for p in planned(deps, job, &index_criteria, notes).await? {
        first.push((ChunkRole::Index, p, Vec::new()));
    }
    if !organized && !associated {
        first = pack(first, deps.settings.pack_limit());
    }
    // Deletions are reported with `_since` at system level: a deleted resource has no
    // content left to place it in a patient's compartment.
    if job.request.since.is_some() && !job.request.is_patient_level() {
        let SourcePlan {
            pieces, warnings, ..
        } = deps.source.plan_deletions(&criteria).await?;
        notes.extend(warnings.into_iter().map(|w| Issue {
            severity: Severity::Warning,
            code: IssueCode::NotSupported,
            diagnostics: w,
            expression: Some("_since".into()),
        }));
        first.extend(
            pieces
                .into_iter()
                .map(|p| (ChunkRole::Deletions, p, Vec::new())),
        );
    }
    let mut mapped_bytes: u64 = first
        .iter()
        .filter(|(r, _, _)| *r == ChunkRole::Export)
        .map(|(_, p, _)| p.bytes)
        .sum();
    phases.push(first);
    if associated && available.contains(&ResourceType::PROVENANCE) {
        // Provenance chosen by association is read whole: which one is kept depends on
        // what the other chunks selected, not on anything a source could be told.
        let provenance = [ResourceType::PROVENANCE];
        let pieces = planned(
            deps,
            job,
            &ReadCriteria::everything(&provenance, chunk_bytes, job.transaction_time),
            notes,
        )
        .await?;
        mapped_bytes += pieces.iter().map(|p| p.bytes).sum::<u64>();
        if mode == ProvenanceMode::Latest {
            phases.push(
                pieces
                    .iter()
                    .cloned()
                    .map(|p| (ChunkRole::ProvenanceIndex, p, Vec::new()))
                    .collect(),
            );
        }
        phases.push(
            pieces
                .into_iter()
                .map(|p| (ChunkRole::ProvenanceSelect, p, Vec::new()))
                .collect(),
        );
    }
    let partitions = if organized {
        u32::try_from(mapped_bytes.div_ceil(chunk_bytes.max(1)).max(1)).unwrap_or(u32::MAX)
    } else {
        0
    };
    let mut chunks = Vec::new();
    let mut sizes = Vec::new();
    type Planned = (
        ChunkRole,
        Option<SourcePiece>,
        ResourceType,
        Vec<PackedRead>,
    );
    let mut push = |phase_chunks: Vec<Planned>| {
        if phase_chunks.is_empty() {
            return;
        }
        let phase = u32::try_from(sizes.len()).unwrap_or(u32::MAX);
        sizes.push(u32::try_from(phase_chunks.len()).unwrap_or(u32::MAX));
        for (role, piece, resource_type, packed) in phase_chunks {
            let (bytes, read, owners) = match piece {
                Some(p) => (p.bytes, Some(p.read), p.owners),
                None => (0, None, None),
            };
            chunks.push(ChunkSpec {
                index: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
                phase,
                resource_type,
                role,
                bytes,
                read,
                packed,
                owners,
                group: None,
                numbers: Vec::new(),
            });
        }
    };
    for phase in phases {
        push(
            phase
                .into_iter()
                .map(|(role, p, packed)| {
                    let t = p.resource_type;
                    (role, Some(p), t, packed)
                })
                .collect(),
        );
    }
    if organized {
        push(
            (0..partitions)
                .map(|partition| {
                    (
                        ChunkRole::Reduce { partition },
                        None,
                        ResourceType::PATIENT,
                        Vec::new(),
                    )
                })
                .collect(),
        );
    }
    count_in_groups(&mut chunks, &sizes);
    let numbered = if organized {
        BTreeMap::new()
    } else {
        number_files(&mut chunks)
    };
    let publishing = chunks
        .iter()
        .filter(|c| match c.role {
            ChunkRole::Export | ChunkRole::ProvenanceSelect => !organized,
            ChunkRole::Reduce { .. } | ChunkRole::Deletions => true,
            ChunkRole::Index | ChunkRole::ProvenanceIndex => false,
        })
        .map(|c| c.index)
        .collect();
    Ok((
        chunks,
        JobPlan {
            phases: sizes,
            partitions,
            records_refs: associated,
            publishing,
            page_chunks: 0,
            numbered,
            provenance: mode,
            notes: Vec::new(),
            dispatched: false,
            members_listed: false,
        },
    ))
}

/// The source's pieces for `criteria`; what it warns of goes to the export's notes.
async fn planned(
    deps: &WorkerDeps,
    job: &Job,
    criteria: &ReadCriteria<'_>,
    notes: &mut Vec<Issue>,
) -> Result<Vec<SourcePiece>, WorkError> {
    if criteria.types.is_empty() {
        return Ok(Vec::new());
    }
    let SourcePlan {
        pieces,
        applied,
        warnings,
    } = deps.source.plan(criteria).await?;
    tracing::info!(job_id = %job.id, types = criteria.types.len(), pieces = pieces.len(), ?applied, "source planned");
    notes.extend(warnings.into_iter().map(|w| Issue {
        severity: Severity::Warning,
        code: IssueCode::NotSupported,
        diagnostics: w,
        expression: None,
    }));
    Ok(pieces)
}

/// Packs runs of consecutive small export pieces into one chunk of at most `limit` bytes;
/// pieces of a type already in the pack join its read. Plan order (and so manifest order)
/// is kept.
fn pack(pieces: Vec<Piece>, limit: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    // Whether the last chunk in `out` is a pack that may take more.
    let mut open = false;
    for (role, piece, packed) in pieces {
        let small = role == ChunkRole::Export && packed.is_empty() && piece.bytes < limit;
        if small
            && open
            && let Some((_, head, reads)) = out.last_mut()
            && head.bytes + piece.bytes <= limit
            && head.owners == piece.owners
        {
            head.bytes += piece.bytes;
            let same = if head.resource_type == piece.resource_type {
                Some(&mut head.read)
            } else {
                reads
                    .iter_mut()
                    .find(|r| r.resource_type == piece.resource_type)
                    .map(|r| &mut r.read)
            };
            match same {
                Some(read) => read.extend(piece.read),
                None => reads.push(PackedRead {
                    resource_type: piece.resource_type,
                    read: piece.read,
                }),
            }
            continue;
        }
        open = small;
        out.push((role, piece, packed));
    }
    out
}

/// The types to export: `_type` (or everything the source has), narrowed to the Patient
/// compartment at Patient and Group level, plus Provenance when associated Provenance is
/// asked for. `Group` itself is left out of patient-level exports unless asked for: a
/// Group's member list names patients outside the export.
fn export_types(job: &Job, available: &[ResourceType]) -> Vec<ResourceType> {
    let mut types: Vec<ResourceType> = match &job.request.types {
        Some(ts) => ts
            .iter()
            .copied()
            .filter(|t| available.contains(t))
            .collect(),
        None => available
            .iter()
            .copied()
            .filter(|t| !job.request.is_patient_level() || *t != ResourceType::GROUP)
            .collect(),
    };
    if job.request.is_patient_level() {
        types.retain(|t| in_patient_compartment(*t));
    }
    let permitted = |t: &ResourceType| job.request.scope.as_ref().is_none_or(|s| s.contains(t));
    if !job.request.include_associated.is_empty()
        && available.contains(&ResourceType::PROVENANCE)
        && !types.contains(&ResourceType::PROVENANCE)
    {
        types.push(ResourceType::PROVENANCE);
    }
    // The caller's scopes at kick-off bound the export, whatever else asks for a type.
    types.retain(permitted);
    types
}

async fn write_notes(
    deps: &WorkerDeps,
    job: &Job,
    notes: &[Issue],
) -> Result<OutputFile, WorkError> {
    let mut body = Vec::new();
    for issue in notes {
        serde_json::to_writer(&mut body, &single(issue.clone()))
            .map_err(|e| WorkError::Retryable(e.into()))?;
        body.push(b'\n');
    }
    let bytes = body.len() as u64;
    deps.output
        .put(
            &format!("{}/{NOTES_NAME}", job.output_prefix),
            Bytes::from(body),
        )
        .await?;
    Ok(OutputFile {
        kind: FileKind::Error,
        resource_type: Some(ResourceType::OPERATION_OUTCOME),
        name: NOTES_NAME.to_owned(),
        count: notes.len() as u64,
        bytes,
        continues_in: None,
        staged: String::new(),
        page: 1,
        encoding: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ReadSpec;

    fn spec(index: u32, bytes: u64) -> ChunkSpec {
        ChunkSpec {
            bytes,
            ..crate::testkit::sample_chunk(index)
        }
    }

    #[test]
    fn chunks_are_sent_biggest_first_within_the_range() {
        let chunks = vec![
            spec(0, 10),
            spec(1, 500),
            spec(2, 10),
            spec(3, 90),
            spec(4, 1_000),
        ];
        let order: Vec<u32> = largest_first(&chunks, 0..4).collect();
        // Chunk 4 is outside the range; equal sizes keep their plan order.
        assert_eq!(order, vec![1, 3, 0, 2]);
    }

    #[test]
    fn the_plan_counts_the_groups_its_chunks_are_put_in() {
        // A small phase (not grouped), a large one, another large one that ends short.
        let phases = [3u32, 300, 257];
        let total: u32 = phases.iter().sum();
        let mut chunks: Vec<ChunkSpec> = (0..total).map(|i| spec(i, u64::from(i % 7))).collect();
        count_in_groups(&mut chunks, &phases);
        let ids: std::collections::BTreeSet<u32> = chunks
            .iter()
            .filter_map(|c| c.group.map(|g| g.id))
            .collect();
        let plan = JobPlan {
            phases: phases.to_vec(),
            ..JobPlan::default()
        };
        assert_eq!(plan.count_groups(), 10 + 9);
        assert_eq!(ids, (0..plan.count_groups()).collect());
        assert!(chunks[..3].iter().all(|c| c.group.is_none()));
    }

    fn piece(t: ResourceType, object: &str, bytes: u64) -> Piece {
        (
            ChunkRole::Export,
            SourcePiece {
                resource_type: t,
                read: ReadSpec {
                    parts: vec![serde_json::json!(object)],
                },
                bytes,
                owners: None,
            },
            Vec::new(),
        )
    }

    fn shape(packed: &[Piece]) -> Vec<(String, u64, Vec<String>)> {
        packed
            .iter()
            .map(|(_, p, more)| {
                let objects = |r: &ReadSpec| {
                    r.parts
                        .iter()
                        .map(|p| p.as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                };
                let mut all = objects(&p.read);
                for m in more {
                    all.extend(objects(&m.read));
                }
                (p.resource_type.to_string(), p.bytes, all)
            })
            .collect()
    }

    #[test]
    fn small_export_pieces_are_packed_in_plan_order() {
        let t = |s: &str| ResourceType::parse(s).expect("type");
        let mut pieces = vec![
            piece(t("AllergyIntolerance"), "a", 10),
            piece(t("Condition"), "c", 30),
            piece(t("Encounter"), "e", 70),
            piece(t("Observation"), "o1", 100),
            piece(t("Observation"), "o2", 100),
            piece(t("Patient"), "p1", 20),
            piece(t("Patient"), "p2", 20),
            piece(t("Procedure"), "r", 50),
        ];
        // An index piece is never packed, and ends the pack before it.
        pieces.push((
            ChunkRole::Index,
            piece(t("Immunization"), "i", 1).1,
            Vec::new(),
        ));
        pieces.push(piece(t("Provenance"), "v", 1));
        let packed = pack(pieces, 100);
        assert_eq!(
            shape(&packed),
            vec![
                (
                    "AllergyIntolerance".into(),
                    40,
                    vec!["a".into(), "c".into()]
                ),
                // Past the limit with the pack before it: a pack of its own.
                ("Encounter".into(), 70, vec!["e".into()]),
                // Not small: alone.
                ("Observation".into(), 100, vec!["o1".into()]),
                ("Observation".into(), 100, vec!["o2".into()]),
                // Two pieces of one type read as one, then the next type.
                (
                    "Patient".into(),
                    90,
                    vec!["p1".into(), "p2".into(), "r".into()]
                ),
                ("Immunization".into(), 1, vec!["i".into()]),
                ("Provenance".into(), 1, vec!["v".into()]),
            ]
        );
        let types: Vec<Vec<ResourceType>> = packed
            .iter()
            .map(|(_, p, more)| {
                std::iter::once(p.resource_type)
                    .chain(more.iter().map(|m| m.resource_type))
                    .collect()
            })
            .collect();
        assert_eq!(types[4], vec![t("Patient"), t("Procedure")]);
        assert_eq!(packed[5].0, ChunkRole::Index);
    }
}

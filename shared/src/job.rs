//! The export job record, its chunks, and the job state machine.
//!
//! ```text
//! Accepted -> Planning -> Running -> Finalizing -> Completed
//!     \           \          \           \            \
//!      +-----------+----------+-----------+-> Failed ---+-> Cancelled
//! ```
//! Every state change is a compare-and-set on `version`, so two workers (or a worker and a
//! cancel) racing for the same job cannot both win.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{JobId, ResourceType};
use crate::ports::Encoding;
use crate::request::ExportRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Accepted,
    Planning,
    Running,
    Finalizing,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Accepted => "accepted",
            JobState::Planning => "planning",
            JobState::Running => "running",
            JobState::Finalizing => "finalizing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "accepted" => JobState::Accepted,
            "planning" => JobState::Planning,
            "running" => JobState::Running,
            "finalizing" => JobState::Finalizing,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Still doing work: the states a stuck-job sweep looks at.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            JobState::Accepted | JobState::Planning | JobState::Running | JobState::Finalizing
        )
    }

    /// Whether a job in this state (`None`: removed) was stopped before it completed:
    /// cancelled, failed or gone. What a step that wrote into the export's folder asks.
    pub fn is_stopped(state: Option<JobState>) -> bool {
        matches!(state, None | Some(JobState::Cancelled | JobState::Failed))
    }

    /// Whether the state machine allows `self -> to`.
    pub fn can_become(&self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Accepted, Planning | Failed | Cancelled)
                | (
                    Planning,
                    Planning | Running | Finalizing | Failed | Cancelled
                )
                | (Running, Finalizing | Failed | Cancelled)
                | (Finalizing, Completed | Failed | Cancelled)
                | (Completed | Failed, Cancelled)
        )
    }
}

/// An export job. `version` changes on every state transition (see [`crate::ports::JobStore`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// Who started the export; only they may poll, cancel or download it.
    pub owner: String,
    pub state: JobState,
    pub version: u64,
    pub request: ExportRequest,
    /// The instant the export's snapshot is taken at; nothing changed later is exported.
    pub transaction_time: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Last sign of progress (a transition, a chunk done, a worker heartbeat).
    pub updated_at: DateTime<Utc>,
    pub chunks_total: u32,
    pub chunks_done: u32,
    /// How many times a stuck-job sweep has restarted this job.
    pub recoveries: u32,
    /// Folder of this export in the output store; new for every export.
    pub output_prefix: String,
    /// When the job record and its files may be deleted.
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Set by the plan step.
    #[serde(default)]
    pub plan: JobPlan,
    /// The schedule that started this export, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

impl Job {
    /// Percentage of chunks done, 0 to 100. Planning counts as 0.
    pub fn progress_percent(&self) -> u32 {
        if self.chunks_total == 0 {
            return 0;
        }
        let pct = u64::from(self.chunks_done) * 100 / u64::from(self.chunks_total);
        u32::try_from(pct.min(100)).unwrap_or(100)
    }

    /// A copy moved to `to`, with the version bumped, or `None` if the machine forbids it.
    pub fn transitioned(&self, to: JobState, now: DateTime<Utc>) -> Option<Job> {
        if !self.state.can_become(to) {
            return None;
        }
        let mut next = self.clone();
        next.state = to;
        next.version += 1;
        next.updated_at = now;
        Some(next)
    }
}

/// How a job's chunks are organized, decided by the plan step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    /// Chunks per phase, in order. Chunks of phase `n + 1` are sent once every chunk of phase
    /// `n` is done; their indices follow those of phase `n`.
    pub phases: Vec<u32>,
    /// Partitions of an export organized by patient (one `Reduce` chunk each); 0 otherwise.
    #[serde(default)]
    pub partitions: u32,
    /// Whether export and index chunks record the resources they selected (`Refs` files), for
    /// Provenance selected by association.
    #[serde(default)]
    pub records_refs: bool,
    /// Chunks that publish files, in publishing order (manifest pages follow it). Stored as
    /// runs (`[first, last]`), which it mostly is: the job's item stays small however many
    /// chunks an export has (every read and write of it is billed by its size).
    #[serde(default, with = "runs")]
    pub publishing: Vec<u32>,
    /// Publishing chunks per manifest page.
    #[serde(default)]
    pub page_chunks: u32,
    /// File numbers the plan gave chunks ([`ChunkSpec::numbers`]), by counter (type): the
    /// counter's numbers come after them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub numbered: std::collections::BTreeMap<String, u32>,
    /// How Provenance is chosen.
    #[serde(default)]
    pub provenance: ProvenanceMode,
    /// Files the plan step published itself (warnings about the request).
    #[serde(default)]
    pub notes: Vec<OutputFile>,
    /// The first phase's messages are known to be sent. Until then a delivery of the plan
    /// message (again, after a crash between recording the plan and sending them) sends them.
    #[serde(default)]
    pub dispatched: bool,
    /// The plan wrote the export's patients to `members.json` (a Group, `patient`, or a
    /// Patient-level export from a source that reads by patient): chunks take their scope
    /// from it.
    #[serde(default)]
    pub members_listed: bool,
}

impl JobPlan {
    /// The phase a count of done chunks has reached, and whether it just completed a phase
    /// that has a successor: `Some(next_phase)` when `done` is exactly the end of a phase.
    pub fn phase_completed_by(&self, done: u32) -> Option<usize> {
        let mut end = 0u32;
        for (i, n) in self.phases.iter().enumerate() {
            end += n;
            if done == end && i + 1 < self.phases.len() {
                return Some(i + 1);
            }
        }
        None
    }

    /// How many count groups the plan's chunks are in (numbered from 0, phase after phase):
    /// what a stop marks (see [`crate::ports::JobStore::mark_groups_stopped`]).
    pub fn count_groups(&self) -> u32 {
        self.phases
            .iter()
            .filter(|n| **n >= GROUPED_FROM)
            .map(|n| n.div_ceil(GROUP_SIZE))
            .sum()
    }

    /// Chunk indices of a phase.
    pub fn phase_range(&self, phase: usize) -> std::ops::Range<u32> {
        let start: u32 = self.phases.iter().take(phase).sum();
        start..start + self.phases.get(phase).copied().unwrap_or(0)
    }
}

/// How an export picks its Provenance resources (Bulk Data IG, `includeAssociatedData`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvenanceMode {
    /// Provenance is exported like any other type (system level without
    /// `includeAssociatedData`).
    #[default]
    Plain,
    /// Patient and Group level default: Provenance whose target is a resource in the Patient
    /// compartment of an exported patient.
    Compartment,
    /// `RelevantProvenanceResources`: every Provenance that targets an exported resource.
    Relevant,
    /// `LatestProvenanceResources`: for each exported resource, its most recent Provenance.
    Latest,
}

/// One unit of work: small enough for one worker invocation, deterministic so that a retry
/// redoes exactly the same work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpec {
    pub index: u32,
    #[serde(default)]
    pub phase: u32,
    pub resource_type: ResourceType,
    pub role: ChunkRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadSpec>,
    /// Source bytes the chunk reads (an estimate for compressed files), so that the biggest
    /// chunks are sent first and the export does not end waiting on one that started last.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    /// Further small types this chunk exports, each after the one before: a chunk costs a
    /// message, an invocation and a few store writes whatever it reads, so small types share
    /// one (see `plan`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packed: Vec<PackedRead>,
    /// The patients whose resources this chunk keeps (see [`SourcePiece::owners`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<String>>,
    /// Where the chunk's completion is counted: on a group item that counts itself on the job
    /// once its last chunk is done, so that the job's item is not written by every chunk of
    /// a large export (see [`CountGroup`]). `None`: on the job directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<CountGroup>,
    /// The number of the published file of each type it reads (in the order of
    /// [`ChunkSpec::reads`]), decided by the plan: most chunks publish one file per type, named
    /// without a write to a shared counter. Further files (a rollover inside the chunk) take
    /// numbers from the counter, after [`JobPlan::numbered`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<u32>,
}

/// Phases of this many chunks or more count their completions in groups (see [`CountGroup`]).
pub const GROUPED_FROM: u32 = 256;
/// Chunks per group: a group item then takes at most this many writes per chunk-time
/// (about 350 a second at 0.09 s a chunk, the fastest measured), and the job's item one
/// per group (350 a second with 1,000 workers at that pace); both under DynamoDB's 1,000.
pub const GROUP_SIZE: u32 = 32;

/// A group of chunks of one phase whose completions are counted together. A DynamoDB item
/// takes at most 1,000 writes a second: the job's item, counted on by every chunk, would be
/// over that from a few hundred workers on. A group of `size` chunks takes at most `size`
/// writes per chunk-time however many workers run, and the job's item one write per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountGroup {
    pub id: u32,
    pub size: u32,
}

impl CountGroup {
    /// The job counter its completions are counted on (beside the file-number counters,
    /// which are named after types and kinds: none starts with `#`).
    pub fn counter(&self) -> String {
        Self::counter_of(self.id)
    }

    /// The counter of group `id`.
    pub fn counter_of(id: u32) -> String {
        format!("#group-{id}")
    }
}

/// A type a chunk reads after its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedRead {
    pub resource_type: ResourceType,
    pub read: ReadSpec,
}

impl ChunkSpec {
    /// What the chunk reads, type by type: its own type, then the packed ones.
    pub fn reads(&self) -> impl Iterator<Item = (ResourceType, &ReadSpec)> {
        self.read
            .iter()
            .map(|r| (self.resource_type, r))
            .chain(self.packed.iter().map(|p| (p.resource_type, &p.read)))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a chunk does with what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChunkRole {
    /// Select resources and write them: per-type files, or map partitions when the export is
    /// organized by patient.
    Export,
    /// Select resources and only record which were selected (a type that is not exported but
    /// whose resources decide which Provenance is).
    Index,
    /// Record each Provenance's targets and `recorded` time (LatestProvenanceResources).
    ProvenanceIndex,
    /// Select Provenance by its association with the selected resources.
    ProvenanceSelect,
    /// Merge one partition of every map output into patient blocks.
    Reduce { partition: u32 },
    /// Write what the source reports deleted since `_since`, as transaction Bundles of
    /// `DELETE` entries, to the manifest's `deleted` files.
    Deletions,
}

/// What a source reads for one chunk, in the source's own terms: the domain stores it with
/// the chunk and hands it back to the source that planned it, never looking inside. A chunk
/// that reads several pieces of one type reads their parts one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredReadSpec")]
pub struct ReadSpec {
    pub parts: Vec<serde_json::Value>,
}

/// A read spec as stored, now or by a release before the source port took criteria
/// (`{"kind": "files", "ranges": [...]}`, the NDJSON source's byte ranges, whose parts are
/// now those ranges): a job planned before an upgrade runs on after it.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredReadSpec {
    Parts { parts: Vec<serde_json::Value> },
    Files { ranges: Vec<serde_json::Value> },
}

impl From<StoredReadSpec> for ReadSpec {
    fn from(stored: StoredReadSpec) -> Self {
        match stored {
            StoredReadSpec::Parts { parts } => ReadSpec { parts },
            StoredReadSpec::Files { ranges } => ReadSpec { parts: ranges },
        }
    }
}

impl ReadSpec {
    /// A spec of the source's own parts.
    pub fn of<T: Serialize>(parts: &[T]) -> Result<ReadSpec, serde_json::Error> {
        Ok(ReadSpec {
            parts: parts
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The parts, read back as the source that wrote them.
    pub fn parts_as<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, serde_json::Error> {
        self.parts.iter().map(|p| T::deserialize(p)).collect()
    }

    /// Appends `other`'s parts (two pieces of one type read by one chunk).
    pub fn extend(&mut self, other: ReadSpec) {
        self.parts.extend(other.parts);
    }
}

/// A source's unit of reading, as its planner cuts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePiece {
    pub resource_type: ResourceType,
    pub read: ReadSpec,
    /// Estimated bytes to read, for sizing.
    pub bytes: u64,
    /// The patients whose compartments the piece reads, when the source reads by patient: the
    /// chunk then keeps only the resources these patients own (a resource in several exported
    /// patients' compartments is read by each of their pieces and written by its owner's).
    pub owners: Option<Vec<String>>,
}

/// What a staged file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Published in the manifest's `output`.
    Output,
    /// Published in the manifest's `error`.
    Error,
    /// Map output of an export organized by patient: lines sorted by partition.
    Map,
    /// Sorted `Type/id\towner` lines of the resources a chunk selected.
    Refs,
    /// Sorted `target\trecorded\tProvenance-id` lines.
    ProvenanceIndex,
    /// Published in the manifest's `deleted`: transaction Bundles of `DELETE` entries.
    Deleted,
}

impl FileKind {
    pub fn is_published(&self) -> bool {
        matches!(self, FileKind::Output | FileKind::Error | FileKind::Deleted)
    }
}

/// A file a chunk wrote to its staging folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    pub kind: FileKind,
    /// `None` for files of an export organized by patient, which mix types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<ResourceType>,
    /// Its key in the output store (under the export's staging folder).
    pub path: String,
    pub count: u64,
    pub bytes: u64,
    /// The last patient block of this file continues in the chunk's next file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
    /// `Map` files: byte offset where each partition starts, plus the file length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_offsets: Vec<u64>,
    /// How the stored bytes are encoded; `bytes` counts them as stored.
    #[serde(default, skip_serializing_if = "Encoding::is_identity")]
    pub encoding: Encoding,
}

/// What a chunk produced, recorded with its completion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkResult {
    pub files: Vec<StagedFile>,
    pub resources: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub spec: ChunkSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ChunkResult>,
    /// The published names given to the chunk's output and error files (decided once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Vec<OutputFile>>,
    /// The files are under their published names: they may be listed in a manifest.
    #[serde(default)]
    pub renamed: bool,
}

impl ChunkRecord {
    pub fn is_done(&self) -> bool {
        self.result.is_some()
    }
}

/// A published file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub kind: FileKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<ResourceType>,
    /// Key relative to the export folder, e.g. `Patient-1.ndjson`.
    pub name: String,
    pub count: u64,
    pub bytes: u64,
    /// Name of the file the last patient block continues in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues_in: Option<String>,
    /// Key of the staged file this one was moved from (in the output store).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub staged: String,
    /// Manifest page the file is listed on (1-based).
    #[serde(default = "first_page")]
    pub page: u32,
    /// How the stored bytes are encoded (`bytes` counts them as stored); the files route
    /// decodes them for a client that does not accept the encoding.
    #[serde(default, skip_serializing_if = "Encoding::is_identity")]
    pub encoding: Encoding,
}

fn first_page() -> u32 {
    1
}

/// Applies `change` to the current job with compare-and-set, re-reading on conflict: the one
/// way every process (kick-off, cancel, the worker's steps) changes a job. `change`
/// returns `None` to leave the job alone. Returns the job as written, or `None`.
pub async fn update_job(
    jobs: &dyn crate::ports::JobStore,
    id: &JobId,
    mut change: impl FnMut(&Job) -> Option<Job>,
) -> Result<Option<Job>, crate::ports::StoreError> {
    for _ in 0..16 {
        let Some(job) = jobs.get(id).await? else {
            return Ok(None);
        };
        let Some(next) = change(&job) else {
            return Ok(None);
        };
        match jobs.update(&next, job.version).await {
            Ok(()) => return Ok(Some(next)),
            Err(crate::ports::StoreError::Conflict) => continue,
            Err(crate::ports::StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(crate::ports::StoreError::Backend(
        "too many version conflicts updating a job".into(),
    ))
}

/// A list of numbers as runs: `[0, 1, 2, 3, 7]` is `[[0, 3], 7]`. A plain list of numbers
/// (as jobs stored before runs were) reads the same.
mod runs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Run {
        One(u32),
        Span([u32; 2]),
    }

    pub fn serialize<S: Serializer>(list: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<Run> = Vec::new();
        let mut i = 0;
        while i < list.len() {
            let mut j = i;
            while j + 1 < list.len() && list[j].checked_add(1) == Some(list[j + 1]) {
                j += 1;
            }
            runs.push(if j > i {
                Run::Span([list[i], list[j]])
            } else {
                Run::One(list[i])
            });
            i = j + 1;
        }
        runs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let runs = Vec::<Run>::deserialize(d)?;
        let mut out = Vec::new();
        for r in runs {
            match r {
                Run::One(n) => out.push(n),
                Run::Span([a, b]) if a <= b => out.extend(a..=b),
                Run::Span(_) => {
                    return Err(serde::de::Error::custom("a run that ends before it starts"));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_is_stored_as_runs_and_read_either_way() {
        let plan = JobPlan {
            publishing: vec![0, 1, 2, 3, 7, 9, 10],
            ..JobPlan::default()
        };
        let json = serde_json::to_value(&plan).expect("json");
        assert_eq!(json["publishing"], serde_json::json!([[0, 3], 7, [9, 10]]));
        let back: JobPlan = serde_json::from_value(json).expect("parse");
        assert_eq!(back.publishing, plan.publishing);
        // As stored before runs.
        let mut old = serde_json::to_value(&plan).expect("json");
        old["publishing"] = serde_json::json!([0, 1, 2, 3, 7, 9, 10]);
        let old: JobPlan = serde_json::from_value(old).expect("parse");
        assert_eq!(old.publishing, plan.publishing);
        let mut bad = serde_json::to_value(&plan).expect("json");
        bad["publishing"] = serde_json::json!([[5, 2]]);
        assert!(serde_json::from_value::<JobPlan>(bad).is_err());
    }

    #[test]
    fn read_specs_stored_before_the_port_took_criteria_still_read() {
        let old = r#"{"kind":"files","ranges":[{"object":"Patient.ndjson","start":0,"end":100}]}"#;
        let spec: ReadSpec = serde_json::from_str(old).expect("old form");
        assert_eq!(
            spec.parts,
            vec![serde_json::json!({"object":"Patient.ndjson","start":0,"end":100})]
        );
        let new = serde_json::to_string(&spec).expect("json");
        assert_eq!(
            serde_json::from_str::<ReadSpec>(&new).expect("new form"),
            spec
        );
    }
    use JobState::*;

    #[test]
    fn phases() {
        let plan = JobPlan {
            phases: vec![3, 2, 1],
            ..JobPlan::default()
        };
        assert_eq!(plan.phase_completed_by(3), Some(1));
        assert_eq!(plan.phase_completed_by(5), Some(2));
        assert_eq!(
            plan.phase_completed_by(6),
            None,
            "the last phase ends in finalize"
        );
        assert_eq!(plan.phase_completed_by(4), None);
        assert_eq!(plan.phase_range(1), 3..5);
        assert_eq!(plan.phase_range(2), 5..6);
    }

    #[test]
    fn state_machine() {
        assert!(Accepted.can_become(Planning));
        assert!(Planning.can_become(Running));
        assert!(Running.can_become(Finalizing));
        assert!(Finalizing.can_become(Completed));
        assert!(Completed.can_become(Cancelled));
        assert!(Failed.can_become(Cancelled));
        for s in [Accepted, Planning, Running, Finalizing] {
            assert!(s.can_become(Cancelled) && s.can_become(Failed), "{s:?}");
            assert!(s.is_active());
        }
        assert!(!Completed.can_become(Running));
        assert!(!Running.can_become(Completed));
        assert!(!Cancelled.can_become(Completed));
        assert!(!Cancelled.can_become(Cancelled));
        assert!(!Accepted.can_become(Running));
        for s in [Completed, Failed, Cancelled] {
            assert!(!s.is_active());
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
    }
}

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

/// One unit of work: small enough for one worker invocation, deterministic so that a retry
/// redoes exactly the same work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpec {
    pub index: u32,
    pub resource_type: ResourceType,
    pub work: ChunkWork,
}

/// What a chunk reads. Sources add variants as they need them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkWork {
    /// Byte ranges of NDJSON objects; a line belongs to the range its first byte is in.
    Files { ranges: Vec<FileRange> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRange {
    /// Object key, relative to the source root.
    pub object: String,
    pub start: u64,
    /// Exclusive end; `None` reads to the end of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    #[serde(default)]
    pub gzip: bool,
}

/// Output files (`output` in the manifest) or error files (`error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Output,
    Error,
}

/// A file a chunk wrote to its staging folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    pub kind: FileKind,
    pub resource_type: ResourceType,
    /// Key relative to the export folder.
    pub path: String,
    pub count: u64,
    pub bytes: u64,
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
}

impl ChunkRecord {
    pub fn is_done(&self) -> bool {
        self.result.is_some()
    }
}

/// A published file of a completed export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub kind: FileKind,
    pub resource_type: ResourceType,
    /// Key relative to the export folder, e.g. `Patient-1.ndjson`.
    pub name: String,
    pub count: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

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

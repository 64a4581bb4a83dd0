//! `JobStore`: jobs, their chunks and their published files.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::BoxError;
use crate::job::{ChunkRecord, ChunkResult, ChunkSpec, CountGroup, Job, JobState, OutputFile};
use crate::model::JobId;
use crate::schedule::ScheduleState;
use crate::usage::Usage;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of an id that exists.
    #[error("job already exists")]
    AlreadyExists,
    /// A compare-and-set lost: the stored version is not the expected one. Not a failure: the
    /// caller re-reads and decides again. (DynamoDB: `ConditionalCheckFailed`.)
    #[error("job version conflict")]
    Conflict,
    /// The job (or chunk) does not exist.
    #[error("job not found")]
    NotFound,
    #[error("job store failed")]
    Backend(#[source] BoxError),
}

/// How long a process may answer [`JobStore::peek`] with the job it read before: a chunk
/// that starts on a job cancelled meanwhile learns of it at its next check (and removes what
/// it wrote), so the only cost is work thrown away; the gain is that a process reads the
/// job's item for its chunks' first looks once a second at most, however short they are.
pub const PEEK_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// What `complete_chunk` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkCompletion {
    /// False when the chunk was already done (a duplicate delivery): nothing changed.
    pub first: bool,
    /// Whether `done`, `total` and `state` were read off the job: true when the completion
    /// was counted on the job (a chunk without a group, the last chunk of its group) or was
    /// not the first. A first completion counted on its group only leaves the job's item
    /// alone: `done` and `total` are then 0 and `state` is `Running`, unknown.
    pub counted: bool,
    pub done: u32,
    pub total: u32,
    /// The job's state as the completion left it, so that a cancel that came in meanwhile is
    /// seen without reading the job again.
    pub state: JobState,
}

impl ChunkCompletion {
    /// Whether this completion names the chunk's files: the first one, of a job that was
    /// not cancelled.
    pub fn names_files(&self) -> bool {
        self.first && self.state != JobState::Cancelled
    }
}

/// Turns the first number reserved from each counter into the published files.
pub type NameFiles<'a> = Box<dyn Fn(&[u64]) -> Vec<OutputFile> + Send + Sync + 'a>;

/// How a chunk's published files are named: numbers reserved from per-job counters, turned
/// into names by `name`.
pub struct Naming<'a> {
    /// Each counter and how many numbers it gives.
    pub counters: Vec<(String, u32)>,
    /// The published files, given the first number reserved from each counter (in the order
    /// of `counters`).
    pub name: NameFiles<'a>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new job. `AlreadyExists` if the id is taken.
    async fn create(&self, job: &Job) -> Result<(), StoreError>;

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;

    /// The job as it was a moment ago (at most [`PEEK_REUSE`]), perhaps: where a read that
    /// may miss the latest write is cheaper, for the chunk's first look, which every chunk of
    /// an export makes (DynamoDB: an eventually consistent read, half the read units, kept
    /// for [`PEEK_REUSE`] by the process). Stores without the distinction read as
    /// [`JobStore::get`].
    async fn peek(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.get(id).await
    }

    /// The state of a job, `None` if it does not exist. Stores that can read it alone
    /// override this.
    async fn state(&self, id: &JobId) -> Result<Option<JobState>, StoreError> {
        Ok(self.get(id).await?.map(|j| j.state))
    }

    /// Whether the job is stopped (cancelled, failed or removed), read for certain: what a
    /// chunk asks after publishing (a stop's clean-up may have run before its files were in
    /// place) and, while it runs, to learn of a cancel. With the chunk's count `group`, a
    /// store may answer from the group's item, which every stop marks (see
    /// [`JobStore::mark_groups_stopped`]) before it deletes the export's files: then the
    /// chunks of a large export do not all read the job's one item. Stores without the
    /// distinction read the job's state.
    async fn stopped(&self, id: &JobId, group: Option<CountGroup>) -> Result<bool, StoreError> {
        let _ = group;
        Ok(JobState::is_stopped(self.state(id).await?))
    }

    /// Marks count groups `0..groups` of a stopped job (one moved to `Cancelled` or `Failed`)
    /// so that [`JobStore::stopped`] answers from them; called after the transition and before
    /// the export's files are deleted. Idempotent. Stores that read the job's state for
    /// `stopped` have nothing to mark.
    async fn mark_groups_stopped(&self, id: &JobId, groups: u32) -> Result<(), StoreError> {
        let _ = (id, groups);
        Ok(())
    }

    /// How often a running chunk may ask [`JobStore::stopped`]: after every batch where a read
    /// is a local query, less often where each read is a billed network round trip.
    fn state_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    /// Compare-and-set: writes `job` if the stored version is `expected_version`, else
    /// `Conflict`; `NotFound` if there is no such job. Writes every field except
    /// `chunks_done`, which only `complete_chunk` changes, so a state change never loses a
    /// concurrent chunk completion.
    async fn update(&self, job: &Job, expected_version: u64) -> Result<(), StoreError>;

    /// Records the chunks of a job; chunks that exist are left as they are (idempotent).
    async fn put_chunks(&self, id: &JobId, chunks: &[ChunkSpec]) -> Result<(), StoreError>;

    async fn chunk(&self, id: &JobId, index: u32) -> Result<Option<ChunkRecord>, StoreError>;

    /// All chunks of a job, by index.
    async fn chunks(&self, id: &JobId) -> Result<Vec<ChunkRecord>, StoreError>;

    /// Atomically marks a chunk done with its result and counts it, once: a second
    /// completion of the same chunk changes nothing and reports `first: false`. Without a
    /// `group`, it is counted on the job (`chunks_done`), which records progress
    /// (`updated_at = now`); with one, on the group's counter, and the group's last chunk
    /// counts the whole group on the job. `NotFound` if the chunk does not exist.
    async fn complete_chunk(
        &self,
        id: &JobId,
        index: u32,
        result: &ChunkResult,
        now: DateTime<Utc>,
        group: Option<CountGroup>,
    ) -> Result<ChunkCompletion, StoreError>;

    /// Reserves `n` consecutive numbers of a per-job counter (the first number ever given is
    /// 1) and returns the first; atomic, so concurrent callers get disjoint numbers.
    async fn reserve(&self, id: &JobId, counter: &str, n: u32) -> Result<u64, StoreError>;

    /// Records the published names of a chunk's files unless names are recorded already;
    /// returns the names that stand (ours, or those recorded first). `NotFound` if the chunk
    /// does not exist.
    async fn set_published(
        &self,
        id: &JobId,
        index: u32,
        files: &[OutputFile],
    ) -> Result<Vec<OutputFile>, StoreError>;

    /// Names a chunk's files: reserves the numbers, then records the names unless names are
    /// recorded already (`set_published`); returns the names that stand.
    async fn name_files(
        &self,
        id: &JobId,
        index: u32,
        naming: Naming<'_>,
    ) -> Result<Vec<OutputFile>, StoreError> {
        let mut firsts = Vec::with_capacity(naming.counters.len());
        for (counter, n) in &naming.counters {
            firsts.push(self.reserve(id, counter, *n).await?);
        }
        let names = (naming.name)(&firsts);
        self.set_published(id, index, &names).await
    }

    /// `complete_chunk`, then, when that was the chunk's first completion and the job is not
    /// cancelled, `name_files`; the names that stand come back with the completion. A store
    /// that can does both in one transaction (the default makes the calls one by one; a
    /// crash between them leaves a done chunk without names, which publishing makes good).
    #[allow(clippy::too_many_arguments)]
    async fn complete_and_name(
        &self,
        id: &JobId,
        index: u32,
        result: &ChunkResult,
        now: DateTime<Utc>,
        group: Option<CountGroup>,
        naming: Option<Naming<'_>>,
    ) -> Result<(ChunkCompletion, Option<Vec<OutputFile>>), StoreError> {
        let completion = self.complete_chunk(id, index, result, now, group).await?;
        let named = match naming {
            Some(naming) if completion.names_files() => {
                Some(self.name_files(id, index, naming).await?)
            }
            _ => None,
        };
        Ok((completion, named))
    }

    /// Records that a chunk's files are under their published names.
    async fn mark_renamed(&self, id: &JobId, index: u32) -> Result<(), StoreError>;

    /// Records a sign of life (`updated_at = now`) without a version change.
    async fn heartbeat(&self, id: &JobId, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Replaces the published file list of a job.
    async fn put_outputs(&self, id: &JobId, files: &[OutputFile]) -> Result<(), StoreError>;

    async fn outputs(&self, id: &JobId) -> Result<Vec<OutputFile>, StoreError>;

    /// Active jobs (see [`crate::job::JobState::is_active`]) with no progress since `before`.
    async fn stalled(&self, before: DateTime<Utc>) -> Result<Vec<Job>, StoreError>;

    /// Active jobs of `owner`: the kick-off's per-client limit and its reuse of an identical
    /// running export. The default filters every active job ([`JobStore::stalled`] with a
    /// bound in the far future): active jobs are few, and on DynamoDB they are the sparse
    /// `active` index.
    async fn active_of(&self, owner: &str) -> Result<Vec<Job>, StoreError> {
        let far = Utc::now() + chrono::Duration::days(36_500);
        Ok(self
            .stalled(far)
            .await?
            .into_iter()
            .filter(|j| j.owner == owner)
            .collect())
    }

    /// Jobs whose `expires_at` is before `now`.
    async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError>;

    /// Deletes a job with its chunks and outputs. Deleting a missing job is not an error.
    async fn delete(&self, id: &JobId) -> Result<(), StoreError>;

    /// Records what one handling of a message of the job used, under `key` (unique per
    /// handling; recording the same key again replaces it). Deleted with the job.
    async fn record_usage(&self, id: &JobId, key: &str, usage: &Usage) -> Result<(), StoreError>;

    /// The sum of every usage recorded for the job (empty when none was).
    async fn usage(&self, id: &JobId) -> Result<Usage, StoreError>;

    /// The stored state of schedule `name`, `None` if it never ran.
    async fn schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError>;

    /// Compare-and-set: stores `state` with version `expected + 1` if the stored version is
    /// `expected` (0: not stored yet), else `Conflict`.
    async fn put_schedule(&self, state: &ScheduleState, expected: u64) -> Result<(), StoreError>;

    /// Every stored schedule, by name.
    async fn schedules(&self) -> Result<Vec<ScheduleState>, StoreError>;
}

//! A running chunk's periodic look around: is the job still running and the chunk still
//! ours; renew the message lease; record a heartbeat.

use std::time::{Duration, Instant};

use super::{Lease, WorkError, WorkerDeps, now};
use crate::job::{ChunkSpec, CountGroup, Job};

/// How often a running chunk looks whether another attempt finished it, and at most how
/// often it renews its lease.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Watch<'a> {
    deps: &'a WorkerDeps,
    job: &'a Job,
    index: u32,
    /// The chunk's count group, whose item says whether the job was stopped.
    group: Option<CountGroup>,
    lease: &'a dyn Lease,
    /// How often the job's state is read: the store's own pace (after every batch where a
    /// read is local).
    state_every: Duration,
    last_state: Instant,
    last_check: Instant,
    last_lease: Instant,
}

impl<'a> Watch<'a> {
    pub(crate) fn new(
        deps: &'a WorkerDeps,
        job: &'a Job,
        spec: &ChunkSpec,
        lease: &'a dyn Lease,
    ) -> Self {
        Watch {
            deps,
            job,
            index: spec.index,
            group: spec.group,
            lease,
            state_every: deps.jobs.state_check_interval(),
            last_state: Instant::now(),
            last_check: Instant::now(),
            last_lease: Instant::now(),
        }
    }

    /// Called between batches. `false`: stop, the work is no longer wanted (the job was
    /// cancelled, failed or removed, or another attempt finished the chunk).
    pub(crate) async fn tick(&mut self) -> Result<bool, WorkError> {
        if self.last_state.elapsed() >= self.state_every {
            self.last_state = Instant::now();
            if self.deps.jobs.stopped(&self.job.id, self.group).await? {
                return Ok(false);
            }
        }
        if self.last_check.elapsed() < CHECK_EVERY {
            return Ok(true);
        }
        self.last_check = Instant::now();
        if self
            .deps
            .jobs
            .chunk(&self.job.id, self.index)
            .await?
            .is_some_and(|c| c.is_done())
        {
            return Ok(false);
        }
        if self.last_lease.elapsed() >= self.deps.settings.visibility_timeout / 3 {
            self.last_lease = Instant::now();
            self.lease.extend().await?;
            self.deps.jobs.heartbeat(&self.job.id, now()).await?;
        }
        Ok(true)
    }
}

//! The local worker pool: tasks that poll the work queue as Lambda's SQS event source would,
//! one that drains the dead-letter queue, and one that runs the sweep.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::settle::{Settled, log_failure, settle};
use super::{MessageLease, WorkError, WorkerDeps, handle_dead_letter, handle_message, sweep};
use crate::ports::{QueueError, WorkQueue};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub workers: usize,
    /// How often the sweep looks for stalled and expired jobs.
    pub sweep_every: Duration,
    /// Long-poll wait of one receive.
    pub receive_wait: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 4,
            sweep_every: Duration::from_secs(30),
            receive_wait: Duration::from_secs(1),
        }
    }
}

/// Starts the pool; every task ends when `shutdown` is cancelled. A message being handled at
/// shutdown is left unacknowledged and is delivered again after its visibility timeout.
pub fn spawn_pool(
    deps: WorkerDeps,
    dead_letters: Arc<dyn WorkQueue>,
    config: PoolConfig,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for n in 0..config.workers.max(1) {
        let deps = deps.clone();
        let shutdown = shutdown.clone();
        let wait = config.receive_wait;
        handles.push(tokio::spawn(async move {
            work_loop(n, deps, wait, shutdown).await;
        }));
    }
    {
        let deps = deps.clone();
        let shutdown = shutdown.clone();
        let wait = config.receive_wait;
        handles.push(tokio::spawn(async move {
            dead_letter_loop(deps, dead_letters, wait, shutdown).await;
        }));
    }
    handles.push(tokio::spawn(async move {
        // The first tick is at once: a pool that starts after a crash sweeps what the dead
        // process left (its temp files among them) before anything else.
        let mut tick = tokio::time::interval(config.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    match sweep(&deps, chrono::Utc::now()).await {
                        Ok(r) if r != Default::default() => tracing::info!(?r, "sweep"),
                        Ok(_) => {}
                        Err(e) => log_failure("sweep failed", &e),
                    }
                }
            }
        }
    }));
    handles
}

async fn work_loop(n: usize, deps: WorkerDeps, wait: Duration, shutdown: CancellationToken) {
    tracing::debug!(worker = n, "worker started");
    loop {
        let deliveries = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = deps.queue.receive(1, wait) => r,
        };
        let deliveries = match deliveries {
            Ok(d) => d,
            Err(e) => {
                log_failure("receive failed", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for d in deliveries {
            let lease = MessageLease {
                queue: deps.queue.clone(),
                receipt: d.receipt.clone(),
                visibility: deps.settings.visibility_timeout,
            };
            // A panic is a bug, but it must cost one message (retried, then dead-lettered and
            // the job failed), not this worker: the pool would shrink with every one.
            let handled = std::panic::AssertUnwindSafe(handle_message(&deps, &d.body, &lease))
                .catch_unwind()
                .map(|r| {
                    r.unwrap_or_else(|panic| {
                        Err(WorkError::Retryable(
                            format!("the worker panicked: {}", panic_message(panic.as_ref()))
                                .into(),
                        ))
                    })
                });
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = handled => r,
            };
            if settle(&deps, outcome, &d.receipt, d.receive_count).await == Settled::Done {
                match deps.queue.delete(&d.receipt).await {
                    Ok(()) | Err(QueueError::InvalidReceipt) => {}
                    Err(e) => log_failure("ack failed", &e),
                }
            }
        }
    }
    tracing::debug!(worker = n, "worker stopped");
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

async fn dead_letter_loop(
    deps: WorkerDeps,
    dead_letters: Arc<dyn WorkQueue>,
    wait: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let deliveries = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = dead_letters.receive(10, wait) => r,
        };
        let deliveries = match deliveries {
            Ok(d) => d,
            Err(e) => {
                log_failure("dead-letter receive failed", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for d in deliveries {
            match handle_dead_letter(&deps, &d.body).await {
                Ok(()) => {
                    if let Err(e) = dead_letters.delete(&d.receipt).await {
                        log_failure("dead-letter ack failed", &e);
                    }
                }
                Err(e) => log_failure("dead letter not handled; will retry", &e),
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod pool_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use serde_json::Value;

    use super::*;
    use crate::adapters::local_fs::LocalFsStore;
    use crate::adapters::sqlite::{SqliteDb, SqliteJobStore, SqliteQueue};
    use crate::job::{JobState, ReadSpec};
    use crate::model::{LogicalId, ResourceType};
    use crate::ports::{
        JobStore, ReadCriteria, RecordReader, ResourceSource, SourceError, SourcePlan,
    };
    use crate::settings::Settings;
    use crate::worker::WorkMessage;

    /// A source with a bug: it panics whenever it is asked anything.
    struct PanickingSource(Arc<AtomicUsize>);

    impl PanickingSource {
        fn boom(&self) -> ! {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("source bug");
        }
    }

    #[async_trait]
    impl ResourceSource for PanickingSource {
        async fn plan(&self, _: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
            self.boom()
        }
        async fn types(&self) -> Result<Vec<ResourceType>, SourceError> {
            self.boom()
        }
        async fn open(&self, _: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
            self.boom()
        }
        async fn read(&self, _: ResourceType, _: &LogicalId) -> Result<Option<Value>, SourceError> {
            self.boom()
        }
        async fn existing(
            &self,
            _: ResourceType,
            _: &[LogicalId],
        ) -> Result<std::collections::HashSet<LogicalId>, SourceError> {
            self.boom()
        }
        fn describe(&self) -> String {
            "panicking".into()
        }
    }

    #[tokio::test]
    async fn a_panicking_message_is_retried_by_a_worker_that_survives_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = SqliteDb::in_memory().expect("db");
        let jobs = Arc::new(SqliteJobStore::new(db.clone()));
        let queue: Arc<dyn WorkQueue> = Arc::new(SqliteQueue::new(
            db.clone(),
            "work",
            Duration::from_secs(30),
        ));
        let dead: Arc<dyn WorkQueue> =
            Arc::new(SqliteQueue::new(db, "dead", Duration::from_secs(30)));
        let panics = Arc::new(AtomicUsize::new(0));
        let deps = WorkerDeps {
            jobs: jobs.clone(),
            queue: queue.clone(),
            output: Arc::new(LocalFsStore::new(dir.path()).expect("store")),
            source: Arc::new(PanickingSource(panics.clone())),
            settings: Arc::new(Settings::new("http://localhost/fhir")),
            events: Arc::new(crate::ports::NoEvents),
        };
        let job = crate::testkit::sample_job(JobState::Accepted, chrono::Utc::now());
        jobs.create(&job).await.expect("create");
        queue
            .send(
                job.id.as_str(),
                vec![
                    WorkMessage::Plan {
                        job: job.id.clone(),
                    }
                    .encode(),
                ],
            )
            .await
            .expect("send");
        let shutdown = CancellationToken::new();
        let config = PoolConfig {
            workers: 1,
            receive_wait: Duration::from_millis(100),
            ..PoolConfig::default()
        };
        let handles = spawn_pool(deps, dead, config, shutdown.clone());
        // The first attempt panics; the one worker receives the message again after the
        // retry delay (1 s) and panics again: it outlived the first panic.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while panics.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the message was not retried; panics: {}",
                panics.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!handles[0].is_finished(), "the worker task ended");
        shutdown.cancel();
        for h in handles {
            h.await.expect("task ended cleanly");
        }
    }
}

//! The local worker pool: tasks that poll the work queue as Lambda's SQS event source would,
//! one that drains the dead-letter queue, and one that runs the sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// How soon a message that failed with a retryable error is tried again.
fn retry_delay(receive_count: u32, visibility: Duration) -> Duration {
    let secs = 1u64 << receive_count.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(visibility)
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
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = handle_message(&deps, &d.body, &lease) => r,
            };
            match outcome {
                Ok(()) | Err(WorkError::Permanent(_)) => {
                    match deps.queue.delete(&d.receipt).await {
                        Ok(()) | Err(QueueError::InvalidReceipt) => {}
                        Err(e) => log_failure("ack failed", &e),
                    }
                }
                Err(e) => {
                    log_failure("message failed; it will be retried", &e);
                    let delay = retry_delay(d.receive_count, deps.settings.visibility_timeout);
                    if let Err(e) = deps.queue.extend(&d.receipt, delay).await {
                        log_failure("could not schedule the retry", &e);
                    }
                }
            }
        }
    }
    tracing::debug!(worker = n, "worker stopped");
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

/// Logs an error once with its whole cause chain.
pub fn log_failure(what: &str, e: &(dyn std::error::Error + 'static)) {
    tracing::error!(error = %crate::error_chain(e), "{what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_backs_off_and_is_capped() {
        let vt = Duration::from_secs(20);
        assert_eq!(retry_delay(1, vt), Duration::from_secs(1));
        assert_eq!(retry_delay(3, vt), Duration::from_secs(4));
        assert_eq!(retry_delay(10, vt), vt);
    }
}

//! What becomes of a work message once it has been handled, the same on every host (the
//! local pool acknowledges it itself; on Lambda the SQS event source does, for the records the
//! handler does not report as failed).

use std::time::Duration;

use super::{WorkError, WorkerDeps};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done with: a success, or a permanent failure already recorded on its job.
    Done,
    /// To be delivered again, after a backoff that grows with its deliveries.
    Retry,
}

/// Settles a handled message. A retryable failure shortens the message's invisibility to the
/// backoff, so that it comes back in seconds rather than after the queue's long visibility
/// timeout; past the queue's receive limit it goes to the dead letters and fails its job.
pub async fn settle(
    deps: &WorkerDeps,
    outcome: Result<(), WorkError>,
    receipt: &str,
    receive_count: u32,
) -> Settled {
    match outcome {
        Ok(()) | Err(WorkError::Permanent(_)) => Settled::Done,
        Err(e) => {
            log_failure("message failed; it will be retried", &e);
            let delay = retry_delay(receive_count, deps.settings.visibility_timeout);
            if let Err(e) = deps.queue.extend(receipt, delay).await {
                log_failure("could not schedule the retry", &e);
            }
            Settled::Retry
        }
    }
}

/// How soon a message that failed with a retryable error is tried again.
fn retry_delay(receive_count: u32, visibility: Duration) -> Duration {
    let secs = 1u64 << receive_count.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(visibility)
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

//! `WorkQueue`: at-least-once delivery of work messages, SQS semantics.
//!
//! A received message is invisible for the visibility timeout; if it is not deleted by then it
//! is delivered again with a higher receive count. An adapter configured with a dead-letter
//! queue moves a message there once its receive count passes the limit. Consumers must be
//! idempotent.
//!
//! Every message belongs to a group (the export it is for). Receives take turns between the
//! groups that have visible messages, the group served longest ago first, so that a small
//! export's few messages do not wait behind all of a large one's: one export cannot hold
//! every worker. (SQS: the `MessageGroupId` of a standard queue, which SQS fair queues use
//! the same way.)

use std::time::Duration;

use async_trait::async_trait;

use super::BoxError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    /// Handle for `delete`/`extend`; changes with every delivery.
    pub receipt: String,
    pub body: String,
    /// 1 on first delivery.
    pub receive_count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt is unknown or stale (the message was redelivered or deleted).
    #[error("stale or unknown receipt")]
    InvalidReceipt,
    #[error("work queue failed")]
    Backend(#[source] BoxError),
}

#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Sends messages of one group; adapters batch as their backend allows.
    async fn send(&self, group: &str, bodies: Vec<String>) -> Result<(), QueueError>;

    /// Receives up to `max` messages, waiting up to `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Acknowledges a message: it is not delivered again.
    async fn delete(&self, receipt: &str) -> Result<(), QueueError>;

    /// Keeps a message invisible for `visibility` from now (a worker's heartbeat).
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError>;
}

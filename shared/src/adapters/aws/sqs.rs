//! `WorkQueue` on SQS. The redrive policy to the dead-letter queue lives on the queue itself
//! (the template, or [`create_queue_pair`] in tests); the dead-letter queue is another
//! `SqsQueue`.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::ports::{Delivery, QueueError, WorkQueue};

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> QueueError {
    QueueError::Backend(Box::new(e))
}

/// Error codes SQS answers for a receipt handle that no longer holds the message.
fn stale_receipt(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ReceiptHandleIsInvalid"
                | "InvalidParameterValue"
                | "MessageNotInflight"
                | "AWS.SimpleQueueService.MessageNotInflight"
        )
    )
}

/// A client whose requests are counted in the usage record.
fn client(config: &aws_config::SdkConfig) -> Client {
    Client::from_conf(
        aws_sdk_sqs::config::Builder::from(config)
            .interceptor(crate::usage::scope::CountRequests::new(crate::usage::SQS))
            .build(),
    )
}

impl SqsQueue {
    pub fn new(config: &aws_config::SdkConfig, url: &str) -> Self {
        SqsQueue {
            client: client(config),
            url: url.to_owned(),
        }
    }

    /// The queue named `name` (its URL is looked up).
    pub async fn named(config: &aws_config::SdkConfig, name: &str) -> Result<Self, QueueError> {
        let client = client(config);
        let url = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(backend)?
            .queue_url
            .ok_or_else(|| QueueError::Backend("GetQueueUrl returned no URL".into()))?;
        Ok(SqsQueue { client, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Messages in the queue: visible, in flight and delayed (SQS's approximate counts, which
    /// lag by up to a minute).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(backend)?
            .attributes
            .unwrap_or_default();
        Ok(attributes
            .values()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum())
    }
}

/// Creates (or finds) a work queue and its dead-letter queue, with a redrive after
/// `max_receives` receives, as the template does. Returns `(work, dead)`.
pub async fn create_queue_pair(
    config: &aws_config::SdkConfig,
    name: &str,
    visibility: Duration,
    max_receives: u32,
) -> Result<(SqsQueue, SqsQueue), QueueError> {
    let client = client(config);
    let dead_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .map_err(backend)?
        .queue_url
        .ok_or_else(|| QueueError::Backend("CreateQueue returned no URL".into()))?;
    let dead_arn = client
        .get_queue_attributes()
        .queue_url(&dead_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(backend)?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| QueueError::Backend("dead-letter queue has no ARN".into()))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dead_arn,
        "maxReceiveCount": max_receives.to_string(),
    })
    .to_string();
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.as_secs().to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .map_err(backend)?
        .queue_url
        .ok_or_else(|| QueueError::Backend("CreateQueue returned no URL".into()))?;
    Ok((
        SqsQueue {
            client: client.clone(),
            url,
        },
        SqsQueue {
            client,
            url: dead_url,
        },
    ))
}

#[async_trait]
impl WorkQueue for SqsQueue {
    /// The group is the message group id: on a standard queue, SQS fair queues then keep one
    /// export's backlog from delaying the others' messages.
    async fn send(&self, group: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        for batch in bodies.chunks(10) {
            let mut entries = Vec::with_capacity(batch.len());
            for (i, body) in batch.iter().enumerate() {
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_group_id(group)
                        .build()
                        .map_err(backend)?,
                );
            }
            let mut pending = entries;
            for attempt in 0..4u32 {
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(pending.clone()))
                    .send()
                    .await
                    .map_err(backend)?;
                let failed: Vec<String> = out.failed.iter().map(|f| f.id.clone()).collect();
                if failed.is_empty() {
                    break;
                }
                if attempt == 3 {
                    return Err(QueueError::Backend(
                        format!("SQS refused {} messages of a batch", failed.len()).into(),
                    ));
                }
                pending.retain(|e| failed.contains(&e.id));
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some(Delivery {
                    message_id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count: count,
                })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        match self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if stale_receipt(e.code()) => Err(QueueError::InvalidReceipt),
            Err(e) => Err(backend(e)),
        }
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(i32::try_from(visibility.as_secs().min(43_200)).unwrap_or(43_200))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if stale_receipt(e.code()) => Err(QueueError::InvalidReceipt),
            Err(e) => Err(backend(e)),
        }
    }
}

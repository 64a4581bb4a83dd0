//! The worker function: SQS messages from the work queue (plan, chunk, finalize, notify: the
//! export's end announced on EventBridge), scheduled exports' ticks (EventBridge Scheduler),
//! dead letters
//! from the dead-letter queue (their jobs are failed), and the EventBridge schedule (the sweep
//! for stalled and expired exports).
//!
//! SQS batches answer with partial failures (`batchItemFailures`): a message that failed in a
//! way a retry can fix is reported, so that only it is delivered again — after a short
//! backoff, not the queue's long visibility timeout; a message that failed permanently has
//! already failed its job and is dropped.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;
use shared::adapters::aws::eventbridge::EventBridgeSink;
use shared::adapters::aws::sqs::SqsQueue;
use shared::config::Env;
use shared::http::KickoffState;
use shared::ports::{EventSink, NoEvents};
use shared::schedule::{ScheduleDef, TickOutcome, tick};
use shared::worker::{
    MessageLease, Settled, WorkerDeps, handle_dead_letter, handle_message, settle, sweep,
};

pub use fn_common::Error;

/// Where the end of each export is announced: the EventBridge bus `FHIR_EXPORT_EVENT_BUS`
/// (template `EventBusName`), or nowhere.
pub fn events(
    env: &Env<impl Fn(&str) -> Option<String>>,
    aws: &aws_config::SdkConfig,
) -> Arc<dyn EventSink> {
    match env.get("FHIR_EXPORT_EVENT_BUS").filter(|b| !b.is_empty()) {
        Some(bus) => Arc::new(EventBridgeSink::new(aws, &bus)),
        None => Arc::new(NoEvents),
    }
}

/// The key of a scheduled export's definition in an EventBridge Scheduler event.
pub const SCHEDULE_KEY: &str = "fhir-export-schedule";

pub struct Worker {
    pub deps: WorkerDeps,
    /// Records from this queue are dead letters.
    pub dead_letter_arn: Option<String>,
    /// The token issuer whose clients own scheduled runs (`FHIR_EXPORT_AUTH_ISSUER`).
    pub issuer: Option<String>,
}

impl Worker {
    pub async fn from_env() -> Result<Worker, Error> {
        let env = Env::process();
        let config = fn_common::FunctionConfig::from(&env)?;
        let aws = shared::adapters::aws::sdk_config().await;
        let deps = WorkerDeps {
            jobs: fn_common::job_store(&env, &aws)?,
            queue: Arc::new(SqsQueue::new(&aws, &env.require("FHIR_EXPORT_QUEUE_URL")?)),
            output: fn_common::store(&env, "FHIR_EXPORT_OUTPUT").await?,
            source: fn_common::source(&env).await?,
            settings: Arc::new(config.settings),
            events: events(&env, &aws),
        };
        Ok(Worker {
            deps,
            dead_letter_arn: env.get("FHIR_EXPORT_DEAD_LETTER_QUEUE_ARN"),
            issuer: env.get("FHIR_EXPORT_AUTH_ISSUER").filter(|i| !i.is_empty()),
        })
    }

    /// Handles one Lambda event: an SQS batch, or a scheduled event.
    pub async fn handle(&self, event: Value) -> Result<Value, Error> {
        if event.get("Records").is_some() {
            let batch: SqsEvent = serde_json::from_value(event)?;
            let response = self.handle_sqs(batch).await;
            return Ok(serde_json::to_value(response)?);
        }
        if event.get("source").and_then(Value::as_str) == Some("aws.events") {
            let report = sweep(&self.deps, chrono::Utc::now())
                .await
                .map_err(|e| Box::new(e) as Error)?;
            tracing::info!(
                restarted = report.restarted,
                failed = report.failed,
                expired = report.expired,
                "sweep"
            );
            return Ok(serde_json::json!({
                "restarted": report.restarted,
                "failed": report.failed,
                "expired": report.expired,
            }));
        }
        if let Some(def) = event.get(SCHEDULE_KEY) {
            return self.tick(def.clone()).await;
        }
        Err(
            "the worker handles SQS batches, the sweep's schedule and scheduled exports only"
                .into(),
        )
    }

    /// One tick of a scheduled export, as EventBridge Scheduler invokes it (its target's input
    /// is `{"fhir-export-schedule": <definition>}`).
    pub async fn tick(&self, def: Value) -> Result<Value, Error> {
        let def: ScheduleDef = serde_json::from_value(def)?;
        let caller = def.caller(self.issuer.as_deref());
        let kickoff = KickoffState::of_worker(&self.deps);
        let outcome = tick(&kickoff, self.deps.events.as_ref(), &def, &caller)
            .await
            .map_err(|e| Box::new(e) as Error)?;
        Ok(match outcome {
            TickOutcome::Started { job, since } => serde_json::json!({
                "schedule": def.name, "started": job, "since": since,
            }),
            TickOutcome::StillRunning { job } => serde_json::json!({
                "schedule": def.name, "still_running": job,
            }),
        })
    }

    pub async fn handle_sqs(&self, batch: SqsEvent) -> SqsBatchResponse {
        let outcomes =
            futures::future::join_all(batch.records.iter().map(|r| self.handle_record(r))).await;
        let mut response = SqsBatchResponse::default();
        for (record, ok) in batch.records.iter().zip(outcomes) {
            if !ok && let Some(id) = &record.message_id {
                response.add_failure(id.clone());
            }
        }
        response
    }

    /// `true` when the message is done with (success, or a permanent failure already
    /// recorded on its job).
    async fn handle_record(&self, record: &SqsMessage) -> bool {
        let body = record.body.as_deref().unwrap_or("");
        let from_dead_letters = self
            .dead_letter_arn
            .as_deref()
            .is_some_and(|arn| record.event_source_arn.as_deref() == Some(arn));
        if from_dead_letters {
            return match handle_dead_letter(&self.deps, body).await {
                Ok(()) => true,
                Err(e) => {
                    shared::worker::log_failure("dead letter not handled; will retry", &e);
                    false
                }
            };
        }
        let Some(receipt) = record.receipt_handle.clone() else {
            tracing::warn!(message_id = ?record.message_id, "SQS record without a receipt handle");
            return false;
        };
        let lease = MessageLease {
            queue: self.deps.queue.clone(),
            receipt: receipt.clone(),
            visibility: self.deps.settings.visibility_timeout,
        };
        let receives: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let outcome = handle_message(&self.deps, body, &lease).await;
        settle(&self.deps, outcome, &receipt, receives).await == Settled::Done
    }
}

//! The worker function: SQS messages from the work queue (plan, chunk, finalize, notify: the
//! export's end announced on EventBridge), scheduled exports' ticks (EventBridge Scheduler),
//! and the EventBridge schedule: the sweep, which drains the dead-letter queue (their jobs are
//! failed), restarts stalled exports, deletes expired ones and, when nothing is left to do,
//! pauses the work queue's event source and its own schedule (`adapters::aws::idle`).
//!
//! SQS batches answer with partial failures (`batchItemFailures`): a message that failed in a
//! way a retry can fix is reported, so that only it is delivered again — after a short
//! backoff, not the queue's long visibility timeout; a message that failed permanently has
//! already failed its job and is dropped.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;
use shared::adapters::aws::eventbridge::EventBridgeSink;
use shared::adapters::aws::idle::{IdleSwitch, WakingQueue};
use shared::adapters::aws::sqs::SqsQueue;
use shared::config::Env;
use shared::http::KickoffState;
use shared::ports::{EventSink, NoEvents, WorkQueue};
use shared::schedule::{ScheduleDef, TickOutcome, tick};
use shared::worker::messages::WorkMessage;
use shared::worker::{
    MessageLease, Settled, WorkerDeps, handle_dead_letter, handle_message, log_failure, settle,
    sweep,
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

/// Batches of dead letters one sweep handles at most (10 to a batch); the rest wait for the
/// next sweep.
const DEAD_LETTER_BATCHES: usize = 50;

pub struct Worker {
    pub deps: WorkerDeps,
    /// The dead-letter queue (`FHIR_EXPORT_DEAD_LETTER_QUEUE_URL`), drained by the sweep.
    pub dead_letters: Option<SqsQueue>,
    /// The idle pause (`FHIR_EXPORT_WORK_QUEUE_ARN`, template `PauseWhenIdle`).
    pub idle: Option<Arc<IdleSwitch>>,
    /// The token issuer whose clients own scheduled runs (`FHIR_EXPORT_AUTH_ISSUER`).
    pub issuer: Option<String>,
}

impl Worker {
    pub async fn from_env() -> Result<Worker, Error> {
        let env = Env::process();
        let config = fn_common::FunctionConfig::from(&env)?;
        let aws = shared::adapters::aws::sdk_config().await;
        let work = SqsQueue::new(&aws, &env.require("FHIR_EXPORT_QUEUE_URL")?);
        let dead_letters = env
            .get("FHIR_EXPORT_DEAD_LETTER_QUEUE_URL")
            .map(|url| SqsQueue::new(&aws, &url));
        let idle = fn_common::idle_switch(&env, &aws)?.map(|switch| {
            let switch = switch.watching(
                [Some(work.clone()), dead_letters.clone()]
                    .into_iter()
                    .flatten()
                    .collect(),
            );
            Arc::new(match env.get("FHIR_EXPORT_SWEEP_RULE") {
                Some(rule) => switch.with_sweep_rule(&rule),
                None => switch,
            })
        });
        let queue: Arc<dyn WorkQueue> = match &idle {
            Some(switch) => Arc::new(WakingQueue::marking(Arc::new(work), switch.marks())),
            None => Arc::new(work),
        };
        let deps = WorkerDeps {
            jobs: fn_common::job_store(&env, &aws)?,
            queue,
            output: fn_common::store(&env, "FHIR_EXPORT_OUTPUT").await?,
            source: fn_common::source(&env).await?,
            settings: Arc::new(config.settings),
            events: events(&env, &aws),
        };
        Ok(Worker {
            deps,
            dead_letters,
            idle,
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
            return self.sweep().await;
        }
        if let Some(def) = event.get(SCHEDULE_KEY) {
            return self.tick(def.clone()).await;
        }
        Err(
            "the worker handles SQS batches, the sweep's schedule and scheduled exports only"
                .into(),
        )
    }

    /// The sweep's schedule: dead letters first (they fail their jobs, which then need no
    /// restart), then stalled and expired exports, then the idle pause, which sees what is
    /// left.
    pub async fn sweep(&self) -> Result<Value, Error> {
        // A dead-letter queue that cannot be read must not stop the rest of the sweep.
        let dead_letters = match self.drain_dead_letters(DEAD_LETTER_BATCHES).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(error = %e, "dead letters not drained; the next sweep tries again");
                None
            }
        };
        let report = sweep(&self.deps, chrono::Utc::now())
            .await
            .map_err(|e| Box::new(e) as Error)?;
        let idle = match &self.idle {
            Some(switch) => match switch.pause_if_idle(chrono::Utc::now()).await {
                Ok(state) => Some(state.as_str()),
                Err(e) => {
                    log_failure("idle pause not decided", &e);
                    None
                }
            },
            None => None,
        };
        tracing::info!(
            dead_letters,
            restarted = report.restarted,
            failed = report.failed,
            expired = report.expired,
            idle,
            "sweep"
        );
        Ok(serde_json::json!({
            "dead_letters": dead_letters,
            "restarted": report.restarted,
            "failed": report.failed,
            "expired": report.expired,
            "idle": idle,
        }))
    }

    /// Handles what waits in the dead-letter queue, up to `batches` batches of 10: each fails
    /// its job, with the reason. Returns how many were handled. A dead letter that could not
    /// be handled stays for the next sweep.
    pub async fn drain_dead_letters(&self, batches: usize) -> Result<usize, Error> {
        let Some(dead) = &self.dead_letters else {
            return Ok(0);
        };
        // The count first: a long poll of an empty queue would bill the sweep its wait.
        if dead.depth().await? == 0 {
            return Ok(0);
        }
        let mut handled = 0;
        for _ in 0..batches {
            let batch = dead.receive(10, Duration::from_secs(1)).await?;
            if batch.is_empty() {
                break;
            }
            for letter in batch {
                match handle_dead_letter(&self.deps, &letter.body).await {
                    Ok(()) => {
                        dead.delete(&letter.receipt).await?;
                        handled += 1;
                    }
                    Err(e) => log_failure("dead letter not handled; will retry", &e),
                }
            }
        }
        Ok(handled)
    }

    /// One tick of a scheduled export, as EventBridge Scheduler invokes it (its target's input
    /// is `{"fhir-export-schedule": <definition>}`).
    pub async fn tick(&self, def: Value) -> Result<Value, Error> {
        let def: ScheduleDef = serde_json::from_value(def)?;
        let caller = def.caller(self.issuer.as_deref());
        let mut kickoff = KickoffState::of_worker(&self.deps);
        // A new export: the work queue's event source may be paused.
        if let Some(switch) = &self.idle {
            kickoff.queue = Arc::new(WakingQueue::resuming(kickoff.queue.clone(), switch.clone()));
        }
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
        // An export starts: the sweep must run while it does (the idle pause may have
        // stopped it). Without it the export still runs, so a failure is only logged.
        if let Some(switch) = &self.idle
            && matches!(WorkMessage::decode(body), Ok(WorkMessage::Plan { .. }))
            && let Err(e) = switch.wake_sweep().await
        {
            log_failure("the sweep's schedule could not be resumed", &e);
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

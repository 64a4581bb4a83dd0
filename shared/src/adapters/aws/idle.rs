//! The idle pause: an idle deployment makes no requests.
//!
//! Lambda's SQS event source long-polls its queue all the time, about 650,000 receives a month
//! for one mapping, whether or not anything is queued; the sweep's schedule adds 8,640
//! invocations. So while no export needs them, the sweep pauses both: it disables the work
//! queue's event source mapping once no job is active, both queues are empty and nothing was
//! queued for the quiet period, and it disables its own schedule rule once no export is kept
//! either (nothing left to expire).
//!
//! What wakes them: whoever queues new work (the kick-off, a scheduled run) marks the activity
//! item *before* it enables the mapping and queues; the worker enables the sweep's rule when it
//! plans an export. The sweep re-reads the mark *after* it paused, and resumes both if the
//! mark moved, so a kick-off racing the sweep always ends with the mapping on: either the
//! sweep saw its mark, or the kick-off's enable came after the sweep's disable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use super::control::{Call, ControlError, ControlPlane};
use super::dynamodb::{Activity, DynamoJobStore};
use super::sqs::SqsQueue;
use crate::ports::{Delivery, QueueError, StoreError, WorkQueue};

/// A producer that resumed this long ago does not resume again for its next message: a burst
/// of kick-offs costs one mark and one look at the mapping. Far below the quiet period, so the
/// sweep never pauses under a producer that skipped its mark.
pub const RESUME_REUSE: Duration = Duration::from_secs(60);
/// Attempts at changing the mapping while Lambda is still applying an earlier change.
const MAPPING_ATTEMPTS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error("the work queue's event source mapping could not be read or changed")]
    Mapping(#[source] ControlError),
    #[error("the work queue's event source mapping stayed busy with an earlier change")]
    Busy,
    #[error("no event source mapping from queue {queue} to function {function}")]
    NoMapping { function: String, queue: String },
    #[error("the sweep's schedule rule {rule} could not be changed")]
    Rule {
        rule: String,
        #[source]
        source: ControlError,
    },
    #[error("the activity mark could not be read or written")]
    Store(#[from] StoreError),
    #[error("the queues' depth could not be read")]
    Queue(#[from] QueueError),
}

/// What the sweep found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    /// Work exists: the mapping (and rule) are on.
    Busy,
    /// Nothing to do, but work was queued within the quiet period: left as it is.
    Quieting,
    /// Paused, and found something queued meanwhile: resumed.
    Resumed,
    /// The mapping is paused; the sweep keeps running (exports are kept until they expire).
    MappingPaused,
    /// The mapping and the sweep's rule are paused: the deployment makes no requests.
    Paused,
}

impl IdleState {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleState::Busy => "busy",
            IdleState::Quieting => "quieting",
            IdleState::Resumed => "resumed",
            IdleState::MappingPaused => "mapping paused",
            IdleState::Paused => "paused",
        }
    }
}

/// The mark that work was queued (`DynamoJobStore::mark_activity`), made at most once a
/// [`RESUME_REUSE`] by one process.
pub struct ActivityMark {
    table: DynamoJobStore,
    last: std::sync::Mutex<Option<Instant>>,
}

impl ActivityMark {
    pub fn new(table: DynamoJobStore) -> Self {
        ActivityMark {
            table,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Before queueing more work on an export that is already running: the mapping is on,
    /// and the mark keeps the sweep from pausing under the new messages.
    pub async fn mark(&self) -> Result<(), IdleError> {
        if recently(&self.last) {
            return Ok(());
        }
        self.table.mark_activity(Utc::now()).await?;
        remember(&self.last);
        Ok(())
    }
}

/// The work queue's event source mapping (found by function and queue), the activity mark,
/// and, for the worker, the sweep's schedule rule and the queues whose depth says "busy".
pub struct IdleSwitch {
    control: ControlPlane,
    table: DynamoJobStore,
    function: String,
    queue_arn: String,
    quiet: Duration,
    mapping: tokio::sync::OnceCell<String>,
    resumed: std::sync::Mutex<Option<Instant>>,
    marks: Arc<ActivityMark>,
    queues: Vec<SqsQueue>,
    /// The sweep's schedule rule, paused when no export is kept.
    rule: Option<String>,
}

fn recently(at: &std::sync::Mutex<Option<Instant>>) -> bool {
    at.lock()
        .ok()
        .and_then(|at| *at)
        .is_some_and(|at| at.elapsed() < RESUME_REUSE)
}

fn remember(at: &std::sync::Mutex<Option<Instant>>) {
    if let Ok(mut at) = at.lock() {
        *at = Some(Instant::now());
    }
}

impl IdleSwitch {
    /// The mapping from `queue_arn` to `function`; `quiet` is how long nothing may have been
    /// queued before the sweep pauses. Control-plane calls are free, so they are not counted
    /// in the usage record.
    pub fn new(
        config: &aws_config::SdkConfig,
        table: DynamoJobStore,
        function: &str,
        queue_arn: &str,
        quiet: Duration,
    ) -> Self {
        let marks = Arc::new(ActivityMark::new(table.clone()));
        IdleSwitch {
            control: ControlPlane::new(config),
            table,
            function: function.to_owned(),
            queue_arn: queue_arn.to_owned(),
            quiet,
            mapping: tokio::sync::OnceCell::new(),
            resumed: std::sync::Mutex::new(None),
            marks,
            queues: Vec::new(),
            rule: None,
        }
    }

    /// Queues that must be empty before the sweep pauses (the work queue, its dead letters).
    pub fn watching(mut self, queues: Vec<SqsQueue>) -> Self {
        self.queues = queues;
        self
    }

    /// The sweep's schedule rule (on the default bus), paused when no export is kept.
    pub fn with_sweep_rule(mut self, rule: &str) -> Self {
        self.rule = Some(rule.to_owned());
        self
    }

    /// Before queueing new work: marks it, then makes sure the mapping is on.
    pub async fn resume(&self) -> Result<(), IdleError> {
        if recently(&self.resumed) {
            return Ok(());
        }
        // The same mark as the worker's own messages: one this process made within the last
        // minute is well inside the quiet period, so the sweep cannot pause under it.
        self.marks.mark().await?;
        self.set_mapping(true).await?;
        remember(&self.resumed);
        Ok(())
    }

    /// Its mark alone, for the worker's own messages.
    pub fn marks(&self) -> Arc<ActivityMark> {
        self.marks.clone()
    }

    /// When an export is planned: the sweep must run while it does (stalls, dead letters,
    /// expiry).
    pub async fn wake_sweep(&self) -> Result<(), IdleError> {
        self.set_rule(true).await
    }

    /// The sweep's decision (see the module's documentation).
    pub async fn pause_if_idle(&self, now: DateTime<Utc>) -> Result<IdleState, IdleError> {
        if self.busy().await? {
            self.set_mapping(true).await?;
            self.set_rule(true).await?;
            return Ok(IdleState::Busy);
        }
        let mark = self.table.last_activity().await?;
        if mark.as_ref().is_some_and(|m| self.within_quiet(m, now)) {
            return Ok(IdleState::Quieting);
        }
        self.set_mapping(false).await?;
        let rule_paused = self.rule.is_some() && !self.table.any_job().await?;
        if rule_paused {
            self.set_rule(false).await?;
        }
        if self.table.last_activity().await? != mark {
            tracing::info!("work queued while pausing; resumed");
            self.set_mapping(true).await?;
            self.set_rule(true).await?;
            return Ok(IdleState::Resumed);
        }
        Ok(if rule_paused {
            IdleState::Paused
        } else {
            IdleState::MappingPaused
        })
    }

    fn within_quiet(&self, mark: &Activity, now: DateTime<Utc>) -> bool {
        let quiet = chrono::Duration::from_std(self.quiet).unwrap_or(chrono::Duration::MAX);
        now.signed_duration_since(mark.at) < quiet
    }

    async fn busy(&self) -> Result<bool, IdleError> {
        if self.table.any_active().await? {
            return Ok(true);
        }
        for q in &self.queues {
            if q.depth().await? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn mapping_id(&self) -> Result<&str, IdleError> {
        self.mapping
            .get_or_try_init(|| async {
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("FunctionName", &self.function)
                    .append_pair("EventSourceArn", &self.queue_arn)
                    .finish();
                let out = self
                    .lambda(
                        "ListEventSourceMappings",
                        Method::GET,
                        &format!("?{query}"),
                        None,
                    )
                    .await?;
                out["EventSourceMappings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|m| m["UUID"].as_str().map(str::to_owned))
                    .ok_or_else(|| IdleError::NoMapping {
                        function: self.function.clone(),
                        queue: self.queue_arn.clone(),
                    })
            })
            .await
            .map(String::as_str)
    }

    /// A call to Lambda's event source mappings API (`path` after `event-source-mappings/`).
    async fn lambda(
        &self,
        operation: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, IdleError> {
        self.control
            .call(Call {
                service: "lambda",
                operation,
                method,
                path: &format!("/2015-03-31/event-source-mappings/{path}"),
                target: None,
                body,
            })
            .await
            .map_err(IdleError::Mapping)
    }

    async fn mapping_state(&self, uuid: &str) -> Result<Option<String>, IdleError> {
        let out = self
            .lambda("GetEventSourceMapping", Method::GET, uuid, None)
            .await?;
        Ok(out["State"].as_str().map(str::to_owned))
    }

    /// Turns the mapping on or off; while Lambda still applies an earlier change it refuses
    /// another (`ResourceInUseException`), so that is waited out.
    async fn set_mapping(&self, enabled: bool) -> Result<(), IdleError> {
        let uuid = self.mapping_id().await?;
        let wanted: &[&str] = if enabled {
            &["Enabled", "Enabling"]
        } else {
            &["Disabled", "Disabling"]
        };
        for attempt in 0..MAPPING_ATTEMPTS {
            if let Some(state) = self.mapping_state(uuid).await?
                && wanted.contains(&state.as_str())
            {
                return Ok(());
            }
            let update = self
                .lambda(
                    "UpdateEventSourceMapping",
                    Method::PUT,
                    uuid,
                    Some(serde_json::json!({ "Enabled": enabled })),
                )
                .await;
            match update {
                Ok(_) => {
                    tracing::info!(enabled, mapping = uuid, "work queue's event source changed");
                    return Ok(());
                }
                Err(IdleError::Mapping(e))
                    if e.code() == Some("ResourceInUseException")
                        && attempt + 1 < MAPPING_ATTEMPTS =>
                {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(IdleError::Busy)
    }

    /// Enables or disables the sweep's rule (on the default bus), when there is one.
    async fn set_rule(&self, enabled: bool) -> Result<(), IdleError> {
        let Some(rule) = &self.rule else {
            return Ok(());
        };
        let operation = if enabled { "EnableRule" } else { "DisableRule" };
        self.control
            .call(Call {
                service: "events",
                operation,
                method: Method::POST,
                path: "/",
                target: Some(&format!("AWSEvents.{operation}")),
                body: Some(serde_json::json!({ "Name": rule })),
            })
            .await
            .map_err(|source| IdleError::Rule {
                rule: rule.clone(),
                source,
            })?;
        Ok(())
    }
}

/// A work queue whose sends first tell the idle pause: `resume` for producers of new work
/// (the kick-off, a scheduled run), a mark only for work on a running export (the worker's
/// next messages, the cancel's announcement: the mapping is on while an export is active).
pub struct WakingQueue {
    inner: Arc<dyn WorkQueue>,
    wake: Wake,
}

enum Wake {
    Resume(Arc<IdleSwitch>),
    Mark(Arc<ActivityMark>),
}

impl WakingQueue {
    pub fn resuming(inner: Arc<dyn WorkQueue>, switch: Arc<IdleSwitch>) -> Self {
        WakingQueue {
            inner,
            wake: Wake::Resume(switch),
        }
    }

    pub fn marking(inner: Arc<dyn WorkQueue>, marks: Arc<ActivityMark>) -> Self {
        WakingQueue {
            inner,
            wake: Wake::Mark(marks),
        }
    }
}

fn queue_error(e: IdleError) -> QueueError {
    QueueError::Backend(Box::new(e))
}

#[async_trait::async_trait]
impl WorkQueue for WakingQueue {
    async fn send(&self, group: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        match &self.wake {
            Wake::Resume(switch) => switch.resume().await,
            Wake::Mark(marks) => marks.mark().await,
        }
        .map_err(queue_error)?;
        self.inner.send(group, bodies).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, wait).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend(receipt, visibility).await
    }
}

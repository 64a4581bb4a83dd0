//! `EventSink`: where the end of an export is announced (completed, failed, cancelled). On
//! AWS an EventBridge bus, locally a webhook and/or an NDJSON file. Delivery is at least once
//! (a `notify` work message is retried until a sink takes the event), so each event carries a
//! stable id, `<job id>:<state>`, for consumers to drop repeats. An event never holds resource
//! content.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::BoxError;
use crate::job::{FileKind, Job, JobState, OutputFile};
use crate::request::ExportLevel;

/// The source of every event, and the `detail-type`s (EventBridge) / `type`s.
pub const EVENT_SOURCE: &str = "fhir-export";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeTotals {
    pub count: u64,
    pub bytes: u64,
}

/// One export's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportEvent {
    /// `<job id>:<state>`: the same for every delivery of the same end.
    pub id: String,
    /// `Export Completed`, `Export Failed` or `Export Cancelled`.
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: String,
    /// `completed`, `failed` or `cancelled`.
    pub state: String,
    /// The schedule that started the export, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// `system`, `patient` or `group`.
    pub level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The kick-off URL (the manifest's `request`).
    pub request: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    pub transaction_time: DateTime<Utc>,
    pub status_url: String,
    /// Resources and bytes per type of the `output` files (completed exports).
    pub output: BTreeMap<String, TypeTotals>,
    pub files: u64,
    pub bytes: u64,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_ms: i64,
    /// Why it failed (failed exports): the export's own words, never resource content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the export used (see [`crate::usage`]): its worker messages, recorded by the time
    /// the event went out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::Usage>,
}

impl ExportEvent {
    /// The event of a job that has ended, with its published files; `None` while it runs.
    pub fn of(job: &Job, outputs: &[OutputFile], status_url: String) -> Option<ExportEvent> {
        let (state, kind) = match job.state {
            JobState::Completed => ("completed", "Export Completed"),
            JobState::Failed => ("failed", "Export Failed"),
            JobState::Cancelled => ("cancelled", "Export Cancelled"),
            _ => return None,
        };
        let mut output: BTreeMap<String, TypeTotals> = BTreeMap::new();
        let mut bytes = 0;
        for f in outputs {
            bytes += f.bytes;
            if f.kind == FileKind::Output
                && let Some(t) = f.resource_type
            {
                let e = output
                    .entry(t.as_str().to_owned())
                    .or_insert(TypeTotals { count: 0, bytes: 0 });
                e.count += f.count;
                e.bytes += f.bytes;
            }
        }
        let ended_at = job.completed_at.unwrap_or(job.updated_at);
        let (level, group) = match &job.request.level {
            ExportLevel::System => ("system", None),
            ExportLevel::Patient => ("patient", None),
            ExportLevel::Group(id) => ("group", Some(id.to_string())),
        };
        Some(ExportEvent {
            id: format!("{}:{state}", job.id),
            kind: kind.to_owned(),
            job_id: job.id.to_string(),
            state: state.to_owned(),
            schedule: job.schedule.clone(),
            level: level.to_owned(),
            group,
            request: job.request.request_url.clone(),
            since: job.request.since,
            transaction_time: job.transaction_time,
            status_url,
            output,
            files: outputs.len() as u64,
            bytes,
            started_at: job.created_at,
            ended_at,
            duration_ms: (ended_at - job.created_at).num_milliseconds(),
            reason: job.failure.clone(),
            usage: None,
        })
    }
}

/// What a sink delivers: an id (stable across deliveries), a kind (the EventBridge
/// `detail-type`, the body's `type`) and the body, a JSON object that holds both.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub detail: serde_json::Value,
    /// The status URL the event is about (EventBridge `resources`).
    pub about: Option<String>,
}

impl From<&ExportEvent> for Event {
    fn from(e: &ExportEvent) -> Event {
        Event {
            id: e.id.clone(),
            kind: e.kind.clone(),
            detail: serde_json::to_value(e).unwrap_or_default(),
            about: Some(e.status_url.clone()),
        }
    }
}

impl Event {
    /// A scheduled tick that started nothing because the schedule's previous run is still
    /// active.
    pub fn run_skipped(
        schedule: &str,
        running_job: &str,
        status_url: &str,
        at: DateTime<Utc>,
    ) -> Event {
        let id = format!("{schedule}:skipped:{}", at.timestamp_millis());
        let kind = "Scheduled Run Skipped".to_owned();
        Event {
            detail: serde_json::json!({
                "id": id,
                "type": kind,
                "schedule": schedule,
                "running_job_id": running_job,
                "status_url": status_url,
                "time": at,
                "reason": "the schedule's previous run is still active",
            }),
            id,
            kind,
            about: Some(status_url.to_owned()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The receiver did not take the event; it is offered again later.
    #[error("the event was not delivered to {target}")]
    NotDelivered {
        target: String,
        #[source]
        source: BoxError,
    },
}

#[async_trait]
pub trait EventSink: Send + Sync {
    /// Delivers the event, or fails (it is offered again: at least once).
    async fn publish(&self, event: &Event) -> Result<(), EventError>;

    /// Where events go, for logs.
    fn describe(&self) -> String;
}

/// No events (the default).
pub struct NoEvents;

#[async_trait]
impl EventSink for NoEvents {
    async fn publish(&self, _: &Event) -> Result<(), EventError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "nowhere".into()
    }
}

/// Every sink, each whatever the others do; delivered when all took it (the event is
/// offered again to all, and a repeat to one that took it already is what at-least-once
/// allows).
pub struct AllSinks(pub Vec<std::sync::Arc<dyn EventSink>>);

#[async_trait]
impl EventSink for AllSinks {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        let mut first_error = None;
        for s in &self.0 {
            if let Err(e) = s.publish(event).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

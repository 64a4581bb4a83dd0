//! `EventSink` on an EventBridge bus: one `PutEvents` entry per export end, `source`
//! `fhir-export`, `detail-type` `Export Completed` / `Export Failed` / `Export Cancelled`,
//! the event as `detail` (`docs/scheduled-exports.md` lists its fields).

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::ports::{EVENT_SOURCE, Event, EventError, EventSink};

pub struct EventBridgeSink {
    client: Client,
    bus: String,
}

impl EventBridgeSink {
    /// `bus`: a bus name or ARN (`default` for the account's default bus).
    pub fn new(config: &aws_config::SdkConfig, bus: &str) -> Self {
        EventBridgeSink {
            client: Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(config)
                    .interceptor(crate::usage::scope::CountRequests::new(
                        crate::usage::EVENTBRIDGE,
                    ))
                    .build(),
            ),
            bus: bus.to_owned(),
        }
    }

    fn not_delivered(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EventError {
        EventError::NotDelivered {
            target: format!("the EventBridge bus {}", self.bus),
            source: e.into(),
        }
    }
}

#[async_trait]
impl EventSink for EventBridgeSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        let detail = serde_json::to_string(&event.detail).map_err(|e| self.not_delivered(e))?;
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(EVENT_SOURCE)
            .detail_type(&event.kind)
            .set_resources(event.about.clone().map(|a| vec![a]))
            .detail(detail)
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| {
                self.not_delivered(aws_sdk_eventbridge::error::DisplayErrorContext(e).to_string())
            })?;
        // PutEvents answers 200 with per-entry failures.
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .iter()
                .filter_map(|e| e.error_message())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self.not_delivered(format!("the entry was refused: {why}")));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("the EventBridge bus {}", self.bus)
    }
}

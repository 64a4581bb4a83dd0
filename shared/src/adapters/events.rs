//! Event sinks of the local server: an NDJSON file (one event per line, appended) and an HTTP
//! webhook (a JSON `POST`, signed with HMAC-SHA256 when a secret is set; feature `webhook`).

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::ports::{Event, EventError, EventSink};

/// Appends each event to a file as one JSON line.
pub struct EventLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl EventLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EventLog {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }
}

#[async_trait]
impl EventSink for EventLog {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        let not_delivered = |e: std::io::Error| EventError::NotDelivered {
            target: self.path.display().to_string(),
            source: Box::new(e),
        };
        let mut line = serde_json::to_vec(&event.detail)
            .map_err(|e| not_delivered(std::io::Error::other(e)))?;
        line.push(b'\n');
        let _one_writer = self.lock.lock().await;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(not_delivered)?;
        // One write of the whole line, so that readers never see half an event.
        f.write_all(&line).await.map_err(not_delivered)?;
        f.flush().await.map_err(not_delivered)
    }

    fn describe(&self) -> String {
        format!("the event log {}", self.path.display())
    }
}

#[cfg(feature = "webhook")]
pub use webhook::Webhook;

#[cfg(feature = "webhook")]
mod webhook {
    use std::time::Duration;

    use async_trait::async_trait;
    use aws_lc_rs::hmac;

    use crate::ports::{Event, EventError, EventSink};

    /// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
    pub const SIGNATURE_HEADER: &str = "x-fhir-export-signature";
    /// The event id header (also in the body), for receivers that drop repeats early.
    pub const EVENT_ID_HEADER: &str = "x-fhir-export-event-id";

    /// `POST`s each event to a URL. A non-2xx answer or no answer is a failed delivery: the
    /// `notify` message comes back with a growing backoff (`worker::settle`).
    pub struct Webhook {
        url: String,
        key: Option<hmac::Key>,
        http: reqwest::Client,
    }

    impl Webhook {
        pub fn new(url: &str, secret: Option<&str>) -> Result<Webhook, String> {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
            Ok(Webhook {
                url: url.to_owned(),
                key: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())),
                http,
            })
        }

        /// The signature header's value for `body`.
        pub fn signature(&self, body: &[u8]) -> Option<String> {
            self.key.as_ref().map(|k| {
                let tag = hmac::sign(k, body);
                let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256={hex}")
            })
        }
    }

    #[async_trait]
    impl EventSink for Webhook {
        async fn publish(&self, event: &Event) -> Result<(), EventError> {
            let not_delivered =
                |e: Box<dyn std::error::Error + Send + Sync>| EventError::NotDelivered {
                    target: self.url.clone(),
                    source: e,
                };
            let body = serde_json::to_vec(&event.detail).map_err(|e| not_delivered(Box::new(e)))?;
            let mut req = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header(EVENT_ID_HEADER, &event.id);
            if let Some(sig) = self.signature(&body) {
                req = req.header(SIGNATURE_HEADER, sig);
            }
            let resp = req
                .body(body)
                .send()
                .await
                .map_err(|e| not_delivered(Box::new(e.without_url())))?;
            if !resp.status().is_success() {
                return Err(not_delivered(
                    format!("the receiver answered {}", resp.status().as_u16()).into(),
                ));
            }
            Ok(())
        }

        fn describe(&self) -> String {
            format!("the webhook {}", self.url)
        }
    }
}

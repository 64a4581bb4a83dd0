//! The HTTP side of the upstream source: one client per source, shared by its readers, that
//! keeps to the configured request rate and concurrency, retries throttling (429), server
//! errors and network failures with backoff (honouring `Retry-After`), times requests out,
//! and turns what persists into a [`SourceError`] naming the request and status, never the
//! content.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use super::auth::Auth;
use super::settings::UpstreamSettings;
use crate::ports::SourceError;

/// A request to the upstream, relative to its base.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    /// `GET [base]/[path]`, or an absolute URL (a `next` link) on the same server.
    Get(String),
    /// `POST [base]/[type]/_search` with a form body (a search too long for a URL).
    Search { resource_type: String, form: String },
}

pub(crate) struct Client {
    http: reqwest::Client,
    /// `https://server/fhir`, without a trailing `/`.
    base: String,
    auth: Auth,
    settings: UpstreamSettings,
    permits: Arc<Semaphore>,
    /// When the next request may start, at the configured rate.
    next_start: Mutex<Instant>,
}

impl Client {
    pub(crate) fn new(
        base: &str,
        auth: Auth,
        settings: UpstreamSettings,
    ) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .gzip(true)
            .build()
            .map_err(|e| SourceError::Backend(Box::new(e)))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth,
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            next_start: Mutex::new(Instant::now()),
            settings,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The absolute URL of a request, refusing a link to another server (it would be sent
    /// the upstream's credentials).
    pub(crate) fn url_of(&self, path: &str) -> Result<String, SourceError> {
        if path.starts_with("http://") || path.starts_with("https://") {
            if same_origin(&self.base, path) {
                Ok(path.to_owned())
            } else {
                Err(SourceError::Protocol {
                    url: shown(&self.base),
                    problem: format!(
                        "a link points to another server ({}); not followed",
                        shown(path)
                    ),
                })
            }
        } else {
            Ok(format!("{}/{}", self.base, path.trim_start_matches('/')))
        }
    }

    /// Waits for the rate limit: request starts are spaced `1 / rate` apart.
    async fn pace(&self) {
        let Some(rate) = self.settings.requests_per_second.filter(|r| *r > 0.0) else {
            return;
        };
        let gap = Duration::from_secs_f64(1.0 / rate);
        let start = {
            let mut next = self.next_start.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + gap;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// Sends `request`, retrying what may pass later; the body of a 2xx answer.
    pub(crate) async fn fetch(&self, request: &Request) -> Result<Bytes, SourceError> {
        let (method, url, form) = match request {
            Request::Get(path) => (Method::GET, self.url_of(path)?, None),
            Request::Search {
                resource_type,
                form,
            } => (
                Method::POST,
                self.url_of(&format!("{resource_type}/_search"))?,
                Some(form.clone()),
            ),
        };
        let method_name: &'static str = if method == Method::GET { "GET" } else { "POST" };
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| SourceError::Backend(Box::new(e)))?;
            self.pace().await;
            let mut builder = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/fhir+json");
            if let Some(form) = &form {
                builder = builder
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.clone());
            }
            if let Some(token) = self.auth.token(&self.http, &self.base).await? {
                builder = builder.bearer_auth(token);
            }
            let sent = builder.send().await;
            let (status, retry_after, body) = match sent {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(&response);
                    match response.bytes().await {
                        Ok(body) if status.is_success() => return Ok(body),
                        Ok(body) => (Some(status), retry_after, Some(body)),
                        // The body broke off: a dropped connection, retried like one.
                        Err(e) => (None, None, Some(Bytes::from(network_reason(e)))),
                    }
                }
                Err(e) => (None, None, Some(Bytes::from(network_reason(e)))),
            };
            drop(permit);
            match status {
                Some(StatusCode::UNAUTHORIZED) if !refreshed && self.auth.refreshable() => {
                    // An expired or revoked token: one new token, then the request again.
                    refreshed = true;
                    self.auth.invalidate().await;
                    attempt -= 1;
                    continue;
                }
                Some(s) if !retryable(s) => {
                    return Err(SourceError::Upstream {
                        method: method_name,
                        url: shown(&url),
                        status: s.as_u16(),
                        outcome: body.as_deref().and_then(outcome_text),
                    });
                }
                _ => {}
            }
            if attempt >= self.settings.max_attempts.max(1) {
                return Err(match status {
                    Some(s) => SourceError::Upstream {
                        method: method_name,
                        url: shown(&url),
                        status: s.as_u16(),
                        outcome: body.as_deref().and_then(outcome_text),
                    },
                    None => SourceError::Unreachable {
                        method: method_name,
                        url: shown(&url),
                        reason: body
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default(),
                    },
                });
            }
            let delay = retry_after
                .unwrap_or_else(|| self.settings.backoff(attempt))
                .min(self.settings.max_backoff);
            tracing::warn!(
                url = %shown(&url),
                status = status.map(|s| s.as_u16()),
                attempt,
                delay_ms = delay.as_millis() as u64,
                "upstream request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// 408, 429 and 5xx may pass later; other statuses will not.
fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error()
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn network_reason(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        // The chain names the cause (reset, closed) without the URL's query.
        crate::error_chain(&e.without_url())
    }
}

/// The diagnostics of an `OperationOutcome` body: its issues' `diagnostics` or
/// `details.text`, joined.
pub(crate) fn outcome_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let texts: Vec<&str> = v
        .get("issue")?
        .as_array()?
        .iter()
        .filter_map(|i| {
            i.get("diagnostics")
                .and_then(|d| d.as_str())
                .or_else(|| i.pointer("/details/text").and_then(|t| t.as_str()))
        })
        .collect();
    (!texts.is_empty()).then(|| cut(texts.join("; "), 500))
}

/// `text`, cut to at most `max` bytes (on a character boundary) and marked `…` if it was.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A URL as errors and logs show it: without user info, and with a long query cut (it may
/// list many patient ids).
pub(crate) fn shown(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.chars().take(200).collect();
    };
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    cut(parsed.to_string(), 200)
}

/// Whether `link` is on the server `base` names (scheme, host and port).
fn same_origin(base: &str, link: &str) -> bool {
    match (url::Url::parse(base), url::Url::parse(link)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_text_reads_diagnostics_and_details() {
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"bad param"},{"severity":"error","code":"x","details":{"text":"other"}}]}"#;
        assert_eq!(outcome_text(body).as_deref(), Some("bad param; other"));
        assert_eq!(outcome_text(br#"{"resourceType":"Patient"}"#), None);
        assert_eq!(outcome_text(b"<html>"), None);
    }

    #[test]
    fn shown_urls_drop_credentials_and_long_queries() {
        assert_eq!(
            shown("https://user:pw@fhir.example/r4/Patient?_count=10"),
            "https://fhir.example/r4/Patient?_count=10"
        );
        let long = format!(
            "https://fhir.example/Observation?patient={}",
            "x".repeat(500)
        );
        let s = shown(&long);
        assert!(s.len() < 210 && s.ends_with('…'), "{s}");
    }

    #[test]
    fn links_to_another_server_are_refused() {
        assert!(same_origin(
            "https://a.example/fhir",
            "https://a.example/fhir?page=2"
        ));
        assert!(!same_origin(
            "https://a.example/fhir",
            "https://b.example/fhir"
        ));
        assert!(!same_origin(
            "http://a.example:80/fhir",
            "http://a.example:81/fhir"
        ));
    }
}

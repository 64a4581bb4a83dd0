//! Polling a status URL (or a manifest page) until it answers `200`, and cancelling an export.
//!
//! Per answer: `200` returns the JSON body; `202` shows `X-Progress` and waits `Retry-After`;
//! `429` waits `Retry-After` and polls on without counting a failure; `5xx` and network errors
//! are retried [`MAX_FAILURES`] times in a row; a `500` whose `OperationOutcome` has no
//! transient issue is the export failing once it is seen [`FAILED_CONFIRMATIONS`] times in a
//! row (one such answer may come from a proxy or a hiccup); `404`/`410` mean the export is gone;
//! any other answer fails. Waits come from [`Backoff::after`]; the deadline ends it all.
//! Redirects are followed. The body of a `202` (an IG 3.0 partial manifest) is not read: the
//! files are taken from the complete manifest, which lists them all.

use std::time::Instant;

use reqwest::header::ACCEPT;
use serde_json::Value;
use tokio::time::Instant as Deadline;
use url::Url;

use super::ClientError;
use super::error::SendError;
use super::net::{Backoff, CapError, Http, error_body, read_capped};
use super::progress::Progress;

/// Consecutive `5xx` answers or network errors tolerated before giving up.
pub(crate) const MAX_FAILURES: u32 = 5;
/// Consecutive non-transient `500` outcomes that mean the export failed.
pub(crate) const FAILED_CONFIRMATIONS: u32 = 2;
/// Largest manifest page read.
const MANIFEST_CAP: usize = 256 * 1024 * 1024;

/// Polls `target` until it answers `200`; returns its JSON body. `status_url` is the export's,
/// for messages; `with_token` whether the bearer token goes to `target`.
pub(crate) async fn wait_for_manifest(
    http: &Http,
    progress: &Progress,
    target: &Url,
    status_url: &Url,
    with_token: bool,
    deadline: Deadline,
    max_wait_secs: u64,
) -> Result<Value, ClientError> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    let mut failed_outcomes = 0u32;
    loop {
        let wait = match http.get(target, "application/json", with_token, &[]).await {
            Err(source) => {
                failures += 1;
                if failures > MAX_FAILURES {
                    return Err(ClientError::Request {
                        action: "status request",
                        url: target.to_string(),
                        source,
                    });
                }
                let d = backoff.next();
                progress.message(format_args!(
                    "{target}: {}; retrying in {} s",
                    shared::error_chain(&source),
                    d.as_secs()
                ));
                d
            }
            Ok((resp, _)) => {
                let status = resp.status().as_u16();
                match status {
                    200 => match read_capped(resp, MANIFEST_CAP).await {
                        Ok(body) => {
                            return serde_json::from_slice(&body).map_err(|e| {
                                ClientError::Manifest {
                                    url: target.to_string(),
                                    message: format!("not JSON ({e})"),
                                }
                            });
                        }
                        Err(CapError::TooLarge) => {
                            return Err(ClientError::Manifest {
                                url: target.to_string(),
                                message: format!("larger than {MANIFEST_CAP} bytes"),
                            });
                        }
                        Err(CapError::Body(e)) => {
                            failures += 1;
                            if failures > MAX_FAILURES {
                                return Err(ClientError::Request {
                                    action: "reading the manifest from",
                                    url: target.to_string(),
                                    source: SendError::Http(e),
                                });
                            }
                            backoff.next()
                        }
                    },
                    202 => {
                        failures = 0;
                        failed_outcomes = 0;
                        let text = resp
                            .headers()
                            .get("x-progress")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        progress.polling(text.as_deref(), started.elapsed());
                        backoff.after(resp.headers())
                    }
                    429 => {
                        let d = backoff.after(resp.headers());
                        progress.message(format_args!(
                            "{target}: HTTP 429 (too many requests); waiting {} s",
                            d.as_secs()
                        ));
                        d
                    }
                    404 | 410 => {
                        return Err(ClientError::ExportGone {
                            status_url: status_url.to_string(),
                            status,
                            diagnostics: error_body(resp).await.text,
                        });
                    }
                    500..=599 => {
                        let d = backoff.after(resp.headers());
                        let body = error_body(resp).await;
                        failures += 1;
                        if status == 500 && body.outcome && !body.transient {
                            failed_outcomes += 1;
                            if failed_outcomes >= FAILED_CONFIRMATIONS {
                                return Err(ClientError::ExportFailed {
                                    status_url: status_url.to_string(),
                                    diagnostics: body.text,
                                });
                            }
                        } else {
                            failed_outcomes = 0;
                        }
                        if failures > MAX_FAILURES {
                            return Err(ClientError::ServerUnavailable {
                                url: target.to_string(),
                                status,
                                attempts: failures,
                                diagnostics: body.text,
                            });
                        }
                        progress.message(format_args!(
                            "{target}: HTTP {status} ({}); retrying in {} s",
                            body.text,
                            d.as_secs()
                        ));
                        d
                    }
                    400..=499 => {
                        return Err(ClientError::Refused {
                            url: target.to_string(),
                            status,
                            diagnostics: error_body(resp).await.text,
                        });
                    }
                    _ => {
                        return Err(ClientError::Protocol {
                            url: target.to_string(),
                            message: format!("HTTP {status}; expected 202 or 200"),
                        });
                    }
                }
            }
        };
        let now = Deadline::now();
        if now >= deadline {
            return Err(ClientError::TimedOut {
                status_url: status_url.to_string(),
                waited_secs: max_wait_secs,
            });
        }
        // The last sleep is cut at the deadline, and one more poll may still find it done.
        tokio::time::sleep_until((now + wait).min(deadline)).await;
    }
}

/// `DELETE [status URL]`. Any `2xx` is success, and so is `404`/`410`: already gone.
pub(crate) async fn cancel(http: &Http, status_url: &Url) -> Result<(), ClientError> {
    let req = http
        .client
        .delete(status_url.clone())
        .header(ACCEPT, "application/fhir+json");
    let req = http
        .authorize(req)
        .await
        .map_err(|e| ClientError::Request {
            action: "cancel (DELETE)",
            url: status_url.to_string(),
            source: e,
        })?;
    let resp = req.send().await.map_err(|e| ClientError::Request {
        action: "cancel (DELETE)",
        url: status_url.to_string(),
        source: SendError::Http(e),
    })?;
    let status = resp.status();
    if status.is_success() || matches!(status.as_u16(), 404 | 410) {
        return Ok(());
    }
    Err(ClientError::Refused {
        url: status_url.to_string(),
        status: status.as_u16(),
        diagnostics: error_body(resp).await.text,
    })
}

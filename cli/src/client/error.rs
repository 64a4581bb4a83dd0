//! Errors of the export client, and reading a server's `OperationOutcome` into one line of text.
//! Messages name URLs, files and line numbers, never the content of an exported line: it is
//! patient data.

use std::path::PathBuf;

use serde_json::Value;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid arguments: {0}")]
    Usage(String),
    #[error("cannot set up the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The request never got an HTTP answer (after retries where retrying is safe).
    #[error("{action} {url} failed")]
    Request {
        action: &'static str,
        url: String,
        #[source]
        source: SendError,
    },
    #[error("the kick-off was refused (HTTP {status}): {diagnostics}")]
    KickoffRefused { status: u16, diagnostics: String },
    /// An answer the protocol does not allow at this point.
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("the export failed on the server: {diagnostics}")]
    ExportFailed {
        status_url: String,
        diagnostics: String,
    },
    #[error(
        "the export at {status_url} is gone (HTTP {status}: unknown, expired or cancelled): {diagnostics}"
    )]
    ExportGone {
        status_url: String,
        status: u16,
        diagnostics: String,
    },
    #[error("{url} refused the request (HTTP {status}): {diagnostics}")]
    Refused {
        url: String,
        status: u16,
        diagnostics: String,
    },
    /// A server error or throttling that outlasted the retries.
    #[error("{url} kept failing (HTTP {status} after {attempts} attempts): {diagnostics}")]
    ServerUnavailable {
        url: String,
        status: u16,
        attempts: u32,
        diagnostics: String,
    },
    #[error(
        "the export did not complete within {waited_secs} s; it may still be running: re-attach with --status {status_url}"
    )]
    TimedOut {
        status_url: String,
        waited_secs: u64,
    },
    #[error("invalid manifest from {url}: {message}")]
    Manifest { url: String, message: String },
    #[error("downloading {url} failed after {attempts} attempt(s)")]
    Download {
        url: String,
        attempts: u32,
        #[source]
        source: DownloadError,
    },
    /// A line of a downloaded file is not what the manifest promised.
    #[error("{file} (from {url}): line {line}: {problem}")]
    Line {
        file: String,
        url: String,
        line: u64,
        problem: LineProblem,
    },
    #[error("{file} (from {url}): {lines} lines, but the manifest's count is {count}")]
    CountMismatch {
        file: String,
        url: String,
        lines: u64,
        count: u64,
    },
    /// The `--since auto` state file cannot be used (see `client::since`).
    #[error("--since auto: {}: {message}", path.display())]
    SinceState { path: PathBuf, message: String },
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no answer to the DELETE of {status_url} within {waited_secs} s; the export may still be running"
    )]
    CancelTimedOut {
        status_url: String,
        waited_secs: u64,
    },
    #[error("{}", interrupted(.status_url.as_deref(), *.cancelled))]
    Interrupted {
        status_url: Option<String>,
        cancelled: bool,
    },
}

fn interrupted(status_url: Option<&str>, cancelled: bool) -> String {
    match (status_url, cancelled) {
        (None, _) => "interrupted before the server accepted the export".into(),
        (Some(url), true) => format!("interrupted; the export at {url} was cancelled"),
        (Some(url), false) => format!(
            "interrupted; the export keeps running on the server: re-attach with --status {url}"
        ),
    }
}

/// Why one request got no usable HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no HTTP answer")]
    Http(#[from] reqwest::Error),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("redirect without a usable Location (must be an http(s) URL)")]
    BadRedirect,
    #[error("no access token: {0}")]
    Token(String),
}

/// Why one download attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("the response body broke off")]
    Body(#[source] reqwest::Error),
    #[error("HTTP {status}: {diagnostics}")]
    Status { status: u16, diagnostics: String },
    #[error("unsupported Content-Encoding `{0}`")]
    Encoding(String),
    #[error("the gzip stream is corrupt")]
    Gzip(#[source] std::io::Error),
}

/// What is wrong with one line of a downloaded file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("blank line")]
    Blank,
    #[error("not valid JSON ({0})")]
    Json(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("has no resourceType")]
    NoResourceType,
    #[error("resourceType is not a FHIR resource type name")]
    InvalidResourceType,
    #[error("resourceType is {found}, expected {expected}")]
    WrongType { expected: String, found: String },
    #[error("longer than {0} bytes")]
    TooLong(usize),
}

/// An error body, read for what a person needs to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub text: String,
    /// The body is an `OperationOutcome`.
    pub outcome: bool,
    /// Every issue has a code saying that trying again may work.
    pub transient: bool,
}

/// Largest error body read; outcomes are small and anything longer is not worth showing.
pub(crate) const ERROR_BODY_CAP: usize = 64 * 1024;
/// Characters of a non-`OperationOutcome` body shown.
const RAW_SHOWN: usize = 300;

impl ErrorBody {
    pub fn parse(body: &[u8]) -> ErrorBody {
        if let Ok(v) = serde_json::from_slice::<Value>(body)
            && v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome")
        {
            return Self::from_outcome(&v);
        }
        let raw = String::from_utf8_lossy(body);
        let raw = raw.trim();
        let text = if raw.is_empty() {
            "no response body".to_owned()
        } else {
            let shown: String = raw.chars().take(RAW_SHOWN).collect();
            let more = if shown.len() < raw.len() { "..." } else { "" };
            format!(
                "no OperationOutcome; body: {}{more}",
                shown.replace('\n', " ")
            )
        };
        ErrorBody {
            text,
            outcome: false,
            transient: false,
        }
    }

    fn from_outcome(v: &Value) -> ErrorBody {
        let issues = v.get("issue").and_then(Value::as_array);
        let mut parts = Vec::new();
        let mut transient = issues.is_some_and(|a| !a.is_empty());
        for issue in issues.into_iter().flatten() {
            let code = issue.get("code").and_then(Value::as_str).unwrap_or("");
            transient &= matches!(code, "transient" | "throttled" | "timeout" | "lock-error");
            let text = issue
                .get("diagnostics")
                .and_then(Value::as_str)
                .or_else(|| {
                    issue
                        .get("details")
                        .and_then(|d| d.get("text"))
                        .and_then(Value::as_str)
                })
                .unwrap_or(code);
            let severity = issue.get("severity").and_then(Value::as_str).unwrap_or("");
            let at = issue
                .get("expression")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .and_then(Value::as_str)
                .map(|e| format!(" [{e}]"))
                .unwrap_or_default();
            parts.push(if severity.is_empty() {
                format!("{text}{at}")
            } else {
                format!("{severity}: {text}{at}")
            });
        }
        ErrorBody {
            text: if parts.is_empty() {
                "OperationOutcome without issues".into()
            } else {
                parts.join("; ")
            },
            outcome: true,
            transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outcomes_and_other_bodies() {
        let b = ErrorBody::parse(
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"`_type`: Foo is not a type","expression":["_type"]}]}"#,
        );
        assert_eq!(b.text, "error: `_type`: Foo is not a type [_type]");
        assert!(b.outcome && !b.transient);
        let b = ErrorBody::parse(
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","details":{"text":"busy"}}]}"#,
        );
        assert_eq!(b.text, "error: busy");
        assert!(b.outcome && b.transient);
        let b = ErrorBody::parse(b"<html>\nBad gateway</html>");
        assert!(!b.outcome);
        assert_eq!(
            b.text,
            "no OperationOutcome; body: <html> Bad gateway</html>"
        );
        assert_eq!(ErrorBody::parse(b"").text, "no response body");
    }
}

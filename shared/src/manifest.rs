//! The completion manifest (Bulk Data IG STU2 `Response - Complete Status`).

use serde_json::{Value, json};

use crate::job::{FileKind, Job, OutputFile};
use crate::model::format_instant;

/// Builds the manifest. `url_of` gives each file's absolute download URL.
pub fn manifest(
    job: &Job,
    files: &[OutputFile],
    requires_access_token: bool,
    mut url_of: impl FnMut(&OutputFile) -> String,
) -> Value {
    let mut output = Vec::new();
    let mut error = Vec::new();
    for f in files {
        let item = json!({
            "type": f.resource_type.as_str(),
            "url": url_of(f),
            "count": f.count,
        });
        match f.kind {
            FileKind::Output => output.push(item),
            FileKind::Error => error.push(item),
        }
    }
    json!({
        "transactionTime": format_instant(&job.transaction_time),
        "request": job.request.request_url,
        "requiresAccessToken": requires_access_token,
        "output": output,
        "deleted": [],
        "error": error,
    })
}

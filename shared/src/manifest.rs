//! The output manifest (Bulk Data IG STU2 `Response - Complete Status`, with the IG 3.0
//! additions: `outputOrganizedBy`, items without `type` and with `continuesInFile`, and `link`
//! to the next page of a paged or partial manifest).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::job::{FileKind, Job, OutputFile};
use crate::model::format_instant;

/// One page of a manifest. `urls` maps every file name of the page (and the names its
/// `continuesInFile` point at) to its absolute URL; `next` is the URL of the next page.
pub fn manifest(
    job: &Job,
    files: &[OutputFile],
    urls: &HashMap<String, String>,
    requires_access_token: bool,
    next: Option<String>,
) -> Value {
    let organized = job.request.organize_output_by;
    let url = |name: &str| urls.get(name).cloned().unwrap_or_default();
    let mut output = Vec::new();
    let mut error = Vec::new();
    let mut deleted = Vec::new();
    for f in files {
        let mut item = json!({ "url": url(&f.name), "count": f.count });
        match (f.kind, organized) {
            (FileKind::Output, Some(_)) => {}
            _ => {
                if let Some(t) = f.resource_type {
                    item["type"] = json!(t.as_str());
                }
            }
        }
        if let Some(next_file) = &f.continues_in {
            item["continuesInFile"] = json!(url(next_file));
        }
        match f.kind {
            FileKind::Error => error.push(item),
            FileKind::Deleted => deleted.push(item),
            _ => output.push(item),
        }
    }
    let mut m = json!({
        "transactionTime": format_instant(&job.transaction_time),
        "request": job.request.request_url,
        "requiresAccessToken": requires_access_token,
        "output": output,
        "deleted": deleted,
        "error": error,
    });
    if let Some(t) = organized {
        m["outputOrganizedBy"] = json!(t.as_str());
    }
    if let Some(next) = next {
        m["link"] = json!([{ "relation": "next", "url": next }]);
    }
    m
}

//! The completion manifest: each page checked, `link` pages (`relation: next`, IG 3.0 partial
//! manifests) fetched and merged, and the files listed for download.
//!
//! A page must be a JSON object with `transactionTime` (a FHIR instant), `requiresAccessToken`
//! (a boolean), `output` and `error` arrays, and `request` (a string). The IG's draft 4.0 names
//! are tolerated: `outcome` for `error`, and then `request` may be absent. `deleted` is
//! optional. Each item needs a `url` (resolved against the page's URL if relative) and may have
//! `type` (a resource type name) and `count` (a non-negative integer). Unknown keys are kept.
//! The merged manifest is the first page with the item arrays of every page appended and
//! `link` removed.

use std::collections::HashSet;

use serde_json::Value;
use tokio::time::Instant as Deadline;
use url::Url;

use super::net::{self, Http};
use super::progress::Progress;
use super::verify::is_type_name;
use super::{ClientError, Section, poll};

pub(crate) const MANIFEST_FILE: &str = "manifest.json";
/// Pages followed at most: a guard against a server that links forever.
const MAX_PAGES: usize = 100_000;
/// Item arrays, by the key they have in the manifest.
const SECTIONS: [(&str, Section); 4] = [
    ("output", Section::Output),
    ("error", Section::Error),
    ("outcome", Section::Error),
    ("deleted", Section::Deleted),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub section: Section,
    /// Absolute URL of the file.
    pub url: Url,
    pub resource_type: Option<String>,
    pub count: Option<u64>,
    /// The page said `requiresAccessToken: true`.
    pub with_token: bool,
}

#[derive(Debug)]
pub(crate) struct Manifest {
    pub merged: Value,
    pub items: Vec<Item>,
}

#[derive(Debug)]
struct Page {
    items: Vec<Item>,
    next: Option<Url>,
    transaction_time: String,
    requires_access_token: bool,
}

fn invalid(url: &Url, message: impl Into<String>) -> ClientError {
    ClientError::Manifest {
        url: url.to_string(),
        message: message.into(),
    }
}

fn check_page(page_url: &Url, v: &Value) -> Result<Page, ClientError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(page_url, "not a JSON object"))?;
    let transaction_time = obj
        .get("transactionTime")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(page_url, "`transactionTime` is missing or not a string"))?;
    shared::model::parse_instant(transaction_time)
        .map_err(|_| invalid(page_url, "`transactionTime` is not a FHIR instant"))?;
    let with_token = obj
        .get("requiresAccessToken")
        .and_then(Value::as_bool)
        .ok_or_else(|| {
            invalid(
                page_url,
                "`requiresAccessToken` is missing or not a boolean",
            )
        })?;
    let draft4 = !obj.contains_key("error") && obj.contains_key("outcome");
    match obj.get("request") {
        Some(Value::String(_)) => {}
        None if draft4 => {}
        _ => return Err(invalid(page_url, "`request` is missing or not a string")),
    }
    for key in ["output", if draft4 { "outcome" } else { "error" }] {
        if !obj.get(key).is_some_and(Value::is_array) {
            return Err(invalid(
                page_url,
                format!("`{key}` is missing or not an array"),
            ));
        }
    }
    let mut items = Vec::new();
    for (key, section) in SECTIONS {
        let list = match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid(page_url, format!("`{key}` is not an array"))),
        };
        for (i, item) in list.iter().enumerate() {
            items.push(check_item(page_url, key, i, item, section, with_token)?);
        }
    }
    let mut next = None;
    if let Some(links) = obj.get("link") {
        let links = links
            .as_array()
            .ok_or_else(|| invalid(page_url, "`link` is not an array"))?;
        for l in links {
            if l.get("relation").and_then(Value::as_str) == Some("next") {
                let url = l
                    .get("url")
                    .and_then(Value::as_str)
                    .and_then(|u| page_url.join(u).ok())
                    .filter(net::is_http)
                    .ok_or_else(|| invalid(page_url, "a `next` link has no http(s) `url`"))?;
                if next.replace(url).is_some() {
                    return Err(invalid(page_url, "more than one `next` link"));
                }
            }
        }
    }
    Ok(Page {
        items,
        next,
        transaction_time: transaction_time.to_owned(),
        requires_access_token: with_token,
    })
}

fn check_item(
    page_url: &Url,
    key: &str,
    i: usize,
    item: &Value,
    section: Section,
    with_token: bool,
) -> Result<Item, ClientError> {
    let at = |what: &str| invalid(page_url, format!("`{key}[{i}]`{what}"));
    let obj = item.as_object().ok_or_else(|| at(" is not an object"))?;
    let url = obj
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| at(".url is missing or not a string"))?;
    let url = page_url
        .join(url)
        .ok()
        .filter(net::is_http)
        .ok_or_else(|| at(".url is not an http(s) URL"))?;
    let resource_type = match obj.get("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if is_type_name(t) => Some(t.clone()),
        Some(_) => return Err(at(".type is not a resource type name")),
    };
    let count = match obj.get("count") {
        None | Some(Value::Null) => None,
        Some(c) => Some(
            c.as_u64()
                .ok_or_else(|| at(".count is not a non-negative integer"))?,
        ),
    };
    Ok(Item {
        section,
        url,
        resource_type,
        count,
        with_token,
    })
}

/// Checks the first page (the status answer), then fetches and merges every `next` page.
pub(crate) async fn collect(
    http: &Http,
    progress: &Progress,
    status_url: &Url,
    first: Value,
    deadline: Deadline,
    max_wait_secs: u64,
) -> Result<Manifest, ClientError> {
    let page = check_page(status_url, &first)?;
    let transaction_time = page.transaction_time;
    let mut items = page.items;
    let mut next = page.next;
    let mut requires_token = page.requires_access_token;
    let mut merged = first;
    if let Some(obj) = merged.as_object_mut() {
        obj.remove("link");
    }
    let mut seen = HashSet::from([status_url.clone()]);
    while let Some(url) = next.take() {
        if !seen.insert(url.clone()) {
            return Err(invalid(&url, "`next` links loop back to an earlier page"));
        }
        if seen.len() > MAX_PAGES {
            return Err(invalid(&url, format!("more than {MAX_PAGES} pages")));
        }
        // The token was given for the FHIR server; a page elsewhere gets it only as a file would.
        let with_token = requires_token || url.origin() == status_url.origin();
        let v = poll::wait_for_manifest(
            http,
            progress,
            &url,
            status_url,
            with_token,
            deadline,
            max_wait_secs,
        )
        .await?;
        let page = check_page(&url, &v)?;
        if page.transaction_time != transaction_time {
            tracing::warn!(
                page = %url,
                "manifest pages disagree on transactionTime; keeping the first page's"
            );
        }
        for (key, _) in SECTIONS {
            if let Some(Value::Array(more)) = v.get(key)
                && let Some(obj) = merged.as_object_mut()
            {
                let slot = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = slot {
                    list.extend(more.iter().cloned());
                }
            }
        }
        items.extend(page.items);
        next = page.next;
        requires_token = page.requires_access_token;
    }
    Ok(Manifest { merged, items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url() -> Url {
        Url::parse("https://h/fhir/_export/1").unwrap()
    }

    fn page(extra: Value) -> Value {
        let mut v = json!({
            "transactionTime": "2024-01-01T00:00:00Z",
            "request": "https://h/fhir/$export",
            "requiresAccessToken": true,
            "output": [
                {"type": "Patient", "url": "https://files/Patient-1.ndjson", "count": 3},
                {"url": "/by-patient/1.ndjson", "x-unknown": 1}
            ],
            "error": [],
            "extension": {"a": 1},
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn checks_a_page() {
        let p = check_page(
            &url(),
            &page(json!({"link": [{"relation": "next", "url": "page/2"}],
                         "deleted": [{"type": "Bundle", "url": "https://files/del.ndjson"}]})),
        )
        .unwrap();
        assert_eq!(p.items.len(), 3);
        assert_eq!(p.items[0].resource_type.as_deref(), Some("Patient"));
        assert_eq!(p.items[0].count, Some(3));
        assert!(p.items[0].with_token);
        assert_eq!(p.items[1].url.as_str(), "https://h/by-patient/1.ndjson");
        assert_eq!(p.items[1].resource_type, None);
        assert_eq!(p.items[2].section, Section::Deleted);
        assert_eq!(
            p.next.unwrap().as_str(),
            "https://h/fhir/_export/page/2",
            "relative links resolve against the page"
        );
        // draft 4.0 shape
        let mut v = page(json!({"outcome": []}));
        v.as_object_mut().unwrap().remove("error");
        v.as_object_mut().unwrap().remove("request");
        assert!(check_page(&url(), &v).is_ok());
    }

    #[test]
    fn refuses_bad_pages() {
        let cases = [
            (json!({"transactionTime": "yesterday"}), "transactionTime"),
            (
                json!({"requiresAccessToken": "false"}),
                "requiresAccessToken",
            ),
            (json!({"output": {}}), "`output`"),
            (json!({"error": null}), "`error`"),
            (json!({"request": 1}), "`request`"),
            (json!({"output": [{"type": "Patient"}]}), "output[0]`.url"),
            (
                json!({"output": [{"type": "Patient", "url": "ftp://x/y"}]}),
                "output[0]`.url",
            ),
            (
                json!({"output": [{"type": "patient", "url": "https://x/y"}]}),
                "output[0]`.type",
            ),
            (
                json!({"error": [{"url": "https://x/y", "count": -1}]}),
                "error[0]`.count",
            ),
            (json!({"link": [{"relation": "next"}]}), "`next`"),
        ];
        for (extra, want) in cases {
            let e = check_page(&url(), &page(extra.clone())).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
        let mut v = page(json!({}));
        v.as_object_mut().unwrap().remove("error");
        assert!(check_page(&url(), &v).is_err(), "error is required");
        assert!(check_page(&url(), &json!([])).is_err());
    }
}

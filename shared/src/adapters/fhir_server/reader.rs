//! Reading a piece: each part is one search, paged to its end by its `next` links. The next
//! page is fetched while the worker handles the current one, so that the export runs at the
//! upstream's paging rate rather than at the sum of paging and writing. Resources of one
//! page are laid out one per line in one buffer, so that the worker can write runs of them
//! without copying. A resource met twice (two searches of one piece that both match it, or a
//! server whose paging repeats) is handed on once.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use super::client::{Client, Request};
use crate::ndjson::read_head;
use crate::ports::{Origin, RecordBatch, RecordReader, SourceError};

/// This source's read spec part: one search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SearchPart {
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Form-encoded parameters, `_count` and `_sort` included.
    pub params: String,
    /// Sent as `POST [type]/_search`: too long for a URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post: bool,
    /// `GET [type]/_history?...`, of which only the `DELETE` entries are read, each handed
    /// on as a transaction Bundle of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
}

impl SearchPart {
    fn first_request(&self) -> Request {
        if self.history {
            Request::Get(format!("{}/_history?{}", self.resource_type, self.params))
        } else if self.post {
            Request::Search {
                resource_type: self.resource_type.clone(),
                form: self.params.clone(),
            }
        } else {
            Request::Get(format!("{}?{}", self.resource_type, self.params))
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Page<'a> {
    #[serde(rename = "resourceType")]
    pub resource_type: &'a str,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub link: Vec<Link>,
    #[serde(default, borrow)]
    pub entry: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct Link {
    pub relation: String,
    pub url: String,
}

#[derive(Deserialize)]
pub(crate) struct Entry<'a> {
    #[serde(default, borrow)]
    pub resource: Option<&'a RawValue>,
    #[serde(default)]
    pub search: Option<EntrySearch>,
    #[serde(default)]
    pub request: Option<EntryRequest>,
    #[serde(default)]
    pub response: Option<EntryResponse>,
}

#[derive(Deserialize)]
pub(crate) struct EntryRequest {
    pub method: String,
    pub url: String,
}

#[derive(Deserialize)]
pub(crate) struct EntryResponse {
    #[serde(default, rename = "lastModified")]
    pub last_modified: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct EntrySearch {
    #[serde(default)]
    pub mode: Option<String>,
}

impl<'a> Page<'a> {
    /// Parses a search page, refusing anything but a Bundle.
    pub(crate) fn parse(body: &'a [u8], url: &str) -> Result<Page<'a>, SourceError> {
        let page: Page<'a> = serde_json::from_slice(body).map_err(|e| SourceError::Protocol {
            url: super::client::shown(url),
            problem: format!("the answer is not a FHIR Bundle: {e}"),
        })?;
        if page.resource_type != "Bundle" {
            return Err(SourceError::Protocol {
                url: super::client::shown(url),
                problem: format!("expected a Bundle, got a {}", page.resource_type),
            });
        }
        Ok(page)
    }

    pub(crate) fn next(&self) -> Option<&str> {
        self.link
            .iter()
            .find(|l| l.relation == "next")
            .map(|l| l.url.as_str())
    }

    /// The deletions of a history page: `(Type/id, when)` of its `DELETE` entries.
    pub(crate) fn deletions(&self) -> impl Iterator<Item = (&str, Option<&str>)> + '_ {
        self.entry.iter().filter_map(|e| {
            let r = e.request.as_ref()?;
            if !r.method.eq_ignore_ascii_case("DELETE") {
                return None;
            }
            // `Type/id`, whatever the server put before it (its base) or after it
            // (`/_history/2`, a query).
            let path = r.url.split('?').next().unwrap_or("");
            let path = path.split("/_history").next().unwrap_or(path);
            let mut segments = path.rsplitn(3, '/');
            let id = segments.next().filter(|s| !s.is_empty())?;
            let t = segments.next().filter(|s| !s.is_empty())?;
            let reference = &path[path.len() - id.len() - 1 - t.len()..];
            let at = e.response.as_ref().and_then(|r| r.last_modified.as_deref());
            Some((reference, at))
        })
    }

    /// The resources the search matched (not `include`d or `outcome` entries).
    pub(crate) fn matches(&self) -> impl Iterator<Item = &'a RawValue> + '_ {
        self.entry.iter().filter_map(|e| {
            let mode = e.search.as_ref().and_then(|s| s.mode.as_deref());
            match mode {
                None | Some("match") => e.resource,
                _ => None,
            }
        })
    }
}

type Pending = JoinHandle<Result<Bytes, SourceError>>;

pub(crate) struct SearchReader {
    client: Arc<Client>,
    parts: Vec<SearchPart>,
    /// The part whose page is pending or was read last.
    part: usize,
    /// Pages read of `part`.
    page: u64,
    pending: Option<(Request, Pending)>,
    seen: HashSet<String>,
}

impl SearchReader {
    pub(crate) fn new(client: Arc<Client>, parts: Vec<SearchPart>) -> Self {
        let mut reader = SearchReader {
            client,
            parts,
            part: 0,
            page: 0,
            pending: None,
            seen: HashSet::new(),
        };
        if let Some(first) = reader.parts.first().map(SearchPart::first_request) {
            reader.prefetch(first);
        }
        reader
    }

    fn prefetch(&mut self, request: Request) {
        let client = self.client.clone();
        let r = request.clone();
        self.pending = Some((request, tokio::spawn(async move { client.fetch(&r).await })));
    }

    fn describe_request(&self, request: &Request) -> String {
        match request {
            Request::Get(path) => self
                .client
                .url_of(path)
                .map(|u| super::client::shown(&u))
                .unwrap_or_else(|_| path.clone()),
            Request::Search { resource_type, .. } => {
                format!("{}/{resource_type}/_search", self.client.base())
            }
        }
    }
}

impl Drop for SearchReader {
    fn drop(&mut self) {
        if let Some((_, task)) = self.pending.take() {
            task.abort();
        }
    }
}

#[async_trait]
impl RecordReader for SearchReader {
    async fn next_batch(&mut self, batch: &mut RecordBatch) -> Result<bool, SourceError> {
        batch.clear();
        loop {
            let Some((request, task)) = self.pending.take() else {
                return Ok(false);
            };
            let body = task
                .await
                .map_err(|e| SourceError::Backend(Box::new(e)))??;
            let url = self.describe_request(&request);
            let page = Page::parse(&body, &url)?;
            self.page += 1;
            // The next page (or the next search) is on its way while this one is handled.
            match page.next() {
                Some(next) => {
                    let next = next.to_owned();
                    self.prefetch(Request::Get(next));
                }
                None => {
                    if let Some(part) = self.parts.get(self.part + 1) {
                        let first = part.first_request();
                        self.prefetch(first);
                    }
                }
            }
            let mut buf = BytesMut::with_capacity(body.len());
            let mut spans = Vec::new();
            let history = self.parts.get(self.part).is_some_and(|p| p.history);
            if history {
                for (i, (reference, at)) in page.deletions().enumerate() {
                    if !self.seen.insert(reference.to_owned()) {
                        continue;
                    }
                    let start = buf.len();
                    let line = deletion_bundle(reference, at);
                    buf.extend_from_slice(line.as_bytes());
                    spans.push((start, buf.len(), i));
                    buf.extend_from_slice(b"\n");
                }
            }
            for (i, raw) in page.matches().enumerate().filter(|_| !history) {
                let text = raw.get().as_bytes();
                let id = match read_head(text) {
                    Ok(head) => Some(head.id.into_owned()),
                    // The worker reports a line it cannot read; it is handed on as it is.
                    Err(_) => None,
                };
                if let Some(id) = id
                    && !self.seen.insert(id)
                {
                    continue;
                }
                let start = buf.len();
                if memchr::memchr2(b'\n', b'\r', text).is_some() {
                    // Pretty-printed: one line per resource in NDJSON.
                    let v: serde_json::Value = serde_json::from_str(raw.get())
                        .map_err(|e| SourceError::Backend(Box::new(e)))?;
                    serde_json::to_writer(bytes::BufMut::writer(&mut buf), &v)
                        .map_err(|e| SourceError::Backend(Box::new(e)))?;
                } else {
                    buf.extend_from_slice(text);
                }
                spans.push((start, buf.len(), i));
                buf.extend_from_slice(b"\n");
            }
            let part = self.part;
            let page_number = self.page;
            if page.next().is_none() {
                self.part += 1;
                self.page = 0;
            }
            if spans.is_empty() {
                continue;
            }
            let buf: Bytes = buf.freeze();
            for (start, end, i) in spans {
                batch.push_slice(
                    &buf,
                    start..end,
                    Origin {
                        part,
                        offset: page_number,
                        line: i as u64 + 1,
                    },
                );
            }
            return Ok(true);
        }
    }

    async fn describe(&mut self, origin: Origin) -> String {
        match self.parts.get(origin.part) {
            Some(p) => format!(
                "{}/{} search (part {}), page {}, entry {}",
                self.client.base(),
                p.resource_type,
                origin.part + 1,
                origin.offset,
                origin.line
            ),
            None => format!("{} search", self.client.base()),
        }
    }
}

/// A transaction Bundle of one `DELETE` of `reference` (`Type/id`), as the IG's `deleted`
/// files hold them; `meta.lastUpdated` is when the resource was deleted (the worker checks it
/// against `_since` and the transaction time), and the id is derived from the reference so
/// that a retried chunk writes the same line.
pub(crate) fn deletion_bundle(reference: &str, at: Option<&str>) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same reference gives the same id in every process.
    let mut h = std::hash::DefaultHasher::new();
    reference.hash(&mut h);
    let id = format!("deleted-{:016x}", h.finish());
    // As an instant the worker reads (servers write nanoseconds, offsets); one it cannot
    // read is left out, and the deletion is then reported whatever its time.
    let at = at
        .and_then(|t| crate::model::fhir_time::parse_instant(t).ok())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let meta = match at {
        Some(t) => serde_json::json!({ "lastUpdated": t }),
        None => serde_json::json!({}),
    };
    serde_json::json!({
        "resourceType": "Bundle",
        "id": id,
        "meta": meta,
        "type": "transaction",
        "entry": [{ "request": { "method": "DELETE", "url": reference } }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_pages_give_their_deletions() {
        let body = br#"{"resourceType":"Bundle","type":"history","entry":[
            {"fullUrl":"http://s/Patient/a","resource":{"resourceType":"Patient","id":"a"},"request":{"method":"PUT","url":"Patient/a"},"response":{"status":"200"}},
            {"request":{"method":"DELETE","url":"Patient/b"},"response":{"status":"204","lastModified":"2026-12-07T10:00:00.123Z"}},
            {"request":{"method":"DELETE","url":"http://s/fhir/Patient/c/_history/3"},"response":{"status":"204"}}
        ]}"#;
        let page = Page::parse(body, "x").expect("page");
        let got: Vec<(&str, Option<&str>)> = page.deletions().collect();
        assert_eq!(
            got,
            vec![
                ("Patient/b", Some("2026-12-07T10:00:00.123Z")),
                ("Patient/c", None)
            ]
        );
        let line = deletion_bundle("Patient/b", Some("2026-12-07T10:00:00.123Z"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["entry"][0]["request"]["method"], "DELETE");
        assert_eq!(v["entry"][0]["request"]["url"], "Patient/b");
        assert_eq!(
            line,
            deletion_bundle("Patient/b", Some("2026-12-07T10:00:00.123Z"))
        );
        let head = crate::ndjson::read_head(line.as_bytes()).expect("head");
        assert!(crate::model::ids::is_logical_id(&head.id));
        assert!(head.last_updated.is_some());
    }
}

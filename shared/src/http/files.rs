//! `GET [file URL]`: stream a published file, or redirect to a short-lived signed URL.
//!
//! NDJSON shrinks about tenfold with gzip, and egress is most of what a download costs, so a
//! client that sends `Accept-Encoding: gzip` gets the file compressed (`Content-Encoding:
//! gzip`): compressed on the way out when it is stored as it is, sent as stored when it is
//! stored compressed. A client that does not accept gzip gets the file as it is, decompressed
//! on the way out if need be. A `Range` is served (206) on the stored bytes when they are
//! what the client gets: always for a file stored as it is (a range asks for those bytes, so
//! it is not compressed), and for a compressed file to a client that accepts gzip.

use std::ops::Range;

use async_compression::Level;
use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio_util::io::{ReaderStream, StreamReader};

use super::error::ApiError;
use super::{Caller, FilesState, owned_job};
use crate::job::{JobState, OutputFile};
use crate::layout::is_published_name;
use crate::model::JobId;
use crate::ports::{ByteStream, Encoding, ObjectError};
use crate::settings::FileAccess;

pub const NDJSON: &str = "application/fhir+ndjson";

pub(super) async fn file(
    State(state): State<FilesState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match serve(&state, &caller, &id, &name, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn published_file(
    state: &FilesState,
    caller: &Caller,
    id: &str,
    name: &str,
) -> Result<(String, OutputFile, JobId), ApiError> {
    let job = owned_job(state.jobs.as_ref(), caller, id).await?;
    if !is_published_name(name) {
        return Err(ApiError::FileNotFound);
    }
    let published: Vec<OutputFile> = match job.state {
        JobState::Completed => state.jobs.outputs(&job.id).await?,
        // A partial manifest lists the files of published chunks while the export runs.
        JobState::Running if job.request.allow_partial_manifests => {
            let mut files = job.plan.notes.clone();
            for c in state.jobs.chunks(&job.id).await? {
                if c.renamed {
                    files.extend(c.published.unwrap_or_default());
                }
            }
            files
        }
        _ => return Err(ApiError::FileNotFound),
    };
    let file = published
        .into_iter()
        .find(|f| f.name == name)
        .ok_or(ApiError::FileNotFound)?;
    Ok((format!("{}/{}", job.output_prefix, file.name), file, job.id))
}

async fn serve(
    state: &FilesState,
    caller: &Caller,
    id: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (key, file, id) = published_file(state, caller, id, name).await?;
    if state.settings.file_access != FileAccess::Served
        && let Some(signer) = state.output.signer()
    {
        let url = signer
            .signed_get_url(&key, state.settings.signed_url_ttl)
            .await?;
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&url) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    let gzip_ok = accepts_gzip(headers);
    // Whether the client gets the bytes as stored (then ranges apply to them).
    let as_stored = file.encoding.is_identity() || gzip_ok;
    let range = match (as_stored, headers.get(header::RANGE)) {
        (true, Some(v)) => match byte_range(v, file.bytes) {
            RangeAsked::One(r) => Some(r),
            RangeAsked::Ignored => None,
            RangeAsked::Unsatisfiable => return Ok(unsatisfiable(file.bytes)),
        },
        _ => None,
    };
    let (start, end) = match &range {
        Some(r) => (r.start, Some(r.end)),
        None => (0, None),
    };
    let stream = state
        .output
        .read(&key, start, end)
        .await
        .map_err(|e| match e {
            ObjectError::NotFound(_) => ApiError::FileNotFound,
            other => ApiError::Object(other),
        })?;
    let (body, sent_encoding, length) = match (file.encoding, gzip_ok, &range) {
        (Encoding::Identity, true, None) => (gzip(stream), Encoding::Gzip, None),
        (Encoding::Gzip, false, _) => (gunzip(stream), Encoding::Identity, None),
        (stored, _, Some(r)) => (Body::from_stream(stream), stored, Some(r.end - r.start)),
        (stored, _, None) => (Body::from_stream(stream), stored, Some(file.bytes)),
    };
    let body = metered(body, state, id);
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = sent_encoding.content_encoding() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if as_stored {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(r) = range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, file.bytes))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// The body, counting what it sends: once it ends (or the client goes away), the bytes sent
/// are recorded with the export's usage (egress is most of what a download costs).
fn metered(body: Body, state: &FilesState, id: JobId) -> Body {
    let jobs = state.jobs.clone();
    Body::from_stream(Metered {
        inner: body.into_data_stream(),
        sent: 0,
        record: Some(Box::new(move |sent| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                let usage = crate::usage::Usage {
                    bytes_sent: sent,
                    downloads: 1,
                    ..Default::default()
                };
                let key = format!("download-{}", uuid::Uuid::new_v4().simple());
                if let Err(e) = jobs.record_usage(&id, &key, &usage).await {
                    tracing::warn!(job_id = %id, error = %crate::error_chain(&e), "download not recorded in the usage");
                }
            });
        })),
    })
}

type Record = Box<dyn FnOnce(u64) + Send>;

struct Metered<S> {
    inner: S,
    sent: u64,
    record: Option<Record>,
}

impl<S> Metered<S> {
    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            record(self.sent);
        }
    }
}

impl<S> futures::Stream for Metered<S>
where
    S: futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin,
{
    type Item = Result<bytes::Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(b))) => self.sent += b.len() as u64,
            std::task::Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// 416 with the size, as RFC 9110 asks, and an `OperationOutcome` saying why.
fn unsatisfiable(size: u64) -> Response {
    let mut resp = ApiError::RangeNotSatisfiable(size).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

fn reader(
    stream: ByteStream,
) -> StreamReader<impl futures::Stream<Item = std::io::Result<bytes::Bytes>>, bytes::Bytes> {
    StreamReader::new(stream.map_err(std::io::Error::other))
}

/// The stream gzip-compressed at the fastest level: a download is paced by the network, and
/// level 1 already takes NDJSON to about a tenth.
fn gzip(stream: ByteStream) -> Body {
    Body::from_stream(ReaderStream::new(GzipEncoder::with_quality(
        reader(stream),
        Level::Fastest,
    )))
}

fn gunzip(stream: ByteStream) -> Body {
    Body::from_stream(ReaderStream::new(GzipDecoder::new(reader(stream))))
}

/// Whether `Accept-Encoding` admits gzip (`gzip`, `x-gzip` or `*` with a non-zero `q`).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => any = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAsked {
    /// One satisfiable range, clamped to the file.
    One(Range<u64>),
    /// Not a single byte range this route serves (several ranges, another unit, malformed):
    /// the whole file is sent, as RFC 9110 allows.
    Ignored,
    /// A byte range that starts past the end.
    Unsatisfiable,
}

/// A `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` header, against a file of `size` bytes.
fn byte_range(value: &HeaderValue, size: u64) -> RangeAsked {
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeAsked::Ignored;
    };
    if spec.contains(',') {
        return RangeAsked::Ignored;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsked::Ignored;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // The last `n` bytes.
        (true, false) => match parse(b) {
            Some(0) => RangeAsked::Unsatisfiable,
            Some(n) if size > 0 => RangeAsked::One(size.saturating_sub(n)..size),
            Some(_) => RangeAsked::Unsatisfiable,
            None => RangeAsked::Ignored,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeAsked::Ignored;
            };
            let last = if b.is_empty() {
                Some(u64::MAX)
            } else {
                parse(b)
            };
            match last {
                None => RangeAsked::Ignored,
                Some(last) if last < start => RangeAsked::Ignored,
                Some(_) if start >= size => RangeAsked::Unsatisfiable,
                Some(last) => RangeAsked::One(start..last.saturating_add(1).min(size)),
            }
        }
        (true, true) => RangeAsked::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).expect("value"));
        m
    }

    #[test]
    fn gzip_is_accepted_when_asked_for_with_a_positive_weight() {
        for yes in [
            "gzip",
            "deflate, gzip;q=0.5",
            "br, *",
            "x-gzip",
            "GZIP;q=1.0",
        ] {
            assert!(accepts_gzip(&h(header::ACCEPT_ENCODING, yes)), "{yes}");
        }
        for no in ["identity", "gzip;q=0", "br", "*;q=0", "*, gzip;q=0"] {
            assert!(!accepts_gzip(&h(header::ACCEPT_ENCODING, no)), "{no}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        let r = |v: &str| byte_range(&HeaderValue::from_str(v).expect("value"), 100);
        assert_eq!(r("bytes=0-9"), RangeAsked::One(0..10));
        assert_eq!(r("bytes=90-"), RangeAsked::One(90..100));
        assert_eq!(r("bytes=95-200"), RangeAsked::One(95..100));
        assert_eq!(r("bytes=-10"), RangeAsked::One(90..100));
        assert_eq!(r("bytes=-500"), RangeAsked::One(0..100));
        assert_eq!(r("bytes=100-"), RangeAsked::Unsatisfiable);
        assert_eq!(r("bytes=-0"), RangeAsked::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), RangeAsked::Ignored);
        assert_eq!(r("bytes=5-2"), RangeAsked::Ignored);
        assert_eq!(r("items=0-1"), RangeAsked::Ignored);
        assert_eq!(r("bytes=x-1"), RangeAsked::Ignored);
    }
}

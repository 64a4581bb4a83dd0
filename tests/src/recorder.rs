//! An HTTP recording layer in front of moto: every request the adapters send through it is
//! forwarded and counted by service and operation, read off the wire as AWS reads it (the
//! JSON protocols' `X-Amz-Target`, S3's method, query and headers). The usage record is
//! checked against these counts, not against the adapters' own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recorded {
    /// Requests by service (`s3`, `sqs`, `dynamodb`, `eventbridge`) and operation.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Bytes of the bodies of S3 `PutObject` and `UploadPart` requests.
    pub s3_uploaded: u64,
}

impl Recorded {
    pub fn of(&self, service: &str, op: &str) -> u64 {
        self.requests
            .get(service)
            .and_then(|m| m.get(op))
            .copied()
            .unwrap_or(0)
    }
}

/// Called with each request's method, path and body before it is forwarded: a test's way of
/// making something happen at an exact point of an adapter's sequence of calls.
pub type Hook = Arc<
    dyn Fn(String, String, bytes::Bytes) -> futures::future::BoxFuture<'static, ()> + Send + Sync,
>;

#[derive(Clone)]
struct Inner {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Recorded>>,
    hook: Option<Hook>,
}

pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Recorded>>,
}

impl Recorder {
    /// Starts a recorder forwarding to `upstream` (moto's URL).
    pub async fn start(upstream: &str) -> Recorder {
        Self::start_with(upstream, None).await
    }

    /// [`Recorder::start`], with `hook` run before each request is forwarded.
    pub async fn start_with(upstream: &str, hook: Option<Hook>) -> Recorder {
        let seen = Arc::new(Mutex::new(Recorded::default()));
        let inner = Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            // Bodies pass as they are: a compressed object must reach the SDK compressed.
            http: reqwest::Client::builder()
                .no_gzip()
                .build()
                .expect("client"),
            seen: seen.clone(),
            hook,
        };
        let app = axum::Router::new().fallback(forward).with_state(inner);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { url, seen }
    }

    pub fn recorded(&self) -> Recorded {
        self.seen.lock().expect("lock").clone()
    }
}

/// The service and operation of a request, as AWS tells them apart.
fn classify(method: &str, query: &str, headers: &axum::http::HeaderMap) -> (String, String) {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (prefix, op) = target.split_once('.').unwrap_or((target, ""));
        let service = match prefix {
            p if p.starts_with("DynamoDB") => "dynamodb",
            p if p.starts_with("AmazonSQS") => "sqs",
            p if p.starts_with("AWSEvents") => "eventbridge",
            other => other,
        };
        return (service.to_owned(), op.to_owned());
    }
    let has = |k: &str| {
        query
            .split('&')
            .any(|p| p == k || p.starts_with(&format!("{k}=")))
    };
    let op = match method {
        "GET" if has("list-type") => "ListObjectsV2",
        "GET" if has("uploads") => "ListMultipartUploads",
        "GET" => "GetObject",
        "HEAD" => "HeadObject",
        "PUT" if has("partNumber") => "UploadPart",
        "PUT" if headers.contains_key("x-amz-copy-source") => "CopyObject",
        "PUT" => "PutObject",
        "POST" if has("delete") => "DeleteObjects",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" => "DeleteObject",
        other => other,
    };
    ("s3".to_owned(), op.to_owned())
}

async fn forward(State(inner): State<Inner>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let (service, op) = classify(parts.method.as_str(), &query, &parts.headers);
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if let Some(hook) = &inner.hook {
        hook(
            parts.method.to_string(),
            parts.uri.path().to_owned(),
            body.clone(),
        )
        .await;
    }
    {
        let mut seen = inner.seen.lock().expect("lock");
        if service == "s3" && (op == "PutObject" || op == "UploadPart") {
            seen.s3_uploaded += body.len() as u64;
        }
        *seen
            .requests
            .entry(service)
            .or_default()
            .entry(op)
            .or_default() += 1;
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut out = inner
        .http
        .request(
            parts.method.clone(),
            format!("{}{path_and_query}", inner.upstream),
        )
        .body(body);
    for (k, v) in &parts.headers {
        if k != axum::http::header::HOST && k != axum::http::header::CONTENT_LENGTH {
            out = out.header(k, v);
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .expect("response");
        }
    };
    let head = parts.method == axum::http::Method::HEAD;
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        // A HEAD answer's length is the object's; elsewhere the body sets it.
        if k != "transfer-encoding" && (head || k != "content-length") {
            builder = builder.header(k, v);
        }
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    builder.body(Body::from(bytes)).expect("response")
}

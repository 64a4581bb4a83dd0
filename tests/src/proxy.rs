//! A small HTTP proxy in front of a real FHIR server, for failure tests: it forwards every
//! request (rewriting the server's own base in answers to its own, so that `next` links lead
//! back through it), and answers the requests a test picks with a fault instead: a status
//! (429 with `Retry-After`, 503, 500), a connection dropped halfway through the body, or a
//! refusal of requests without the expected bearer token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward it.
    Pass,
    /// Answer this status (with `Retry-After: secs` when given) and an OperationOutcome.
    Status(u16, Option<u64>),
    /// Forward it, then send half of the answer's body and drop the connection.
    DropMidBody,
    /// Answer 200 with this JSON, as the proxy's own (a `.well-known` document).
    Json(serde_json::Value),
    /// Forward it to this path and query instead (a server that ignores a parameter).
    Rewrite(String),
}

/// Whether a request's bearer token (`None`: no `Authorization`) is accepted.
pub type Check = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Decides the fault of the `n`-th request (from 1) of path-and-query `path`.
pub type Plan = Arc<dyn Fn(usize, &str) -> Fault + Send + Sync>;

struct Inner {
    upstream: String,
    own: Mutex<String>,
    plan: Plan,
    check: Option<Check>,
    requests: AtomicUsize,
    log: Mutex<Vec<(String, u16)>>,
    arrivals: Mutex<Vec<std::time::Instant>>,
}

pub struct Proxy {
    pub base: String,
    inner: Arc<Inner>,
}

impl Proxy {
    /// A proxy to `upstream` that faults as `plan` says and, with `token`, refuses (401) any
    /// request without `Authorization: Bearer <token>`.
    pub async fn start(upstream: &str, plan: Plan, token: Option<&str>) -> Proxy {
        let check: Option<Check> = token.map(|t| {
            let t = t.to_owned();
            Arc::new(move |got: Option<&str>| got == Some(t.as_str())) as Check
        });
        Self::start_checking(upstream, plan, check).await
    }

    /// As `start`, with the tokens accepted decided by `check`.
    pub async fn start_checking(upstream: &str, plan: Plan, check: Option<Check>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            own: Mutex::new(base.clone()),
            plan,
            check,
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Proxy { base, inner }
    }

    /// Requests seen, with the status each was answered (0: dropped mid-body).
    pub fn log(&self) -> Vec<(String, u16)> {
        self.inner.log.lock().unwrap().clone()
    }

    /// When each request arrived, in order.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.inner.arrivals.lock().unwrap().clone()
    }
}

fn outcome(status: u16, text: &str) -> Body {
    Body::from(
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception", "diagnostics": format!("proxy: {status} {text}")}]
        })
        .to_string(),
    )
}

async fn forward(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let n = inner.requests.fetch_add(1, Ordering::SeqCst) + 1;
    inner
        .arrivals
        .lock()
        .unwrap()
        .push(std::time::Instant::now());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let record = |status: u16| inner.log.lock().unwrap().push((path.clone(), status));
    let fault = (inner.plan)(n, &path);
    if let Fault::Json(v) = &fault {
        record(200);
        let mut r = Response::new(Body::from(v.to_string()));
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return r;
    }
    if let Some(check) = &inner.check {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !check(token) {
            record(401);
            let mut r = Response::new(outcome(401, "token missing or wrong"));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
    }
    if let Fault::Status(status, retry_after) = fault {
        record(status);
        let mut r = Response::new(outcome(status, "injected"));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(secs) = retry_after {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        return r;
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let target = match &fault {
        Fault::Rewrite(to) => to.clone(),
        _ => path.clone(),
    };
    let mut out = client.request(method, format!("{}{target}", inner.upstream));
    for name in ["content-type", "accept", "prefer"] {
        if let Some(v) = headers.get(name) {
            out = out.header(name, v.clone());
        }
    }
    let answer = out.body(body).send().await.unwrap();
    let status = answer.status().as_u16();
    let content_type = answer.headers().get("content-type").cloned();
    let text = answer.bytes().await.unwrap();
    let own = inner.own.lock().unwrap().clone();
    let text = Bytes::from(
        String::from_utf8_lossy(&text)
            .replace(&inner.upstream, &own)
            .into_bytes(),
    );
    let mut r = if fault == Fault::DropMidBody {
        record(0);
        let half = text.slice(..text.len() / 2);
        let stream = futures::stream::iter(vec![
            Ok(half),
            Err(std::io::Error::other(
                "connection dropped by the test proxy",
            )),
        ]);
        Response::new(Body::from_stream(stream))
    } else {
        record(status);
        Response::new(Body::from(text))
    };
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(ct) = content_type {
        r.headers_mut().insert("content-type", ct);
    }
    r
}

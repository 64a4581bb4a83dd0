//! The AWS deployment's pieces assembled the way Lambda and API Gateway assemble them, for
//! tests against moto server: the real kick-off, status and cancel function routers behind a
//! stand-in for API Gateway's routing, on a real socket; DynamoDB for jobs, SQS for work, S3
//! for the source and the output; and the real worker handler fed the way Lambda feeds it — a
//! harness receives messages from the SQS queues, hands them over as SQS events, and deletes
//! what the handler did not report as failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use axum::Router;
use axum::extract::Request;
use bytes::Bytes;
use fn_common::FunctionConfig;
use serde_json::{Value, json};
use shared::adapters::aws::dynamodb::DynamoJobStore;
use shared::adapters::aws::s3::{S3Location, S3Store};
use shared::adapters::aws::sdk_config;
use shared::adapters::aws::sqs::{SqsQueue, create_queue_pair};
use shared::adapters::ndjson_source::NdjsonSource;
use shared::config::Env;
use shared::http::KickoffState;
use shared::ports::{EventSink, ObjectStore, WorkQueue};
use shared::request::Capabilities;
use shared::worker::WorkerDeps;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{content_location, dataset, moto, read_source, unique};

pub struct Stack {
    pub base: String,
    pub http: reqwest::Client,
    pub worker: Arc<worker::Worker>,
    pub work: SqsQueue,
    pub dead: SqsQueue,
    pub work_arn: String,
    pub dead_arn: String,
    pub jobs: Arc<DynamoJobStore>,
    /// The DynamoDB table of `jobs`.
    pub table: String,
    /// The source bucket's store, rooted where the source reads (`s3://<bucket>/data/`).
    pub source_objects: Arc<S3Store>,
    /// The S3 output bucket's store (unused when `FHIR_EXPORT_OUTPUT` names another store).
    pub output: Arc<S3Store>,
    pub output_bucket: String,
    /// The store the functions write exports to: `output`, or the store `FHIR_EXPORT_OUTPUT`
    /// names, opened as the functions open it (`fn_common::store`).
    pub exports: Arc<dyn ObjectStore>,
    pub source: BTreeMap<String, Vec<Value>>,
    pub stop: CancellationToken,
    pub config: FunctionConfig,
    /// Each function's router, as `lambda_http::run` serves it.
    pub apps: Apps,
    _data: tempfile::TempDir,
}

pub struct Apps {
    pub kickoff: Router,
    pub status: Router,
    pub cancel: Router,
}

/// A new bucket on moto, named from `prefix`, and a store rooted at `root` in it (`""` or
/// ending in `/`); `None` (the test is skipped, and says so) when moto is not running.
pub async fn new_bucket(prefix: &str, root: &str) -> Option<(String, S3Store)> {
    moto().await?;
    let aws = sdk_config().await;
    let bucket = unique(prefix);
    let store = S3Store::new(
        &aws,
        S3Location::parse(&format!("s3://{bucket}/{root}")).unwrap(),
    );
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    Some((bucket, store))
}

pub async fn queue_arn(q: &SqsQueue) -> String {
    q.client()
        .get_queue_attributes()
        .queue_url(q.url())
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap()
}

/// A deployment on moto with `patients` generated patients, extra environment, and a
/// redrive after `max_receives` receives; `None` (skipped) without moto.
pub async fn stack(patients: u64, env: &[(&str, &str)], max_receives: u32) -> Option<Stack> {
    moto().await?;
    let aws = sdk_config().await;
    // Source: generated NDJSON uploaded to a bucket of its own.
    let (dir, _) = dataset(patients);
    let source_bucket = unique("src");
    let output_bucket = unique("out");
    let s3 = S3Store::new(
        &aws,
        S3Location::parse(&format!("s3://{source_bucket}/data/")).unwrap(),
    );
    for b in [&source_bucket, &output_bucket] {
        s3.client().create_bucket().bucket(b).send().await.unwrap();
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".ndjson") {
            s3.put(&name, Bytes::from(std::fs::read(&path).unwrap()))
                .await
                .unwrap();
        }
    }
    let table = unique("jobs");
    let jobs = Arc::new(DynamoJobStore::new(&aws, &table));
    jobs.create_table().await.unwrap();
    let (work, dead) =
        create_queue_pair(&aws, &unique("work"), Duration::from_secs(2), max_receives)
            .await
            .unwrap();
    let (work_arn, dead_arn) = (queue_arn(&work).await, queue_arn(&dead).await);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let mut vars: BTreeMap<String, String> = [
        ("FHIR_EXPORT_PUBLIC_URL", public.as_str()),
        ("FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS", "2"),
        ("FHIR_EXPORT_RETRY_AFTER_SECS", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = FunctionConfig::from(&Env::new(|k| vars.get(k).cloned())).unwrap();
    let settings = Arc::new(config.settings.clone());
    let output = Arc::new(S3Store::new(
        &aws,
        S3Location::parse(&format!("s3://{output_bucket}/exports/")).unwrap(),
    ));
    let source_objects = Arc::new(s3);
    let source = Arc::new(NdjsonSource::new(source_objects.clone(), ""));
    let exports: Arc<dyn ObjectStore> = if vars.contains_key("FHIR_EXPORT_OUTPUT") {
        fn_common::store(&Env::new(|k| vars.get(k).cloned()), "FHIR_EXPORT_OUTPUT")
            .await
            .unwrap()
    } else {
        output.clone()
    };

    let kickoff_app = kickoff::app(
        KickoffState {
            jobs: jobs.clone(),
            queue: Arc::new(work.clone()),
            source: source.clone(),
            settings: settings.clone(),
            caps: Capabilities::CURRENT,
            schedules: Default::default(),
        },
        &config,
    );
    let status_app = status::app(jobs.clone(), exports.clone(), &config);
    let cancel_app = cancel::app(
        jobs.clone(),
        exports.clone(),
        Arc::new(work.clone()),
        &config,
    );
    let apps = Apps {
        kickoff: kickoff_app.clone(),
        status: status_app.clone(),
        cancel: cancel_app.clone(),
    };
    // API Gateway's routing: each route goes to its function.
    let gateway = Router::new().fallback(move |req: Request| {
        let (k, s, c) = (kickoff_app.clone(), status_app.clone(), cancel_app.clone());
        async move {
            let path = req.uri().path();
            let target = if path.ends_with("/$export") || path.contains("/_schedules") {
                k
            } else if req.method() == axum::http::Method::DELETE {
                c
            } else {
                s
            };
            target.oneshot(req).await.unwrap()
        }
    });
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, gateway)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
    }
    let worker = Arc::new(worker::Worker {
        deps: WorkerDeps {
            jobs: jobs.clone(),
            queue: Arc::new(work.clone()),
            output: exports.clone(),
            source,
            settings,
            events: Arc::new(shared::ports::NoEvents),
        },
        dead_letters: Some(dead.clone()),
        idle: None,
        // As `Worker::from_env` reads it: scheduled runs belong to `<issuer>#<owner>`.
        issuer: vars
            .get("FHIR_EXPORT_AUTH_ISSUER")
            .filter(|i| !i.is_empty())
            .cloned(),
    });
    Some(Stack {
        base: format!("{public}/fhir"),
        http: reqwest::Client::new(),
        source: read_source(dir.path()),
        worker,
        work,
        dead,
        work_arn,
        dead_arn,
        jobs,
        table,
        source_objects,
        output,
        output_bucket,
        exports,
        stop,
        config,
        apps,
        _data: dir,
    })
}

/// An SQS event as Lambda builds it from received messages.
pub fn sqs_event(messages: &[aws_sdk_sqs::types::Message], arn: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .cloned()
                .unwrap_or_else(|| "1".into());
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": {
                    "ApproximateReceiveCount": count,
                    "SentTimestamp": "1700000000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1700000000000"
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

impl Stack {
    /// The same stack with its worker announcing the end of each export on `events` (the
    /// deployed worker's `FHIR_EXPORT_EVENT_BUS`); call before [`Stack::spawn_harness`].
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        let old = &self.worker;
        self.worker = Arc::new(worker::Worker {
            deps: WorkerDeps {
                events,
                ..old.deps.clone()
            },
            dead_letters: old.dead_letters.clone(),
            idle: old.idle.clone(),
            issuer: old.issuer.clone(),
        });
        self
    }

    /// Receives up to `max` messages of the work queue and hands them to the worker in one
    /// event, deleting those it did not report as failed (as the event source mapping does);
    /// with `dead`, drains the dead-letter queue as the sweep does. Returns how many were
    /// received (dead letters: handled).
    pub async fn pump(&self, dead: bool, max: i32) -> usize {
        self.pump_with(&self.worker, dead, max).await
    }

    /// [`Stack::pump`] into another worker (one whose clients differ, say).
    pub async fn pump_with(&self, worker: &worker::Worker, dead: bool, max: i32) -> usize {
        if dead {
            let batches = usize::try_from(max).unwrap().div_ceil(10);
            return worker.drain_dead_letters(batches).await.unwrap();
        }
        let q = &self.work;
        let got = q
            .client()
            .receive_message()
            .queue_url(q.url())
            .max_number_of_messages(max)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return 0;
        }
        let response = worker
            .handle(sqs_event(&got, &self.work_arn))
            .await
            .unwrap();
        let failed: BTreeSet<String> = response["batchItemFailures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
            .collect();
        for m in &got {
            if !failed.contains(m.message_id().unwrap()) {
                q.delete(m.receipt_handle().unwrap()).await.unwrap();
            }
        }
        got.len()
    }

    /// Runs the "Lambda" until the stop token is cancelled.
    pub fn spawn_harness(self: &Arc<Self>) -> CancellationToken {
        let stop = CancellationToken::new();
        let me = self.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            while !token.is_cancelled() {
                me.pump(false, 1).await;
                me.pump(true, 10).await;
            }
        });
        stop
    }

    pub async fn kickoff(&self, path: &str, query: &str) -> String {
        let resp = self
            .http
            .get(format!("{}{path}?{query}", self.base))
            .header("Prefer", "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
        content_location(resp.headers())
    }

    pub async fn finish(&self, status: &str) -> reqwest::Response {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let resp = self.http.get(status).send().await.unwrap();
            if resp.status() != 202 {
                return resp;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "export did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Downloads every output file (through the files route's 307 to a presigned URL).
    pub async fn download(&self, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for item in manifest["output"].as_array().unwrap() {
            let body = self
                .http
                .get(item["url"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(body.status(), 200);
            add_file(&mut out, item, &body.text().await.unwrap());
        }
        out
    }

    /// The worker as Lambda would run it, with every AWS client pointed at `endpoint` (a
    /// recorder in front of moto, say).
    pub async fn worker_through(&self, endpoint: &str) -> worker::Worker {
        // An explicit endpoint: the environment's (moto's) is then ignored.
        let through = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .load()
            .await;
        let source_bucket = self.source_objects.location().bucket.clone();
        let source = Arc::new(S3Store::new(
            &through,
            S3Location::parse(&format!("s3://{source_bucket}/data/")).unwrap(),
        ));
        let deps = WorkerDeps {
            jobs: Arc::new(DynamoJobStore::new(&through, &self.table)),
            queue: Arc::new(SqsQueue::new(&through, self.work.url())),
            output: Arc::new(S3Store::new(
                &through,
                S3Location::parse(&format!("s3://{}/exports/", self.output_bucket)).unwrap(),
            )),
            source: Arc::new(NdjsonSource::new(source, "")),
            ..self.worker.deps.clone()
        };
        worker::Worker {
            deps,
            dead_letters: None,
            idle: None,
            issuer: None,
        }
    }

    pub async fn objects(&self, prefix: &str) -> usize {
        self.exports.list(prefix).await.unwrap().len()
    }
}

/// Adds the resources of one output file (`item` of a manifest, `text` its body) to `out`,
/// by type, checking the manifest's count and type.
pub fn add_file(out: &mut BTreeMap<String, Vec<Value>>, item: &Value, text: &str) {
    assert_eq!(text.lines().count() as u64, item["count"].as_u64().unwrap());
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["resourceType"], item["type"]);
        out.entry(v["resourceType"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
}

/// An HTTP function's answer to an API Gateway event.
pub struct Reply {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    /// The JSON body; a non-JSON body as a string; `Null` when empty.
    pub body: Value,
}

/// Runs an API Gateway (HTTP API, payload 2.0) event through a function's router as
/// `lambda_http::run` would.
pub async fn invoke_api(app: &Router, event: &str) -> Reply {
    use tower::ServiceExt;
    let request = lambda_http::request::from_str(event).expect("an API Gateway event");
    let request = request.map(|body| axum::body::Body::from(body.to_vec()));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

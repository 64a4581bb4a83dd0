//! The idle pause against moto: the work queue's event source mapping (Lambda) and the sweep's
//! schedule rule (EventBridge) are paused by the sweep when nothing is left to do, resumed by
//! a kick-off and by the plan of an export, and never paused under an active export or a
//! queued message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_eventbridge::types::RuleState;
use axum::extract::Request;
use integration_tests::aws::{Stack, stack};
use integration_tests::unique;
use reqwest::Method;
use serde_json::{Value, json};
use shared::adapters::aws::control::{Call, ControlPlane};
use shared::adapters::aws::idle::{ActivityMark, IdleState, IdleSwitch, WakingQueue};
use shared::adapters::aws::sdk_config;
use shared::http::KickoffState;
use shared::ports::{JobStore, WorkQueue};
use shared::request::Capabilities;
use tower::ServiceExt;

/// The deployed pieces the pause acts on: a function with an event source mapping from the
/// work queue, and a schedule rule.
struct Deployed {
    control: ControlPlane,
    events: aws_sdk_eventbridge::Client,
    function: String,
    mapping: String,
    rule: String,
}

/// A Lambda API call on moto.
async fn lambda(control: &ControlPlane, method: Method, path: &str, body: Option<Value>) -> Value {
    control
        .call(Call {
            service: "lambda",
            operation: "test",
            method,
            path: &format!("/2015-03-31/{path}"),
            target: None,
            body,
        })
        .await
        .unwrap()
}

impl Deployed {
    async fn new(stack: &Stack) -> Deployed {
        let aws = sdk_config().await;
        let moto = std::env::var("FHIR_EXPORT_MOTO_URL").unwrap();
        // Lambda needs a role it can assume; moto checks that it exists.
        let role = unique("role");
        let created = reqwest::Client::new()
            .post(format!("{moto}/"))
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "Action=CreateRole&RoleName={role}&AssumeRolePolicyDocument=%7B%7D&Version=2010-05-08"
            ))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{:?}", created.text().await);
        let control = ControlPlane::new(&aws);
        let function = unique("worker");
        // An empty zip: moto keeps the code but never runs it here.
        let mut zip = b"PK\x05\x06".to_vec();
        zip.extend([0u8; 18]);
        use base64::Engine as _;
        lambda(
            &control,
            Method::POST,
            "functions",
            Some(json!({
                "FunctionName": function,
                "Runtime": "provided.al2023",
                "Role": format!("arn:aws:iam::123456789012:role/{role}"),
                "Handler": "bootstrap",
                "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip) },
            })),
        )
        .await;
        let mapping = lambda(
            &control,
            Method::POST,
            "event-source-mappings/",
            Some(json!({
                "FunctionName": function,
                "EventSourceArn": stack.work_arn,
                "BatchSize": 1,
            })),
        )
        .await["UUID"]
            .as_str()
            .unwrap()
            .to_owned();
        let events = aws_sdk_eventbridge::Client::new(&aws);
        let rule = unique("sweep");
        events
            .put_rule()
            .name(&rule)
            .schedule_expression("rate(5 minutes)")
            .state(RuleState::Enabled)
            .send()
            .await
            .unwrap();
        Deployed {
            control,
            events,
            function,
            mapping,
            rule,
        }
    }

    /// The switch as the worker builds it: watching both queues, with the sweep's rule.
    async fn worker_switch(&self, stack: &Stack, quiet: Duration) -> Arc<IdleSwitch> {
        let aws = sdk_config().await;
        Arc::new(
            IdleSwitch::new(
                &aws,
                (*stack.jobs).clone(),
                &self.function,
                &stack.work_arn,
                quiet,
            )
            .watching(vec![stack.work.clone(), stack.dead.clone()])
            .with_sweep_rule(&self.rule),
        )
    }

    /// The switch as the kick-off builds it.
    async fn kickoff_switch(&self, stack: &Stack) -> Arc<IdleSwitch> {
        let aws = sdk_config().await;
        Arc::new(IdleSwitch::new(
            &aws,
            (*stack.jobs).clone(),
            &self.function,
            &stack.work_arn,
            Duration::from_secs(600),
        ))
    }

    async fn mapping_state(&self) -> String {
        lambda(
            &self.control,
            Method::GET,
            &format!("event-source-mappings/{}", self.mapping),
            None,
        )
        .await["State"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn rule_state(&self) -> RuleState {
        self.events
            .describe_rule()
            .name(&self.rule)
            .send()
            .await
            .unwrap()
            .state
            .unwrap()
    }

    async fn set_mapping(&self, enabled: bool) {
        lambda(
            &self.control,
            Method::PUT,
            &format!("event-source-mappings/{}", self.mapping),
            Some(json!({ "Enabled": enabled })),
        )
        .await;
    }
}

/// The stack's worker with the idle pause, as `Worker::from_env` builds it.
fn paused_worker(stack: &Stack, switch: Arc<IdleSwitch>) -> worker::Worker {
    worker::Worker {
        deps: shared::worker::WorkerDeps {
            queue: Arc::new(WakingQueue::marking(
                Arc::new(stack.work.clone()),
                switch.marks(),
            )),
            ..stack.worker.deps.clone()
        },
        dead_letters: Some(stack.dead.clone()),
        idle: Some(switch),
        issuer: None,
    }
}

/// A kick-off through the kick-off function's router with the idle pause; the status URL.
async fn kick_off(stack: &Stack, switch: Arc<IdleSwitch>) -> String {
    let response = kick_off_response(stack, switch).await;
    assert_eq!(response.status(), 202);
    response
        .headers()
        .get("Content-Location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

async fn kick_off_response(
    stack: &Stack,
    switch: Arc<IdleSwitch>,
) -> axum::http::Response<axum::body::Body> {
    let state = KickoffState {
        jobs: stack.jobs.clone(),
        queue: Arc::new(WakingQueue::resuming(Arc::new(stack.work.clone()), switch)),
        source: stack.worker.deps.source.clone(),
        settings: stack.worker.deps.settings.clone(),
        caps: Capabilities::CURRENT,
        schedules: Default::default(),
    };
    let app = kickoff::app(state, &stack.config);
    app.oneshot(
        Request::get("/fhir/$export?_type=Patient")
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap()
}

async fn sweep(worker: &worker::Worker) -> Value {
    worker
        .handle(serde_json::json!({
            "source": "aws.events",
            "detail-type": "Scheduled Event",
            "detail": {}
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idle_stack_pauses_and_a_kickoff_resumes_it() {
    let Some(stack) = stack(3, &[], 3).await else {
        return;
    };
    let stack = Arc::new(stack);
    let deployed = Deployed::new(&stack).await;
    let switch = deployed.worker_switch(&stack, Duration::ZERO).await;
    let worker = paused_worker(&stack, switch.clone());

    // Nothing ever ran: the sweep pauses the mapping and its own rule.
    assert_eq!(deployed.mapping_state().await, "Enabled");
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "paused", "{report}");
    assert_eq!(deployed.mapping_state().await, "Disabled");
    assert_eq!(deployed.rule_state().await, RuleState::Disabled);

    // A kick-off marks its work and resumes the mapping before it queues the plan.
    let status = kick_off(&stack, deployed.kickoff_switch(&stack).await).await;
    assert_eq!(deployed.mapping_state().await, "Enabled");
    assert!(stack.jobs.last_activity().await.unwrap().is_some());
    // The worker's plan resumes the sweep.
    assert_eq!(stack.pump_with(&worker, false, 1).await, 1);
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);
    // While the export runs, the sweep leaves everything on.
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "busy", "{report}");
    assert_eq!(deployed.mapping_state().await, "Enabled");

    // The export completes and its end is announced (the notify message).
    let id = status.rsplit('/').next().unwrap().to_owned();
    for _ in 0..200 {
        if stack.pump_with(&worker, false, 1).await == 0 && stack.work.depth().await.unwrap() == 0 {
            break;
        }
    }
    let job = stack
        .jobs
        .get(&shared::model::JobId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state.as_str(), "completed");

    // Done, but its files are kept until they expire: the mapping pauses, the sweep runs on.
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "mapping paused", "{report}");
    assert_eq!(deployed.mapping_state().await, "Disabled");
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);
}

/// The announcement of an export that does not exist: handled (and dropped) without effect.
const STRAY_NOTIFY: &str = r#"{"v":1,"type":"notify","job":"0123456789abcdef0123456789abcdef"}"#;

#[tokio::test]
async fn the_sweep_never_pauses_under_work() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    let deployed = Deployed::new(&stack).await;
    let switch = deployed.worker_switch(&stack, Duration::ZERO).await;
    let worker = paused_worker(&stack, switch);

    // A message waits (here a stray one, as a just-finished export's announcement would):
    // not idle.
    stack
        .work
        .send("stray", vec![STRAY_NOTIFY.into()])
        .await
        .unwrap();
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "busy", "{report}");
    assert_eq!(deployed.mapping_state().await, "Enabled");
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);
    while stack.pump_with(&worker, false, 10).await > 0 {}

    // A dead letter waits: the sweep drains it first, then finds nothing left.
    stack
        .dead
        .send("stray", vec![STRAY_NOTIFY.into()])
        .await
        .unwrap();
    let report = sweep(&worker).await;
    assert_eq!(report["dead_letters"], 1, "{report}");
    assert_eq!(report["idle"], "paused", "{report}");

    // An active export whose mapping was paused anyway (by hand, here): the sweep turns it
    // back on, and its rule.
    stack.kickoff("/$export", "_type=Patient").await;
    deployed.set_mapping(false).await;
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "busy", "{report}");
    assert_eq!(deployed.mapping_state().await, "Enabled");
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);
}

#[tokio::test]
async fn work_queued_within_the_quiet_period_keeps_the_mapping_on() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    let deployed = Deployed::new(&stack).await;
    let worker = paused_worker(
        &stack,
        deployed
            .worker_switch(&stack, Duration::from_secs(600))
            .await,
    );
    // Work was queued a moment ago (and is already done): the sweep waits out the quiet
    // period before it pauses anything.
    stack.jobs.mark_activity(chrono::Utc::now()).await.unwrap();
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "quieting", "{report}");
    assert_eq!(deployed.mapping_state().await, "Enabled");
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);

    // Ten minutes later it pauses.
    stack
        .jobs
        .mark_activity(chrono::Utc::now() - chrono::Duration::minutes(11))
        .await
        .unwrap();
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "paused", "{report}");
    assert_eq!(deployed.mapping_state().await, "Disabled");
}

#[tokio::test]
async fn a_cancel_marks_its_announcement_before_queueing_it() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    let status = stack.kickoff("/$export", "_type=Patient").await;
    let before = stack.jobs.last_activity().await.unwrap();
    let app = cancel::app(
        stack.jobs.clone(),
        stack.exports.clone(),
        Arc::new(WakingQueue::marking(
            Arc::new(stack.work.clone()),
            Arc::new(ActivityMark::new((*stack.jobs).clone())),
        )),
        &stack.config,
    );
    let path = status.split_once("/fhir/").unwrap().1;
    let response = app
        .oneshot(
            Request::delete(format!("/fhir/{path}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let after = stack.jobs.last_activity().await.unwrap();
    assert!(
        after.is_some() && after != before,
        "{before:?} -> {after:?}"
    );
    // The announcement is queued (with the plan the kick-off queued).
    assert_eq!(stack.work.depth().await.unwrap(), 2);
}

#[tokio::test]
async fn a_kickoff_racing_the_pause_ends_with_the_mapping_on() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    let deployed = Deployed::new(&stack).await;
    // A kick-off's mark lands between the sweep's look at the mark and its pause of the
    // mapping: the proxy in front of moto makes it when the disable goes by.
    let racer = (*stack.jobs).clone();
    let hook: integration_tests::recorder::Hook = Arc::new(move |method, path, body| {
        let racer = racer.clone();
        Box::pin(async move {
            if method == "PUT"
                && path.starts_with("/2015-03-31/event-source-mappings/")
                && String::from_utf8_lossy(&body).contains("\"Enabled\":false")
            {
                racer.mark_activity(chrono::Utc::now()).await.unwrap();
            }
        })
    });
    let moto = std::env::var("FHIR_EXPORT_MOTO_URL").unwrap();
    let proxy = integration_tests::recorder::Recorder::start_with(&moto, Some(hook)).await;
    let through_proxy = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&proxy.url)
        .load()
        .await;
    let switch = Arc::new(
        IdleSwitch::new(
            &through_proxy,
            shared::adapters::aws::dynamodb::DynamoJobStore::new(&through_proxy, &stack.table),
            &deployed.function,
            &stack.work_arn,
            Duration::ZERO,
        )
        .watching(vec![stack.work.clone(), stack.dead.clone()])
        .with_sweep_rule(&deployed.rule),
    );
    assert_eq!(
        switch.pause_if_idle(chrono::Utc::now()).await.unwrap(),
        IdleState::Resumed
    );
    assert_eq!(deployed.mapping_state().await, "Enabled");
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);
}

#[tokio::test]
async fn a_sweep_with_nothing_to_do_makes_nine_billed_requests_and_no_long_poll() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    let deployed = Deployed::new(&stack).await;
    // An export is kept (finished): the sweep must go on running to expire it.
    let status = stack.kickoff("/$export", "_type=Patient").await;
    while stack.pump(false, 10).await > 0 {}
    assert_eq!(stack.finish(&status).await.status(), 200);

    // The worker's every client through a recording proxy in front of moto.
    let moto = std::env::var("FHIR_EXPORT_MOTO_URL").unwrap();
    let proxy = integration_tests::recorder::Recorder::start(&moto).await;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&proxy.url)
        .load()
        .await;
    let jobs = shared::adapters::aws::dynamodb::DynamoJobStore::new(&aws, &stack.table);
    let work = shared::adapters::aws::sqs::SqsQueue::new(&aws, stack.work.url());
    let dead = shared::adapters::aws::sqs::SqsQueue::new(&aws, stack.dead.url());
    let switch = Arc::new(
        IdleSwitch::new(
            &aws,
            jobs.clone(),
            &deployed.function,
            &stack.work_arn,
            Duration::ZERO,
        )
        .watching(vec![work.clone(), dead.clone()])
        .with_sweep_rule(&deployed.rule),
    );
    let worker = worker::Worker {
        deps: shared::worker::WorkerDeps {
            jobs: Arc::new(jobs),
            queue: Arc::new(WakingQueue::marking(Arc::new(work), switch.marks())),
            ..stack.worker.deps.clone()
        },
        dead_letters: Some(dead),
        idle: Some(switch),
        issuer: None,
    };
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "mapping paused", "{report}");
    let first = proxy.recorded();
    // Again, as every later sweep of a warm worker finds it (the mapping's id is known).
    let report = sweep(&worker).await;
    assert_eq!(report["idle"], "mapping paused", "{report}");
    let total = proxy.recorded();
    let of = |service: &str, op: &str| total.of(service, op) - first.of(service, op);
    // The depth of the dead letters (before draining), then of both queues: no receive, so
    // no long poll billed as the sweep's duration.
    assert_eq!(of("sqs", "GetQueueAttributes"), 3);
    assert_eq!(of("sqs", "ReceiveMessage"), 0);
    // Stalled and expired exports, then "any active?" and "any kept?" (one item each), and
    // the mark read before and after the pause.
    assert_eq!(of("dynamodb", "Query"), 4);
    assert_eq!(of("dynamodb", "GetItem"), 2);
    let sqs_and_dynamodb: u64 = ["sqs", "dynamodb"]
        .iter()
        .map(|s| {
            total.requests[*s].values().sum::<u64>() - first.requests[*s].values().sum::<u64>()
        })
        .sum();
    assert_eq!(sqs_and_dynamodb, 9, "{total:?}");
    // Nothing on EventBridge: the rule stays on while the export is kept.
    assert_eq!(
        total
            .requests
            .get("eventbridge")
            .map_or(0, |m| m.values().sum::<u64>()),
        0
    );
    assert_eq!(deployed.rule_state().await, RuleState::Enabled);
}

/// What moto cannot check: the request that leaves is the request that was signed. A server
/// takes each call as it arrives, signs it again with the same key and time, and compares.
#[tokio::test]
async fn control_plane_calls_are_signed_as_sent() {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};

    type Seen = Arc<std::sync::Mutex<Vec<(String, String, axum::http::HeaderMap, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |req: Request| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                seen.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.to_string(),
                    parts.headers,
                    body.to_vec(),
                ));
                axum::Json(json!({ "State": "Enabled" }))
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = aws_config::SdkConfig::builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token".into()),
            None,
            "test",
        )))
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(&base)
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let control = ControlPlane::new(&config);
    let arn = "arn:aws:sqs:eu-west-1:123456789012:work queue";
    let calls = [
        Call {
            service: "lambda",
            operation: "ListEventSourceMappings",
            method: Method::GET,
            path: &format!(
                "/2015-03-31/event-source-mappings/?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("FunctionName", "worker")
                    .append_pair("EventSourceArn", arn)
                    .finish()
            ),
            target: None,
            body: None,
        },
        Call {
            service: "lambda",
            operation: "UpdateEventSourceMapping",
            method: Method::PUT,
            path: "/2015-03-31/event-source-mappings/0123-abcd",
            target: None,
            body: Some(json!({ "Enabled": false })),
        },
        Call {
            service: "events",
            operation: "DisableRule",
            method: Method::POST,
            path: "/",
            target: Some("AWSEvents.DisableRule"),
            body: Some(json!({ "Name": "stack-sweep" })),
        },
    ];
    for call in calls {
        control.call(call).await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for ((method, uri, headers, body), service) in seen.iter().zip(["lambda", "lambda", "events"]) {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let authorization = header("authorization");
        let (scope, signature) = authorization.split_once(", Signature=").unwrap();
        assert!(
            scope.contains(&format!("/eu-west-1/{service}/aws4_request")),
            "{scope}"
        );
        assert_eq!(header("x-amz-security-token"), "session-token");
        // Signed again from what arrived: the host and port, the path and query as sent, the
        // signed headers' values as received, the body's bytes.
        let signed: Vec<&str> = scope
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(';')
            .filter(|h| *h != "host")
            .collect();
        let values: Vec<(String, String)> =
            signed.iter().map(|h| (h.to_string(), header(h))).collect();
        let time = chrono::NaiveDateTime::parse_from_str(&header("x-amz-date"), "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc();
        let identity = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token".into()),
            None,
            "test",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-west-1")
            .name(service)
            .time(std::time::SystemTime::from(time))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let url = format!("{base}{uri}");
        let request = SignableRequest::new(
            method,
            &url,
            values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (_, expected) = sign(request, &params).unwrap().into_parts();
        assert_eq!(signature, expected, "{method} {uri}");
    }
    // The query arrived encoded as signed (the ARN's `:` and the space).
    assert!(
        seen[0].1.contains("EventSourceArn=arn%3Aaws%3Asqs"),
        "{}",
        seen[0].1
    );
    assert_eq!(
        seen[2].2.get("x-amz-target").unwrap(),
        "AWSEvents.DisableRule"
    );
}

#[tokio::test]
async fn a_kickoff_that_cannot_resume_the_worker_is_refused_and_leaves_no_job() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    // No event source mapping from the work queue to this function: nothing would ever run
    // the plan.
    let aws = sdk_config().await;
    let switch = Arc::new(IdleSwitch::new(
        &aws,
        (*stack.jobs).clone(),
        "no-such-worker",
        &stack.work_arn,
        Duration::from_secs(600),
    ));
    let response = kick_off_response(&stack, switch).await;
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let outcome: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(!stack.jobs.any_job().await.unwrap(), "no half-created job");
    assert_eq!(stack.work.depth().await.unwrap(), 0, "no plan queued");
}

#[tokio::test]
async fn an_unreadable_dead_letter_queue_does_not_stop_the_sweep() {
    let Some(stack) = stack(2, &[], 3).await else {
        return;
    };
    let aws = sdk_config().await;
    let worker = worker::Worker {
        deps: stack.worker.deps.clone(),
        dead_letters: Some(shared::adapters::aws::sqs::SqsQueue::new(
            &aws,
            &format!("{}-gone", stack.dead.url()),
        )),
        idle: None,
        issuer: None,
    };
    let report = sweep(&worker).await;
    assert_eq!(report["dead_letters"], Value::Null, "{report}");
    assert_eq!(report["restarted"], 0, "{report}");
    assert_eq!(report["expired"], 0, "{report}");
}

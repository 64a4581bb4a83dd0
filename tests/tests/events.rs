//! The sample events in `events/` drive the real function handlers: API Gateway HTTP API
//! (payload 2.0) events through `lambda_http`'s own conversion into each function's router,
//! and SQS / EventBridge events through the worker's handler — against moto server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use axum::Router;
use integration_tests::aws::{Stack, stack};
use serde_json::Value;
use shared::ports::{JobStore, WorkQueue};

fn event(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../events")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("events/{name}: {e}"))
}

/// Runs an API Gateway event through a router as `lambda_http::run` would.
async fn invoke(app: &Router, name: &str) -> (u16, axum::http::HeaderMap, Value) {
    let r = integration_tests::aws::invoke_api(app, &event(name)).await;
    (r.status, r.headers, r.body)
}

async fn setup() -> Option<Stack> {
    stack(12, &[], 5).await
}

#[tokio::test]
async fn api_gateway_events_drive_the_http_functions() {
    let Some(s) = setup().await else { return };

    let (status, headers, _) = invoke(&s.apps.kickoff, "kickoff-system-get.json").await;
    assert_eq!(status, 202);
    let location = headers["content-location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/_export/", s.base)),
        "{location}"
    );

    let (status, _, oo) = invoke(&s.apps.kickoff, "kickoff-bad-since.json").await;
    assert_eq!(status, 400);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["expression"][0], "_since");

    // POST with a JWT authorizer context: the job belongs to that client.
    let (status, headers, _) = invoke(&s.apps.kickoff, "kickoff-group-post.json").await;
    assert_eq!(status, 202);
    let location = headers["content-location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap();
    let job = s
        .jobs
        .as_ref()
        .get(&shared::model::JobId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.owner, "https://auth.example.org/#client-1");
    assert_eq!(job.request.types.as_deref().map(|t| t.len()), Some(1));
    // ... and nobody else sees it: an anonymous poll gets 404.
    let anonymous = s.http.get(&location).send().await.unwrap();
    assert_eq!(anonymous.status(), 404);

    let (status, _, oo) = invoke(&s.apps.status, "status-get.json").await;
    assert_eq!(status, 404);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (status, _, oo) = invoke(&s.apps.cancel, "cancel-delete.json").await;
    assert_eq!(status, 404);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let (status, headers, cs) = invoke(&s.apps.kickoff, "metadata-get.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/fhir+json");
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    s.stop.cancel();
}

#[tokio::test]
async fn sqs_and_schedule_events_drive_the_worker() {
    let Some(s) = setup().await else { return };
    // A plan for a job that does not exist and a message of an unknown version: neither can
    // ever succeed, so neither is reported for redelivery.
    let response = s
        .worker
        .handle(serde_json::from_str(&event("worker-sqs-plan.json")).unwrap())
        .await
        .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));

    // A dead letter waits in the dead-letter queue; the schedule runs the sweep, which
    // drains it: it fails its job. Here the job exists and runs.
    let status = s.kickoff("/$export", "_type=Patient").await;
    let id = status.rsplit('/').next().unwrap().to_owned();
    s.dead
        .send(
            &id,
            vec![format!(
                r#"{{"v":1,"type":"chunk","job":"{id}","chunk":0}}"#
            )],
        )
        .await
        .unwrap();
    let response = s
        .worker
        .handle(serde_json::from_str(&event("worker-schedule.json")).unwrap())
        .await
        .unwrap();
    assert_eq!(response["dead_letters"], 1, "{response}");
    assert!(response.get("restarted").is_some(), "{response}");
    let resp = s.http.get(&status).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let oo: Value = resp.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("chunk 0")
    );
    assert_eq!(
        s.dead.depth().await.unwrap(),
        0,
        "the dead letter is deleted"
    );
    s.stop.cancel();
}

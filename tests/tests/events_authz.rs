//! Access control as the Lambda functions see it: API Gateway HTTP API (payload 2.0) events
//! carrying a JWT authorizer's claims (`events/authz-*.json`), run through `lambda_http`'s own
//! conversion into the real kick-off, status and cancel routers, against moto server. The
//! claims name the caller (`<iss>#<client_id>`) and its SMART scopes; the job ids (and, where
//! a test needs another caller, the claims) are put into the events at run time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use integration_tests::aws::{Reply, Stack, invoke_api, stack};
use serde_json::Value;
use shared::model::{JobId, ResourceType};
use shared::ports::JobStore;

/// The caller the `authz-*` events carry.
const CLIENT_A: &str = "https://auth.example#client-a";
/// The scope of the `authz-*` events.
const SCOPE_A: &str = "system/Patient.rs system/Observation.rs";
/// The job id the status, cancel and file events are written with.
const SAMPLE_JOB: &str = "0123456789abcdef0123456789abcdef";

fn event(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("events/{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("events/{name}: {e}"))
}

/// The event with `job` in place of the sample job id: `rawPath`, `requestContext.http.path`
/// and `pathParameters.job`, as API Gateway would have filled them in.
fn for_job(mut e: Value, job: &str) -> Value {
    let path = e["rawPath"].as_str().unwrap().replace(SAMPLE_JOB, job);
    assert!(path.contains(job), "{path}");
    e["rawPath"] = Value::String(path.clone());
    e["requestContext"]["http"]["path"] = Value::String(path);
    if let Some(p) = e.get_mut("pathParameters").and_then(|p| p.get_mut("job")) {
        *p = Value::String(job.to_owned());
    }
    e
}

/// The event with claim `name` set (`Some`) or removed (`None`).
fn claim(mut e: Value, name: &str, value: Option<&str>) -> Value {
    let claims = e["requestContext"]["authorizer"]["jwt"]["claims"]
        .as_object_mut()
        .expect("an event with JWT authorizer claims");
    match value {
        Some(v) => {
            claims.insert(name.to_owned(), Value::String(v.to_owned()));
        }
        None => {
            claims.remove(name);
        }
    }
    e
}

/// The event as client `id` of the same issuer (`client_id` and `sub`).
fn as_client(e: Value, id: &str) -> Value {
    claim(claim(e, "client_id", Some(id)), "sub", Some(id))
}

fn with_header(mut e: Value, name: &str, value: &str) -> Value {
    e["headers"][name] = Value::String(value.to_owned());
    e
}

/// Runs an API Gateway event through a router as `lambda_http::run` would.
async fn invoke(app: &Router, e: &Value) -> Reply {
    invoke_api(app, &e.to_string()).await
}

/// A kick-off that must be accepted; the job id of its `Content-Location`.
async fn accepted(s: &Stack, e: &Value) -> String {
    let r = invoke(&s.apps.kickoff, e).await;
    assert_eq!(r.status, 202, "{}", r.body);
    job_of(&r)
}

fn job_of(r: &Reply) -> String {
    let location = r.headers["content-location"].to_str().unwrap();
    location.rsplit('/').next().unwrap().to_owned()
}

async fn stored(s: &Stack, id: &str) -> shared::job::Job {
    s.jobs
        .as_ref()
        .get(&JobId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {id} is not in the store"))
}

fn types(names: &[&str]) -> BTreeSet<ResourceType> {
    names
        .iter()
        .map(|n| ResourceType::parse(n).unwrap())
        .collect()
}

/// The first issue of an `OperationOutcome`.
fn issue(r: &Reply) -> &Value {
    assert_eq!(r.body["resourceType"], "OperationOutcome", "{}", r.body);
    &r.body["issue"][0]
}

fn diagnostics(r: &Reply) -> &str {
    issue(r)["diagnostics"].as_str().unwrap_or("")
}

#[tokio::test]
async fn kickoff_without_type_exports_the_permitted_types() {
    let Some(s) = stack(4, &[], 5).await else {
        return;
    };
    let id = accepted(&s, &event("authz-kickoff-system-get.json")).await;
    let job = stored(&s, &id).await;
    // The authorizer's claims really reached the handler: the job is client-a's.
    assert_eq!(job.owner, CLIENT_A);
    assert_eq!(job.request.types, None);
    assert_eq!(
        job.request.scope,
        Some(types(&["Observation", "Patient"])),
        "the export covers exactly the types of {SCOPE_A}"
    );
    s.stop.cancel();
}

#[tokio::test]
async fn types_outside_the_scopes_are_refused_or_dropped() {
    let Some(s) = stack(4, &[], 5).await else {
        return;
    };
    // Strict handling (the default): 403, naming the type.
    let r = invoke(
        &s.apps.kickoff,
        &event("authz-kickoff-type-denied-get.json"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(issue(&r)["code"], "forbidden");
    assert!(diagnostics(&r).contains("Condition"), "{}", r.body);
    assert!(s.jobs.active_of(CLIENT_A).await.unwrap().is_empty());

    // Lenient handling: Condition is dropped with a warning, Patient is exported.
    let id = accepted(&s, &event("authz-kickoff-lenient-get.json")).await;
    let job = stored(&s, &id).await;
    assert_eq!(job.owner, CLIENT_A);
    assert_eq!(
        job.request.types,
        Some(vec![ResourceType::parse("Patient").unwrap()])
    );
    assert!(
        job.request
            .ignored
            .iter()
            .any(|i| i.diagnostics.contains("Condition")),
        "{:?}",
        job.request.ignored
    );
    assert!(
        !job.request
            .ignored
            .iter()
            .any(|i| i.diagnostics.contains("Patient")),
        "{:?}",
        job.request.ignored
    );
    s.stop.cancel();
}

/// Polls client-a's job `id` until it is no longer running.
async fn finish(s: &Stack, id: &str) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let poll = for_job(event("authz-status-get.json"), id);
    loop {
        let r = invoke(&s.apps.status, &poll).await;
        if r.status != 202 {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "export did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn another_clients_job_is_not_found() {
    let Some(s) = stack(4, &[], 5).await else {
        return;
    };
    let s = Arc::new(s);
    let id = accepted(&s, &event("authz-kickoff-system-get.json")).await;
    let unknown = JobId::new().as_str().to_owned();
    let status = event("authz-status-get.json");
    let cancel = event("authz-cancel-delete.json");
    let file = event("authz-file-get.json");

    // Client-b gets for client-a's job what it gets for a job that does not exist.
    let b = |e: &Value, job: &str| as_client(for_job(e.clone(), job), "client-b");
    for (app, e, what) in [
        (&s.apps.status, &status, "status"),
        (&s.apps.cancel, &cancel, "cancel"),
        (&s.apps.status, &file, "file"),
    ] {
        let theirs = invoke(app, &b(e, &id)).await;
        let none = invoke(app, &b(e, &unknown)).await;
        assert_eq!(theirs.status, 404, "{what}: {}", theirs.body);
        assert_eq!(none.status, 404, "{what}: {}", none.body);
        assert_eq!(theirs.body, none.body, "{what}");
        assert_eq!(issue(&theirs)["code"], "not-found", "{what}");
        assert_eq!(
            theirs.headers.get("content-type"),
            none.headers.get("content-type"),
            "{what}"
        );
    }

    // Client-a sees its running export.
    let r = invoke(&s.apps.status, &for_job(status.clone(), &id)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.headers.contains_key("x-progress"));

    // Once complete, client-a's file URL answers (a redirect to a presigned URL); client-b's
    // still does not.
    let harness = s.spawn_harness();
    let done = finish(&s, &id).await;
    harness.cancel();
    assert_eq!(done.status, 200, "{}", done.body);
    let names: Vec<&str> = done.body["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["url"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert!(names.contains(&"Patient-1.ndjson"), "{names:?}");
    let r = invoke(&s.apps.status, &for_job(file.clone(), &id)).await;
    assert_eq!(r.status, 307, "{}", r.body);
    assert!(r.headers.contains_key("location"));
    let theirs = invoke(&s.apps.status, &b(&file, &id)).await;
    let none = invoke(&s.apps.status, &b(&file, &unknown)).await;
    assert_eq!(theirs.status, 404);
    assert_eq!(theirs.body, none.body);
    let theirs = invoke(&s.apps.status, &b(&status, &id)).await;
    assert_eq!(theirs.status, 404);

    // Client-b cannot cancel it either; client-a can.
    let theirs = invoke(&s.apps.cancel, &b(&cancel, &id)).await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    assert_eq!(stored(&s, &id).await.state.as_str(), "completed");
    let r = invoke(&s.apps.cancel, &for_job(cancel.clone(), &id)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    s.stop.cancel();
}

#[tokio::test]
async fn narrower_scopes_later_are_forbidden() {
    let Some(s) = stack(4, &[], 5).await else {
        return;
    };
    let id = accepted(&s, &event("authz-kickoff-system-get.json")).await;
    let narrower = |name: &str| {
        claim(
            for_job(event(name), &id),
            "scope",
            Some("system/Patient.rs"),
        )
    };
    let r = invoke(&s.apps.status, &narrower("authz-status-get.json")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(issue(&r)["code"], "forbidden");
    assert!(diagnostics(&r).contains("Observation"), "{}", r.body);
    let r = invoke(&s.apps.status, &narrower("authz-file-get.json")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = invoke(&s.apps.cancel, &narrower("authz-cancel-delete.json")).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The scopes of the kick-off, or wider ones, still see it.
    let same = for_job(event("authz-status-get.json"), &id);
    assert_eq!(invoke(&s.apps.status, &same).await.status, 202);
    let wider = claim(same, "scope", Some("system/*.read"));
    assert_eq!(invoke(&s.apps.status, &wider).await.status, 202);
    s.stop.cancel();
}

#[tokio::test]
async fn a_token_without_a_client_id_is_refused() {
    let Some(s) = stack(4, &[], 5).await else {
        return;
    };
    let r = invoke(&s.apps.kickoff, &event("authz-kickoff-no-client-get.json")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(issue(&r)["code"], "forbidden");
    // `sub` alone names the client.
    let with_sub = claim(
        event("authz-kickoff-no-client-get.json"),
        "sub",
        Some("client-a"),
    );
    let id = accepted(&s, &with_sub).await;
    assert_eq!(stored(&s, &id).await.owner, CLIENT_A);
    s.stop.cancel();
}

#[tokio::test]
async fn identical_kickoffs_are_reused_and_active_exports_limited() {
    let Some(s) = stack(4, &[("FHIR_EXPORT_MAX_ACTIVE_EXPORTS", "2")], 5).await else {
        return;
    };
    assert_eq!(s.config.settings.limits.active_exports, 2);
    let kickoff = event("authz-kickoff-system-get.json");
    let fresh = with_header(kickoff.clone(), "cache-control", "no-cache");

    let first = accepted(&s, &kickoff).await;
    // The same kick-off while the first runs: the first job again.
    let r = invoke(&s.apps.kickoff, &kickoff).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(job_of(&r), first);
    assert!(diagnostics(&r).contains("identical"), "{}", r.body);
    assert_eq!(s.jobs.active_of(CLIENT_A).await.unwrap().len(), 1);

    // `Cache-Control: no-cache` asks for a new one.
    let second = accepted(&s, &fresh).await;
    assert_ne!(second, first);
    assert_eq!(s.jobs.active_of(CLIENT_A).await.unwrap().len(), 2);

    // At the limit: 429 with Retry-After, for a new export or another one ...
    for e in [&fresh, &event("authz-kickoff-lenient-get.json")] {
        let r = invoke(&s.apps.kickoff, e).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(issue(&r)["code"], "throttled");
        let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(after >= 1);
    }
    // ... while an identical kick-off is still answered with its running job.
    let r = invoke(&s.apps.kickoff, &kickoff).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!([first.as_str(), second.as_str()].contains(&job_of(&r).as_str()));
    assert_eq!(s.jobs.active_of(CLIENT_A).await.unwrap().len(), 2);

    // The limit is per client: client-b may start its own, and is not given client-a's.
    let b = accepted(&s, &as_client(kickoff.clone(), "client-b")).await;
    assert!(b != first && b != second);
    assert_eq!(stored(&s, &b).await.owner, "https://auth.example#client-b");

    // A cancelled export frees its place.
    let r = invoke(
        &s.apps.cancel,
        &for_job(event("authz-cancel-delete.json"), &first),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let third = accepted(&s, &fresh).await;
    assert!(third != first && third != second);
    s.stop.cancel();
}

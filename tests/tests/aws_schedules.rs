//! Scheduled exports and export events on the AWS deployment, against moto server: the
//! worker given EventBridge Scheduler's invocation (`events/worker-scheduled-export.json`)
//! starts a run, the next tick exports what changed since that run's `transactionTime`, a
//! tick while a run is active starts nothing, two invocations of one tick start one run, and
//! the end of each export reaches an SQS queue through an EventBridge rule.
//!
//! The worker's SQS events are fed inline (`Stack::pump`, one message per event as the work
//! queue's event source does), so that nothing runs a plan between the steps of a test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use integration_tests::aws::{Stack, queue_arn, stack};
use integration_tests::unique;
use serde_json::{Value, json};
use shared::adapters::aws::sdk_config;
use shared::adapters::aws::sqs::SqsQueue;
use shared::config::Env;
use shared::job::{Job, JobState};
use shared::model::JobId;
use shared::ports::{JobStore, ObjectStore};
use shared::request::ExportLevel;

/// EventBridge Scheduler's invocation of the worker, as the sample has it (schedule
/// `nightly`, `_type=Patient`, owner `anonymous`).
fn scheduled_event() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/worker-scheduled-export.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn job_id(v: &Value) -> JobId {
    JobId::parse(v.as_str().unwrap_or_else(|| panic!("not a job id: {v}"))).unwrap()
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not an instant: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

fn millis(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn status_url(stack: &Stack, id: &JobId) -> String {
    stack.config.settings.status_url(id)
}

/// Every job in the stack's table (a scan of the job items), whatever its state.
async fn all_jobs(stack: &Stack) -> Vec<Job> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = stack
            .jobs
            .client()
            .scan()
            .table_name(&stack.table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let is_job = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|sk| sk == "#JOB");
            if is_job {
                let doc = item["doc"].as_s().unwrap();
                out.push(serde_json::from_str::<Job>(doc).unwrap());
            }
        }
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return out;
        }
    }
}

/// The ids of the jobs a schedule started.
async fn runs_of(stack: &Stack, schedule: &str) -> BTreeSet<String> {
    all_jobs(stack)
        .await
        .into_iter()
        .filter(|j| j.schedule.as_deref() == Some(schedule))
        .map(|j| j.id.to_string())
        .collect()
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a JobId>) -> BTreeSet<String> {
    ids.into_iter().map(ToString::to_string).collect()
}

/// Feeds the worker the work and dead-letter queues' messages, one per event, until `id`
/// has ended; returns its manifest (or error) response body.
async fn run_to_end(stack: &Stack, id: &JobId) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        stack.pump(false, 1).await;
        stack.pump(true, 10).await;
        let state = stack.jobs.state(id).await.unwrap().expect("the job");
        if !state.is_active() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "export {id} did not end ({})",
            state.as_str()
        );
    }
    let resp = stack.http.get(status_url(stack, id)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Feeds the worker until both queues are empty (what is left: `notify` messages, plans of
/// cancelled exports).
async fn drain(stack: &Stack) {
    let mut idle = 0;
    while idle < 2 {
        let n = stack.pump(false, 1).await + stack.pump(true, 10).await;
        idle = if n == 0 { idle + 1 } else { 0 };
    }
}

/// A Patient changed at `at`, as a new NDJSON object of the source.
async fn add_patient(stack: &Stack, id: &str, at: DateTime<Utc>) {
    let line = json!({
        "resourceType": "Patient",
        "id": id,
        "meta": {"lastUpdated": millis(&at)},
        "name": [{"family": "Changed"}],
    });
    stack
        .source_objects
        .put(
            &format!("Patient-{id}.ndjson"),
            Bytes::from(format!("{line}\n")),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tick_starts_a_run_and_the_next_exports_what_changed_since() {
    let Some(stack) = stack(8, &[], 5).await else {
        return;
    };
    let event = scheduled_event();

    // The first tick exports everything the definition selects.
    let started = stack.worker.handle(event.clone()).await.unwrap();
    assert_eq!(started["schedule"], "nightly", "{started}");
    assert!(started["since"].is_null(), "{started}");
    let first = job_id(&started["started"]);
    let job = stack
        .jobs
        .get(&first)
        .await
        .unwrap()
        .expect("the run's job");
    assert_eq!(job.schedule.as_deref(), Some("nightly"));
    assert_eq!(job.state, JobState::Accepted);
    assert_eq!(job.owner, "anonymous");
    assert_eq!(job.request.level, ExportLevel::System);
    assert_eq!(job.request.since, None);
    assert_eq!(
        job.request
            .types
            .as_ref()
            .map(|t| t.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
        Some(vec!["Patient"])
    );
    assert!(
        !job.request.request_url.contains("_since"),
        "{}",
        job.request.request_url
    );

    // A tick while the run is active starts nothing.
    let again = stack.worker.handle(event.clone()).await.unwrap();
    assert_eq!(again["still_running"], first.as_str(), "{again}");
    assert!(again.get("started").is_none(), "{again}");
    assert_eq!(runs_of(&stack, "nightly").await, ids([&first]));
    assert_eq!(all_jobs(&stack).await.len(), 1, "no other job either");

    let (status, manifest) = run_to_end(&stack, &first).await;
    assert_eq!(status, 200, "{manifest}");
    let first_job = stack.jobs.get(&first).await.unwrap().unwrap();
    assert_eq!(first_job.state, JobState::Completed);
    assert_eq!(
        manifest["transactionTime"],
        millis(&first_job.transaction_time)
    );
    let got = stack.download(&manifest).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), ["Patient"]);
    assert_eq!(got["Patient"].len(), stack.source["Patient"].len());

    // One Patient changes after the run; the next tick exports it alone.
    let changed_at = Utc::now();
    assert!(changed_at > first_job.transaction_time);
    add_patient(&stack, "changed-after-run-1", changed_at).await;

    let started = stack.worker.handle(event.clone()).await.unwrap();
    let second = job_id(&started["started"]);
    assert_ne!(second, first);
    assert_eq!(
        instant(&started["since"]),
        first_job.transaction_time,
        "the tick's since is the last completed run's transactionTime: {started}"
    );
    let job = stack.jobs.get(&second).await.unwrap().unwrap();
    assert_eq!(job.schedule.as_deref(), Some("nightly"));
    assert_eq!(
        job.request.since,
        Some(first_job.transaction_time),
        "the run's _since is the first run's transactionTime"
    );
    assert!(job.transaction_time > changed_at);

    let again = stack.worker.handle(event.clone()).await.unwrap();
    assert_eq!(again["still_running"], second.as_str(), "{again}");
    assert_eq!(runs_of(&stack, "nightly").await, ids([&first, &second]));

    // The schedule through the kick-off function's routes.
    let resp = stack
        .http
        .get(format!("{}/_schedules/nightly", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let described: Value = resp.json().await.unwrap();
    assert_eq!(described["name"], "nightly");
    assert_eq!(described["last_completed"]["job_id"], first.as_str());
    assert_eq!(
        instant(&described["last_completed"]["transaction_time"]),
        first_job.transaction_time
    );
    assert_eq!(described["current_run"]["job_id"], second.as_str());
    assert_eq!(described["current_run"]["state"], "accepted");
    let resp = stack
        .http
        .post(format!("{}/_schedules/nightly/$run", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        409,
        "a run is active: {:?}",
        resp.text().await
    );
    assert_eq!(runs_of(&stack, "nightly").await, ids([&first, &second]));

    let (status, manifest) = run_to_end(&stack, &second).await;
    assert_eq!(status, 200, "{manifest}");
    assert!(
        manifest["request"].as_str().unwrap().contains("_since="),
        "{manifest}"
    );
    let got = stack.download(&manifest).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), ["Patient"], "{manifest}");
    let exported: Vec<&str> = got["Patient"]
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(exported, ["changed-after-run-1"]);
    stack.stop.cancel();
}

#[tokio::test]
async fn concurrent_ticks_start_one_run() {
    let Some(stack) = stack(4, &[], 5).await else {
        return;
    };
    let event = scheduled_event();
    let mut runs: Vec<JobId> = Vec::new();
    // Five rounds of two invocations, then one of four. The first round races to create the
    // schedule's state, the others to move it on from a cancelled run.
    for (round, invocations) in [2, 2, 2, 2, 2, 4].into_iter().enumerate() {
        let answers: Vec<Value> =
            futures::future::join_all((0..invocations).map(|_| stack.worker.handle(event.clone())))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let started: Vec<JobId> = answers
            .iter()
            .filter_map(|a| a.get("started").map(job_id))
            .collect();
        assert_eq!(started.len(), 1, "round {round}: {answers:?}");
        let run = started[0].clone();
        for a in &answers {
            if a.get("started").is_none() {
                assert_eq!(
                    a["still_running"],
                    run.as_str(),
                    "round {round}: a tick that lost sees the run that won: {answers:?}"
                );
            }
        }
        runs.push(run.clone());
        // The losers' runs were withdrawn: one job per round in the store.
        assert_eq!(
            runs_of(&stack, "nightly").await,
            ids(&runs),
            "round {round}"
        );
        let active: Vec<Job> = all_jobs(&stack)
            .await
            .into_iter()
            .filter(|j| j.state.is_active())
            .collect();
        assert_eq!(
            ids(active.iter().map(|j| &j.id)),
            ids([&run]),
            "round {round}"
        );
        // One write of the schedule per round.
        let state = stack.jobs.schedule("nightly").await.unwrap().unwrap();
        assert_eq!(state.in_flight.as_ref(), Some(&run), "round {round}");
        assert_eq!(state.version, round as u64 + 1, "round {round}");
        assert_eq!(state.last_completed, None);

        // The run is cancelled; the next round's ticks race to start the next one.
        let resp = stack
            .http
            .delete(status_url(&stack, &run))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "round {round}");
    }
    stack.stop.cancel();
}

#[tokio::test]
async fn scheduled_runs_belong_to_the_owner_under_the_issuer() {
    let issuer = "https://auth.example";
    let Some(stack) = stack(2, &[("FHIR_EXPORT_AUTH_ISSUER", issuer)], 5).await else {
        return;
    };
    let mut event = scheduled_event();
    event["fhir-export-schedule"]["owner"] = json!("client-1");
    let started = stack.worker.handle(event).await.unwrap();
    let job = stack
        .jobs
        .get(&job_id(&started["started"]))
        .await
        .unwrap()
        .unwrap();
    // As a kick-off with client-1's token would have it (fn_common::caller_of).
    assert_eq!(job.owner, format!("{issuer}#client-1"));
    let state = stack.jobs.schedule("nightly").await.unwrap().unwrap();
    assert_eq!(state.owner, format!("{issuer}#client-1"));
    // Nobody else sees the schedule: an anonymous caller gets 404.
    let resp = stack
        .http
        .get(format!("{}/_schedules/nightly", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    stack.stop.cancel();
}

/// An SQS queue that an EventBridge rule on the default bus (`{"source": ["fhir-export"]}`)
/// delivers to. Removed with [`EventQueue::remove`].
struct EventQueue {
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
    url: String,
    rule: String,
}

impl EventQueue {
    async fn new() -> EventQueue {
        let aws = sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let events = aws_sdk_eventbridge::Client::new(&aws);
        let url = sqs
            .create_queue()
            .queue_name(unique("export-events"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let arn = queue_arn(&SqsQueue::new(&aws, &url)).await;
        let rule = unique("fhir-export-events");
        let rule_arn = events
            .put_rule()
            .name(&rule)
            .event_bus_name("default")
            .event_pattern(json!({"source": ["fhir-export"]}).to_string())
            .state(RuleState::Enabled)
            .send()
            .await
            .unwrap()
            .rule_arn
            .unwrap();
        // What AWS needs for the rule to send to the queue (moto delivers without it).
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
            }],
        });
        sqs.set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::Policy, policy.to_string())
            .send()
            .await
            .unwrap();
        let out = events
            .put_targets()
            .rule(&rule)
            .event_bus_name("default")
            .targets(Target::builder().id("queue").arn(&arn).build().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_entry_count(), 0, "{out:?}");
        EventQueue {
            sqs,
            events,
            url,
            rule,
        }
    }

    /// Receives events until one is about `job` with `detail-type` `kind` (other events on
    /// the shared bus are dropped), feeding `stack`'s worker its messages meanwhile when
    /// given; fails after 30 s.
    async fn wait_for(&self, feed: Option<&Stack>, kind: &str, job: &JobId) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // The end of an export is announced by a `notify` message of the work queue.
            if let Some(stack) = feed {
                drain(stack).await;
            }
            let got = self
                .sqs
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            let mut found = None;
            for m in got {
                self.sqs
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
                let e: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                let about = e["detail"]
                    .get("job_id")
                    .or_else(|| e["detail"].get("running_job_id"));
                if e["detail-type"] == kind && about == Some(&json!(job.as_str())) {
                    found = Some(e);
                }
            }
            if let Some(e) = found {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{kind}` event for {job} reached the queue"
            );
        }
    }

    async fn remove(self) {
        self.events
            .remove_targets()
            .rule(&self.rule)
            .event_bus_name("default")
            .ids("queue")
            .send()
            .await
            .unwrap();
        self.events
            .delete_rule()
            .name(&self.rule)
            .event_bus_name("default")
            .send()
            .await
            .unwrap();
        self.sqs
            .delete_queue()
            .queue_url(&self.url)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn export_events_reach_a_queue_through_an_eventbridge_rule() {
    let Some(stack) = stack(6, &[], 5).await else {
        return;
    };
    let aws = sdk_config().await;
    // The sink the deployed worker picks from FHIR_EXPORT_EVENT_BUS (template EventBusName).
    let events = worker::events(
        &Env::new(|k| (k == "FHIR_EXPORT_EVENT_BUS").then(|| "default".to_owned())),
        &aws,
    );
    assert_eq!(events.describe(), "the EventBridge bus default");
    assert_eq!(
        worker::events(&Env::new(|_| None), &aws).describe(),
        "nowhere"
    );
    let stack = stack.with_events(events);
    let queue = EventQueue::new().await;

    // A completed export.
    let status = stack.kickoff("/$export", "_type=Patient,Condition").await;
    let id = JobId::parse(status.rsplit('/').next().unwrap()).unwrap();
    let (code, manifest) = run_to_end(&stack, &id).await;
    assert_eq!(code, 200, "{manifest}");
    let job = stack.jobs.get(&id).await.unwrap().unwrap();
    let e = queue.wait_for(Some(&stack), "Export Completed", &id).await;
    assert_eq!(e["source"], "fhir-export");
    assert_eq!(e["detail-type"], "Export Completed");
    assert_eq!(e["resources"], json!([status]));
    let d = &e["detail"];
    assert_eq!(d["id"], format!("{id}:completed"));
    assert_eq!(d["type"], "Export Completed");
    assert_eq!(d["job_id"], id.as_str());
    assert_eq!(d["state"], "completed");
    assert_eq!(d["level"], "system");
    assert_eq!(d["request"], manifest["request"]);
    assert_eq!(
        millis(&instant(&d["transaction_time"])),
        manifest["transactionTime"]
    );
    assert_eq!(instant(&d["transaction_time"]), job.transaction_time);
    assert_eq!(d["status_url"], status.as_str());
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for item in manifest["output"].as_array().unwrap() {
        *counts
            .entry(item["type"].as_str().unwrap().to_owned())
            .or_default() += item["count"].as_u64().unwrap();
    }
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["Condition", "Patient"],
        "{manifest}"
    );
    let output = d["output"].as_object().expect("output per type");
    assert_eq!(
        output.keys().collect::<BTreeSet<_>>(),
        counts.keys().collect::<BTreeSet<_>>()
    );
    let mut type_bytes = 0;
    for (ty, count) in &counts {
        assert_eq!(output[ty]["count"].as_u64(), Some(*count), "{ty}");
        let bytes = output[ty]["bytes"].as_u64().unwrap();
        assert!(bytes > 0, "{ty}");
        type_bytes += bytes;
    }
    let listed = ["output", "error", "deleted"]
        .iter()
        .map(|k| manifest[k].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    assert_eq!(d["files"].as_u64(), Some(listed as u64), "{manifest}");
    let bytes = d["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes >= type_bytes, "{d}");
    assert!(d["duration_ms"].as_i64().unwrap() >= 0, "{d}");
    assert_eq!(instant(&d["started_at"]), job.created_at);
    assert_eq!(Some(instant(&d["ended_at"])), job.completed_at);
    for absent in ["reason", "since", "schedule", "group"] {
        assert!(d.get(absent).is_none(), "{absent}: {d}");
    }

    // A scheduled run: a tick while it is active says so on the bus (at once, not through
    // the queue); then the run is cancelled before any worker has seen it.
    let started = stack.worker.handle(scheduled_event()).await.unwrap();
    let run = job_id(&started["started"]);
    let again = stack.worker.handle(scheduled_event()).await.unwrap();
    assert_eq!(again["still_running"], run.as_str());
    let e = queue.wait_for(None, "Scheduled Run Skipped", &run).await;
    assert_eq!(e["source"], "fhir-export");
    assert_eq!(e["detail"]["schedule"], "nightly");
    assert_eq!(e["detail"]["status_url"], status_url(&stack, &run));
    assert_eq!(e["resources"], json!([status_url(&stack, &run)]));

    let resp = stack
        .http
        .delete(status_url(&stack, &run))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let cancelled = stack.jobs.get(&run).await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let e = queue.wait_for(Some(&stack), "Export Cancelled", &run).await;
    assert_eq!(e["source"], "fhir-export");
    assert_eq!(e["detail-type"], "Export Cancelled");
    let d = &e["detail"];
    assert_eq!(d["id"], format!("{run}:cancelled"));
    assert_eq!(d["type"], "Export Cancelled");
    assert_eq!(d["job_id"], run.as_str());
    assert_eq!(d["state"], "cancelled");
    assert_eq!(d["schedule"], "nightly");
    assert_eq!(d["status_url"], status_url(&stack, &run));
    assert_eq!(d["level"], "system");
    assert_eq!(d["request"], cancelled.request.request_url.as_str());
    assert_eq!(instant(&d["transaction_time"]), cancelled.transaction_time);
    assert_eq!(d["output"], json!({}));
    assert_eq!(d["files"], 0);
    assert_eq!(d["bytes"], 0);
    assert!(d["duration_ms"].as_i64().unwrap() >= 0, "{d}");
    assert!(d.get("reason").is_none(), "{d}");
    assert!(d.get("since").is_none(), "the schedule's first run: {d}");

    queue.remove().await;
    stack.stop.cancel();
}

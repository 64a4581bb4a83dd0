//! Scheduled, incremental exports and completion events on the local server, over real
//! sockets: a schedule ticking every two seconds chains its runs (`_since` = the last
//! completed run's `transactionTime`) over a source the test changes between runs; a failed
//! run (an unwritable output) and a cancelled one leave the chain where it was, so the next
//! run covers the gap; an overlapping tick starts nothing and says so; two ticks at once start
//! one run; a webhook receives one signed event per run end, and a receiver that is down
//! stops no export and gets the event when it is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use integration_tests::wrappers::{StoreWrapper, Wrapped};
use integration_tests::{Options, TestServer, content_location};
use serde_json::{Value, json};
use shared::ports::{Encoding, ObjectError, ObjectStore, ObjectWriter, Refusal};
use tokio::sync::Mutex;

const SECRET: &str = "webhook-secret";

/// A webhook receiver: what it got, and whether it is up (503 when down).
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(axum::http::HeaderMap, Bytes)>>>,
    up: Arc<AtomicBool>,
}

async fn receiver() -> Receiver {
    let got = Arc::new(Mutex::new(Vec::new()));
    let up = Arc::new(AtomicBool::new(true));
    let (g, u) = (got.clone(), up.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let (g, u) = (g.clone(), u.clone());
            async move {
                if !u.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().await.push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/hook"),
        got,
        up,
    }
}

impl Receiver {
    /// The events received, each checked for its signature.
    async fn events(&self) -> Vec<Value> {
        let got = self.got.lock().await;
        got.iter()
            .map(|(headers, body)| {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(body);
                let want: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let sig = headers["x-fhir-export-signature"].to_str().unwrap();
                assert_eq!(sig, format!("sha256={want}"), "a valid signature");
                let event: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(
                    headers["x-fhir-export-event-id"].to_str().unwrap(),
                    event["id"].as_str().unwrap()
                );
                event
            })
            .collect()
    }

    /// Waits until `pred` holds of the events received.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let events = self.events().await;
            if pred(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The completion events of the schedule `nightly`'s runs.
fn completed(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "Export Completed" && e["schedule"] == "nightly")
        .collect()
}

fn schedule_file(dir: &Path, schedules: Value) -> std::path::PathBuf {
    let path = dir.join("schedules.json");
    std::fs::write(&path, json!({ "schedules": schedules }).to_string()).unwrap();
    path
}

async fn server(
    opts: Options,
    schedules: Value,
    hook: &Receiver,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        schedules: Some(schedule_file(dir.path(), schedules)),
        events_webhook: Some(hook.url.clone()),
        events_log: Some(dir.path().join("events.ndjson")),
        ..opts
    }
    .env("FHIR_EXPORT_EVENTS_WEBHOOK_SECRET", SECRET)
    .env("FHIR_EXPORT_RETRY_AFTER_SECS", "1");
    (TestServer::start(opts).await, dir)
}

/// Ids (`Type/id`) of what an export's manifest lists, downloaded.
async fn exported(s: &TestServer, status_url: &str) -> BTreeSet<String> {
    let manifest = s.manifest(status_url).await;
    s.download(&manifest, "output")
        .await
        .into_iter()
        .flat_map(|(t, rs)| {
            rs.into_iter()
                .map(move |r| format!("{t}/{}", r["id"].as_str().unwrap()))
        })
        .collect()
}

/// Appends resources to the source's NDJSON files: a new Patient and a later version of an
/// existing Observation. Returns their ids.
fn change_source(dir: &Path, tag: &str) -> BTreeSet<String> {
    let now = chrono::Utc::now() + chrono::Duration::milliseconds(5);
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let patient = json!({"resourceType": "Patient", "id": format!("new-{tag}"),
        "meta": {"lastUpdated": stamp}, "gender": "unknown"});
    let observations = std::fs::read_to_string(dir.join("Observation.ndjson")).unwrap();
    // A different existing Observation each time (by tag), updated.
    let n = tag.bytes().map(usize::from).sum::<usize>() % 50;
    let mut obs: Value = serde_json::from_str(observations.lines().nth(n).unwrap()).unwrap();
    obs["meta"]["lastUpdated"] = json!(stamp);
    obs["status"] = json!("amended");
    let append = |file: &str, v: &Value| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(file))
            .unwrap();
        writeln!(f, "{v}").unwrap();
    };
    append("Patient.ndjson", &patient);
    append("Observation.ndjson", &obs);
    // The source's newest change must be before the next run's transaction time.
    std::thread::sleep(Duration::from_millis(20));
    [
        format!("Patient/new-{tag}"),
        format!("Observation/{}", obs["id"].as_str().unwrap()),
    ]
    .into()
}

fn instant(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn a_ticking_schedule_chains_its_runs_and_announces_each_end() {
    let hook = receiver().await;
    let (s, dir) = server(
        Options::default(),
        json!([{"name": "nightly", "query": "_type=Patient,Observation", "rate": "2 seconds"}]),
        &hook,
    )
    .await;
    let source = s.source_dir().to_path_buf();
    let all = s
        .export_counts("/$export", "_type=Patient,Observation")
        .await;

    // Run 1 exports everything its request selects.
    let events = hook
        .wait_for("run 1", |e| {
            completed(e).iter().any(|e| e["since"].is_null())
        })
        .await;
    let run1 = completed(&events)[0].clone();
    assert!(
        run1["since"].is_null(),
        "the first run has no _since: {run1}"
    );
    let counts: BTreeMap<String, u64> = run1["output"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, v)| (t.clone(), v["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, all, "run 1 exports everything");
    let tt1 = instant(&run1["transaction_time"]);

    // The source changes; the runs after run 1 export exactly the changes.
    let changed = change_source(&source, "a");
    let changed_at = chrono::Utc::now();
    let events = hook
        .wait_for("a run after the change", |e| {
            completed(e)
                .iter()
                .any(|e| instant(&e["transaction_time"]) > changed_at)
        })
        .await;
    let later: Vec<&Value> = completed(&events)
        .into_iter()
        .filter(|e| e["job_id"] != run1["job_id"])
        .collect();
    assert!(!later.is_empty());
    // Each run's since is the transaction time of the run before it: a chain.
    let mut previous = tt1;
    let mut union = BTreeSet::new();
    for e in &later {
        assert_eq!(instant(&e["since"]), previous, "{e}");
        assert!(e["request"].as_str().unwrap().contains("_since="), "{e}");
        previous = instant(&e["transaction_time"]);
        let ids = exported(&s, e["status_url"].as_str().unwrap()).await;
        assert!(ids.is_subset(&changed), "only changes: {ids:?}");
        union.extend(ids);
    }
    assert_eq!(union, changed, "every change, in some run");

    // One signed event per run end, the same in the event log.
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "one event per end: {ids:?}");
    for e in &later {
        assert_eq!(
            e["id"],
            format!("{}:completed", e["job_id"].as_str().unwrap())
        );
        assert_eq!(e["level"], "system");
        assert!(e["duration_ms"].as_i64().unwrap() >= 0);
    }
    let logged: Vec<Value> = std::fs::read_to_string(dir.path().join("events.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &later {
        assert!(logged.iter().any(|l| l["id"] == e["id"]), "logged too: {e}");
    }

    // The API shows the schedule, its last completed run and its next tick.
    let listed: Value = s
        .http
        .get(format!("{}/_schedules", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let one = &listed["schedules"][0];
    assert_eq!(one["name"], "nightly");
    assert_eq!(one["definition"]["query"], "_type=Patient,Observation");
    assert!(one["next_tick"].is_string(), "{one}");
    assert!(one["last_completed"]["status_url"].is_string(), "{one}");
    s.server.stop().await;
}

/// An output that refuses writes while `broken` is set.
struct Unwritable {
    inner: Arc<dyn ObjectStore>,
    broken: Arc<AtomicBool>,
}

impl Unwritable {
    fn refused(&self, key: &str) -> Result<(), ObjectError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ObjectError::Refused {
                key: key.to_owned(),
                reason: Refusal::ReadOnly,
                source: "read-only on purpose".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl StoreWrapper for Unwritable {
    fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        self.refused(key)?;
        self.inner.put(key, data).await
    }
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.refused(key)?;
        self.inner.encoded_writer(key, encoding).await
    }
}

/// `POST _schedules/{name}/$run`: the status code and the run's status URL.
async fn run_now(s: &TestServer, name: &str) -> (u16, String) {
    let resp = s
        .http
        .post(format!("{}/_schedules/{name}/$run", s.base))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), content_location(resp.headers()))
}

async fn job_of(s: &TestServer, status_url: &str) -> shared::job::Job {
    s.job(status_url).await
}

#[tokio::test]
async fn failed_and_cancelled_runs_leave_the_gap_to_the_next() {
    let hook = receiver().await;
    let broken = Arc::new(AtomicBool::new(false));
    let b = broken.clone();
    let opts = Options {
        wrap: fhir_export::serve::Wrappers {
            output: Some(fhir_export::serve::Wrap::new(move |inner| {
                Arc::new(Wrapped(Unwritable {
                    inner,
                    broken: b.clone(),
                })) as Arc<dyn ObjectStore>
            })),
            ..Default::default()
        },
        ..Options::default()
    };
    // Ticks a day apart: the test starts runs itself, by the same rules as a tick.
    let (s, _dir) = server(
        opts,
        json!([{"name": "daily", "query": "_type=Patient,Observation", "rate": "1 day"}]),
        &hook,
    )
    .await;
    let source = s.source_dir().to_path_buf();

    let (status, a) = run_now(&s, "daily").await;
    assert_eq!(status, 202);
    assert_eq!(s.wait(&a).await.status(), 200);
    let tt_a = job_of(&s, &a).await.transaction_time;

    // A change, then a run that fails: the output refuses to be written.
    let gap = change_source(&source, "gap");
    broken.store(true, Ordering::SeqCst);
    let (_, b) = run_now(&s, "daily").await;
    assert_eq!(job_of(&s, &b).await.request.since, Some(tt_a));
    let resp = s.wait(&b).await;
    assert_eq!(resp.status(), 500, "the run failed");
    broken.store(false, Ordering::SeqCst);
    hook.wait_for("the failure's event", |e| {
        e.iter()
            .any(|e| e["type"] == "Export Failed" && e["reason"].is_string())
    })
    .await;

    // The next run starts again from run A and exports what the failed run missed.
    let (_, c) = run_now(&s, "daily").await;
    assert_eq!(
        job_of(&s, &c).await.request.since,
        Some(tt_a),
        "the failure did not move the chain"
    );
    assert_eq!(s.wait(&c).await.status(), 200);
    assert_eq!(exported(&s, &c).await, gap);
    let tt_c = job_of(&s, &c).await.transaction_time;

    // A cancelled run does not move it either.
    let (_, d) = run_now(&s, "daily").await;
    let cancelled = s.http.delete(&d).send().await.unwrap();
    assert_eq!(cancelled.status(), 202);
    let (_, e) = run_now(&s, "daily").await;
    assert_eq!(
        job_of(&s, &e).await.request.since,
        Some(tt_c),
        "the cancel did not move the chain"
    );
    assert_eq!(s.wait(&e).await.status(), 200);
    hook.wait_for("the cancel's event", |ev| {
        ev.iter().any(|x| x["type"] == "Export Cancelled")
    })
    .await;
    s.server.stop().await;
}

#[tokio::test]
async fn an_overlapping_tick_starts_nothing_and_says_so() {
    let hook = receiver().await;
    // No workers: the first run stays active.
    let opts = Options {
        workers: 0,
        ..Options::default()
    };
    let (s, _dir) = server(
        opts,
        json!([{"name": "often", "query": "_type=Patient", "rate": "1 second"}]),
        &hook,
    )
    .await;
    let events = hook
        .wait_for("two skipped ticks", |e| {
            e.iter()
                .filter(|e| e["type"] == "Scheduled Run Skipped")
                .count()
                >= 2
        })
        .await;
    let skipped: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "Scheduled Run Skipped")
        .collect();
    let running = skipped[0]["running_job_id"].as_str().unwrap().to_owned();
    assert!(
        skipped
            .iter()
            .all(|e| e["running_job_id"] == running.as_str())
    );
    let jobs = s.server.deps.jobs.active_of("anonymous").await.unwrap();
    assert_eq!(jobs.len(), 1, "one run at a time");
    assert_eq!(jobs[0].id.as_str(), running);
    assert_eq!(jobs[0].schedule.as_deref(), Some("often"));
    // Asked by hand, the same: 409, pointing at the running export.
    let (status, location) = run_now(&s, "often").await;
    assert_eq!(status, 409);
    assert!(location.ends_with(&running), "{location}");
    s.server.stop().await;
}

#[tokio::test]
async fn two_ticks_at_once_start_one_run() {
    let hook = receiver().await;
    let opts = Options {
        workers: 0,
        ..Options::default()
    };
    let (s, _dir) = server(opts, json!([]), &hook).await;
    let kickoff = shared::http::KickoffState::of_worker(&s.server.deps);
    let caller = shared::http::Caller::anonymous();
    for i in 0..5 {
        let def: shared::schedule::ScheduleDef =
            serde_json::from_value(json!({"name": format!("race-{i}"), "query": "_type=Patient"}))
                .unwrap();
        let (a, b) = tokio::join!(
            shared::schedule::tick(&kickoff, &shared::ports::NoEvents, &def, &caller),
            shared::schedule::tick(&kickoff, &shared::ports::NoEvents, &def, &caller),
        );
        let outcomes = [a.unwrap(), b.unwrap()];
        let started = outcomes
            .iter()
            .filter(|o| matches!(o, shared::schedule::TickOutcome::Started { .. }))
            .count();
        assert_eq!(started, 1, "race {i}: {outcomes:?}");
        let runs = s
            .server
            .deps
            .jobs
            .active_of("anonymous")
            .await
            .unwrap()
            .into_iter()
            .filter(|j| j.schedule.as_deref() == Some(def.name.as_str()))
            .count();
        assert_eq!(runs, 1, "race {i}: one job");
    }
    s.server.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_stops_no_export_and_gets_the_event_later() {
    let hook = receiver().await;
    hook.up.store(false, Ordering::SeqCst);
    let (s, dir) = server(Options::default(), json!([]), &hook).await;
    let status_url = s.start_export("/$export", "_type=Patient").await;
    let started = std::time::Instant::now();
    assert_eq!(
        s.wait(&status_url).await.status(),
        200,
        "the export completes"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let job = status_url.rsplit('/').next().unwrap().to_owned();
    // The event log (another sink) has it already; the webhook gets it once it is back.
    let log = dir.path().join("events.ndjson");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("{job}:completed"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not in the event log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hook.events().await.is_empty());
    hook.up.store(true, Ordering::SeqCst);
    let events = hook
        .wait_for("the event, retried", |e| {
            e.iter().any(|e| e["id"] == format!("{job}:completed"))
        })
        .await;
    let e = events
        .iter()
        .find(|e| e["id"] == format!("{job}:completed"))
        .unwrap();
    assert_eq!(e["schedule"], Value::Null);
    assert_eq!(e["status_url"], status_url);
    assert!(e["output"]["Patient"]["count"].as_u64().unwrap() > 0);
    s.server.stop().await;
}

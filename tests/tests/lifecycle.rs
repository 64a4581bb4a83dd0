//! Progress, cancel, duplicate deliveries, a worker stopped mid-chunk, dead letters, stalled
//! and expired jobs: the guarantees that make the service safe to leave running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::{Options, TestServer, counts, files_under, read_source};
use serde_json::Value;
use shared::model::JobId;
use shared::worker::runner::{PoolConfig, spawn_pool};
use shared::worker::{NoLease, handle_message, sweep};
use tokio_util::sync::CancellationToken;

fn job_id(status_url: &str) -> JobId {
    JobId::parse(status_url.rsplit('/').next().unwrap()).unwrap()
}

async fn status(t: &TestServer, url: &str) -> reqwest::Response {
    t.http.get(url).send().await.unwrap()
}

fn assert_exactly_once(
    got: &std::collections::BTreeMap<String, Vec<Value>>,
    source_len: usize,
    ty: &str,
) {
    let ids: BTreeSet<&str> = got[ty].iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got[ty].len(), source_len, "{ty}: every resource");
    assert_eq!(ids.len(), source_len, "{ty}: no duplicates");
}

#[tokio::test]
async fn status_reports_real_progress_while_running() {
    let t = TestServer::start(
        Options {
            workers: 0,
            patients: 20,
            ..Options::default()
        }
        .env("FHIR_EXPORT_CHUNK_BYTES", "20000"),
    )
    .await;
    let url = t.start_export("/$export", "").await;
    let resp = status(&t, &url).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-progress"], "0% complete (planning)");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("integer Retry-After");
    assert!(retry >= 1);

    // plan, then one chunk at a time
    let deps = &t.server.deps;
    let plan = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    handle_message(deps, &plan.body, &NoLease).await.unwrap();
    deps.queue.delete(&plan.receipt).await.unwrap();
    let job = deps.jobs.get(&job_id(&url)).await.unwrap().unwrap();
    let total = job.chunks_total;
    assert!(total > 4, "small chunks give several: {total}");
    let resp = status(&t, &url).await;
    assert_eq!(
        resp.headers()["x-progress"],
        format!("0% complete (0 of {total} chunks)")
    );
    for done in 1..=2u32 {
        let d = deps
            .queue
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .remove(0);
        handle_message(deps, &d.body, &NoLease).await.unwrap();
        deps.queue.delete(&d.receipt).await.unwrap();
        let resp = status(&t, &url).await;
        assert_eq!(resp.status(), 202);
        let want = format!(
            "{}% complete ({done} of {total} chunks)",
            done * 100 / total
        );
        assert_eq!(resp.headers()["x-progress"], want);
        assert!(resp.headers()["x-progress"].len() < 100);
    }
    t.drain().await;
    assert_eq!(status(&t, &url).await.status(), 200);
    t.server.stop().await;
}

#[tokio::test]
async fn duplicate_deliveries_write_each_resource_once() {
    let t = TestServer::start(
        Options {
            workers: 0,
            patients: 30,
            ..Options::default()
        }
        .env("FHIR_EXPORT_CHUNK_BYTES", "30000"),
    )
    .await;
    let source = read_source(t.source_dir());
    let url = t
        .start_export("/$export", "_type=Observation,Patient")
        .await;
    let deps = t.server.deps.clone();
    // the plan message, delivered twice
    let plan = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    handle_message(&deps, &plan.body, &NoLease).await.unwrap();
    handle_message(&deps, &plan.body, &NoLease).await.unwrap();
    deps.queue.delete(&plan.receipt).await.unwrap();
    let mut chunk_msgs = Vec::new();
    loop {
        let got = deps
            .queue
            .receive(10, Duration::from_millis(300))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        chunk_msgs.extend(got);
    }
    let total = deps
        .jobs
        .get(&job_id(&url))
        .await
        .unwrap()
        .unwrap()
        .chunks_total as usize;
    assert!(total >= 3);
    assert_eq!(
        chunk_msgs.len(),
        total,
        "one message per chunk, the duplicate plan sent none"
    );
    // first chunk: twice in a row; second chunk: twice at the same time; the rest once
    handle_message(&deps, &chunk_msgs[0].body, &NoLease)
        .await
        .unwrap();
    handle_message(&deps, &chunk_msgs[0].body, &NoLease)
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        handle_message(&deps, &chunk_msgs[1].body, &NoLease),
        handle_message(&deps, &chunk_msgs[1].body, &NoLease)
    );
    a.unwrap();
    b.unwrap();
    for m in &chunk_msgs[2..] {
        handle_message(&deps, &m.body, &NoLease).await.unwrap();
    }
    for m in &chunk_msgs {
        deps.queue.delete(&m.receipt).await.unwrap();
    }
    // several finalize messages may be queued; all but one are no-ops
    t.drain().await;
    let manifest = t.manifest(&url).await;
    let got = t.download(&manifest, "output").await;
    assert_exactly_once(&got, source["Observation"].len(), "Observation");
    assert_exactly_once(&got, source["Patient"].len(), "Patient");
    let folder = t.output_dir().join(job_id(&url).as_str());
    assert!(
        !t.output_dir()
            .join(".staging")
            .join(job_id(&url).as_str())
            .exists(),
        "staging removed after publishing"
    );
    let files: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
    assert_eq!(
        files.len(),
        manifest["output"].as_array().unwrap().len(),
        "no stray files"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn a_worker_stopped_mid_chunk_is_replaced_after_the_visibility_timeout() {
    let t = TestServer::start(
        // Parts are fsynced when published, which is slow on some disks: few, large parts.
        Options {
            workers: 0,
            patients: 40,
            ..Options::default()
        }
        .env("FHIR_EXPORT_MAX_FILE_BYTES", "20000")
        .env("FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS", "2"),
    )
    .await;
    let source = read_source(t.source_dir());
    let url = t.start_export("/$export", "_type=Observation").await;
    let deps = t.server.deps.clone();
    let plan = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    handle_message(&deps, &plan.body, &NoLease).await.unwrap();
    deps.queue.delete(&plan.receipt).await.unwrap();
    let chunk = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(chunk.receive_count, 1);

    // a worker takes the chunk and dies part-way through it
    let staging = t.output_dir().join(".staging").join(job_id(&url).as_str());
    let worker = {
        let deps = deps.clone();
        let body = chunk.body.clone();
        tokio::spawn(async move { handle_message(&deps, &body, &NoLease).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let parts_written = loop {
        let parts = files_under(&staging).len();
        if parts >= 3 {
            break parts;
        }
        assert!(
            !worker.is_finished(),
            "the chunk finished before it could be interrupted"
        );
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    worker.abort();
    let _ = worker.await;
    let job = deps.jobs.get(&job_id(&url)).await.unwrap().unwrap();
    assert_eq!(job.chunks_done, 0, "the interrupted chunk is not recorded");
    assert!(parts_written >= 3);

    // a healthy pool picks the message up again once its visibility timeout passes
    let stop = CancellationToken::new();
    let pool = spawn_pool(
        deps.clone(),
        t.server.dead_letters.clone(),
        PoolConfig {
            workers: 2,
            ..PoolConfig::default()
        },
        stop.clone(),
    );
    let manifest = t.manifest(&url).await;
    stop.cancel();
    for h in pool {
        let _ = h.await;
    }
    let got = t.download(&manifest, "output").await;
    assert_exactly_once(&got, source["Observation"].len(), "Observation");
    assert!(
        manifest["output"].as_array().unwrap().len() > 10,
        "small files roll over"
    );
    assert!(!staging.exists(), "the dead worker's parts are cleaned up");
    t.server.stop().await;
}

/// Every file under `dir`, as paths relative to it.

#[tokio::test]
async fn cancel_after_completion_deletes_the_files() {
    let t = TestServer::start(Options {
        patients: 3,
        ..Options::default()
    })
    .await;
    let url = t.start_export("/$export", "").await;
    let manifest = t.manifest(&url).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(t.http.get(&file).send().await.unwrap().status(), 200);
    assert_eq!(t.http.delete(&url).send().await.unwrap().status(), 202);
    assert_eq!(status(&t, &url).await.status(), 404);
    assert_eq!(t.http.get(&file).send().await.unwrap().status(), 404);
    assert_eq!(
        files_under(&t.output_dir().join(job_id(&url).as_str())),
        Vec::<String>::new()
    );
    t.server.stop().await;
}

#[tokio::test]
async fn a_chunk_that_keeps_failing_is_dead_lettered_and_fails_the_job() {
    let (dir, _) = integration_tests::dataset(5);
    let t = TestServer::start(
        Options {
            workers: 0,
            source: Some(dir.path().to_path_buf()),
            ..Options::default()
        }
        .env("FHIR_EXPORT_MAX_RECEIVES", "2")
        .env("FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS", "2"),
    )
    .await;
    let url = t.start_export("/$export", "_type=Condition").await;
    let deps = t.server.deps.clone();
    let plan = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    handle_message(&deps, &plan.body, &NoLease).await.unwrap();
    deps.queue.delete(&plan.receipt).await.unwrap();
    // the source breaks under the running export: reading it now fails every time
    let file = dir.path().join("Condition.ndjson");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();

    let stop = CancellationToken::new();
    let pool = spawn_pool(
        deps.clone(),
        t.server.dead_letters.clone(),
        PoolConfig {
            workers: 1,
            ..PoolConfig::default()
        },
        stop.clone(),
    );
    let resp = t.wait(&url).await;
    stop.cancel();
    for h in pool {
        let _ = h.await;
    }
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let diag = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diag.contains("chunk 0 failed repeatedly"), "{diag}");
    t.server.stop().await;
}

#[tokio::test]
async fn stalled_jobs_are_restarted_then_failed() {
    let t = TestServer::start(
        Options {
            workers: 0,
            patients: 5,
            ..Options::default()
        }
        .env("FHIR_EXPORT_MAX_RECOVERIES", "1"),
    )
    .await;
    let deps = t.server.deps.clone();

    // a running job whose chunk messages were lost is restarted and completes
    let url = t.start_export("/$export", "_type=Patient,Condition").await;
    let plan = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    handle_message(&deps, &plan.body, &NoLease).await.unwrap();
    deps.queue.delete(&plan.receipt).await.unwrap();
    let lost = deps
        .queue
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!lost.is_empty());
    for d in &lost {
        deps.queue.delete(&d.receipt).await.unwrap();
    }
    let later = chrono::Utc::now() + chrono::Duration::minutes(11);
    let report = sweep(&deps, later).await.unwrap();
    assert_eq!(report.restarted, 1);
    t.drain().await;
    let manifest = t.manifest(&url).await;
    assert_eq!(counts(&manifest)["Patient"], 5);

    // a job nobody ever works on is restarted once, then failed with a reason
    let url = t.start_export("/$export", "_type=Patient").await;
    while !deps
        .queue
        .receive(10, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty()
    {}
    let r1 = sweep(&deps, chrono::Utc::now() + chrono::Duration::minutes(11))
        .await
        .unwrap();
    assert_eq!((r1.restarted, r1.failed), (1, 0));
    while !deps
        .queue
        .receive(10, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty()
    {}
    let r2 = sweep(&deps, chrono::Utc::now() + chrono::Duration::minutes(30))
        .await
        .unwrap();
    assert_eq!((r2.restarted, r2.failed), (0, 1));
    let resp = status(&t, &url).await;
    assert_eq!(resp.status(), 500);
    let oo: Value = resp.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("no progress")
    );
    t.server.stop().await;
}

#[tokio::test]
async fn expired_exports_are_deleted() {
    let t = TestServer::start(
        Options {
            patients: 2,
            ..Options::default()
        }
        .env("FHIR_EXPORT_RETENTION_SECS", "1"),
    )
    .await;
    let url = t.start_export("/$export", "").await;
    let manifest = t.manifest(&url).await;
    let expires = t.wait(&url).await.headers()["expires"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(expires.ends_with(" GMT"), "{expires}");
    assert!(!manifest["output"].as_array().unwrap().is_empty());
    let report = sweep(
        &t.server.deps,
        chrono::Utc::now() + chrono::Duration::seconds(5),
    )
    .await
    .unwrap();
    assert!(report.expired >= 1);
    assert_eq!(status(&t, &url).await.status(), 404);
    assert_eq!(
        files_under(&t.output_dir().join(job_id(&url).as_str())),
        Vec::<String>::new()
    );
    t.server.stop().await;
}

//! The job's item at scale, on the wire: an export of hundreds of chunks on moto, with the
//! worker's DynamoDB requests read off a recording layer. Its chunks count in groups and
//! learn of a stop from their group's item, and a process reads the job's item at most once a
//! second for their first look (`PEEK_REUSE`), so the job's item is read a few times per
//! second of the export, not once or twice per chunk (`docs/cost.md`, "100 million
//! resources"). A cancel marks every group before it removes the files, so a grouped export
//! cancelled while it runs leaves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::aws::{add_file, stack};
use integration_tests::moto;
use integration_tests::recorder::{Hook, Recorder};
use serde_json::Value;
use shared::model::JobId;
use shared::ports::{JobStore, PEEK_REUSE};

/// Single-item reads (`GetItem`) by what they read: `job`, `group`, or `other`.
type Reads = Arc<Mutex<BTreeMap<&'static str, u64>>>;

fn count_reads(reads: Reads) -> Hook {
    Arc::new(move |_method, _path, body| {
        let reads = reads.clone();
        Box::pin(async move {
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return;
            };
            // GetItem: a key and nothing to write (UpdateItem, DeleteItem and PutItem carry
            // an expression or an item; batches and queries have no `Key`).
            let is_get = v.get("Key").is_some()
                && v.get("UpdateExpression").is_none()
                && v.get("ConditionExpression").is_none()
                && v.get("Item").is_none();
            if !is_get {
                return;
            }
            let sk = v["Key"]["sk"]["S"].as_str().unwrap_or_default();
            let what = if sk == "#JOB" {
                "job"
            } else if sk.starts_with("COUNTER##group-") {
                "group"
            } else {
                "other"
            };
            *reads.lock().unwrap().entry(what).or_default() += 1;
        })
    })
}

/// The resources of a completed export's manifest, read straight from the bucket (hundreds of
/// files: through the files route's redirects they take minutes on moto).
async fn exported(
    stack: &integration_tests::aws::Stack,
    id: &JobId,
    manifest: &Value,
) -> BTreeMap<String, Vec<Value>> {
    use futures::{StreamExt, TryStreamExt};
    let items = manifest["output"].as_array().unwrap().clone();
    let prefix = &stack.jobs.get(id).await.unwrap().unwrap().output_prefix;
    let files = futures::stream::iter(items)
        .map(|item| async move {
            let name = item["url"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned();
            let body: Vec<bytes::Bytes> = stack
                .exports
                .read(&format!("{prefix}/{name}"), 0, None)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            (item, body.concat())
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (item, body) in files {
        add_file(&mut out, &item, &String::from_utf8(body).unwrap());
    }
    out
}

#[tokio::test]
async fn grouped_chunks_read_their_groups_and_a_cancel_reaches_every_group() {
    // Tiny chunks: several hundred, which the plan puts in groups of 32.
    let Some(stack) = stack(20, &[("FHIR_EXPORT_CHUNK_BYTES", "2000")], 5).await else {
        return;
    };
    let stack = Arc::new(stack);
    let moto_url = moto().await.unwrap();
    let reads: Reads = Arc::default();
    let recorder = Recorder::start_with(&moto_url, Some(count_reads(reads.clone()))).await;
    let worker = stack.worker_through(&recorder.url).await;

    // 1. An export run to its end by one worker process, ten messages at a time.
    let status = stack.kickoff("/$export", "").await;
    let started = Instant::now();
    let mut idle = 0;
    while idle < 3 {
        if stack.pump_with(&worker, false, 10).await == 0 {
            idle += 1;
        } else {
            idle = 0;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let resp = stack.finish(&status).await;
    assert_eq!(resp.status(), 200);
    let manifest: Value = resp.json().await.unwrap();
    let id = JobId::parse(status.rsplit('/').next().unwrap()).unwrap();
    let got = exported(&stack, &id, &manifest).await;
    for (t, want) in &stack.source {
        let ids: BTreeSet<&str> = got[t].iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(got[t].len(), want.len(), "{t}");
        assert_eq!(ids.len(), want.len(), "{t}: each resource once");
    }
    let chunks = stack.jobs.chunks(&id).await.unwrap();
    assert!(chunks.len() >= 256, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.spec.group.is_some()));
    let reads = reads.lock().unwrap().clone();
    let (job, group) = (reads["job"], reads["group"]);
    eprintln!(
        "{} chunks in {secs:.1} s: {job} reads of the job's item, {group} of group items, {} others",
        chunks.len(),
        reads.get("other").copied().unwrap_or(0)
    );
    // Every chunk looks at its group after publishing (and once a second while it runs).
    assert!(
        group >= chunks.len() as u64,
        "{group} group reads for {} chunks",
        chunks.len()
    );
    // The job's item: the first looks, at most one per `PEEK_REUSE` (a read that misses the
    // reuse by a hair makes two in one second), and a handful for the plan, its
    // compare-and-sets, the finalize and the announcement. Before, every chunk read it twice.
    let peeks = 2.0 * (secs / PEEK_REUSE.as_secs_f64()).ceil();
    assert!(
        (job as f64) <= peeks + 20.0,
        "{job} reads of the job's item for {} chunks in {secs:.1} s",
        chunks.len()
    );
    assert!((job as f64) < chunks.len() as f64 / 4.0);

    // 2. A grouped export cancelled while it runs: every group is marked, nothing is left.
    let status = stack.kickoff("/$export", "").await;
    let id = JobId::parse(status.rsplit('/').next().unwrap()).unwrap();
    let harness = stack.spawn_harness();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job = stack.jobs.get(&id).await.unwrap().unwrap();
        if job.chunks_done >= 32 {
            assert!(
                job.chunks_done < job.chunks_total,
                "finished before the cancel"
            );
            break job;
        }
        assert!(Instant::now() < deadline, "no group counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        stack.http.delete(&status).send().await.unwrap().status(),
        202
    );
    // Chunks still in flight finish and clean up after themselves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    harness.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.objects(&format!("{id}/")).await,
        0,
        "a cancelled export leaves no objects"
    );
    let groups = job.plan.count_groups();
    assert!(groups >= 8, "{groups} groups");
    for g in 0..groups {
        let item = stack
            .jobs
            .client()
            .get_item()
            .table_name(&stack.table)
            .key("pk", AttributeValue::S(format!("JOB#{id}")))
            .key("sk", AttributeValue::S(format!("COUNTER##group-{g}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap_or_default();
        assert_eq!(
            item.get("stopped"),
            Some(&AttributeValue::Bool(true)),
            "group {g}: {item:?}"
        );
    }
    stack.stop.cancel();
}

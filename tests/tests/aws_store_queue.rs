//! The DynamoDB job store and the SQS queue against moto server: the same behaviour suites
//! the SQLite adapters pass, each test with its own table or queues.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use integration_tests::{moto, unique};
use shared::adapters::aws::dynamodb::DynamoJobStore;
use shared::adapters::aws::sdk_config;
use shared::adapters::aws::sqs::create_queue_pair;
use shared::testkit;

#[tokio::test]
async fn dynamodb_job_store_contract() {
    if moto().await.is_none() {
        return;
    }
    let config = sdk_config().await;
    let store = DynamoJobStore::new(&config, &unique("jobs"));
    store.create_table().await.expect("create table");
    store
        .create_table()
        .await
        .expect("creating an existing table is fine");
    testkit::job_store::run(Arc::new(store)).await;
}

#[tokio::test]
async fn sqs_queue_contract() {
    if moto().await.is_none() {
        return;
    }
    let config = sdk_config().await;
    let (work, dead) = create_queue_pair(
        &config,
        &unique("work"),
        testkit::queue::VISIBILITY,
        testkit::queue::MAX_RECEIVES,
    )
    .await
    .expect("queues");
    testkit::queue::run(Arc::new(work), Arc::new(dead)).await;
}

/// What the DynamoDB store does beyond the contract, for the read limits of one item at
/// scale (`docs/cost.md`): the count groups' items are written with the chunks, a chunk of a
/// group learns of a stop from its group's item (not the job's), and a running job's peek is
/// answered again for `PEEK_REUSE`.
#[tokio::test]
async fn group_items_answer_for_their_chunks_and_a_peek_is_reused() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use shared::job::{ChunkSpec, CountGroup, JobState};
    use shared::ports::{JobStore, PEEK_REUSE};

    if moto().await.is_none() {
        return;
    }
    let config = sdk_config().await;
    let table = unique("jobs");
    let store = DynamoJobStore::new(&config, &table);
    store.create_table().await.expect("create table");
    let now = chrono::Utc::now();
    let job = testkit::sample_job(JobState::Running, now);
    store.create(&job).await.unwrap();
    let groups = [CountGroup { id: 0, size: 2 }, CountGroup { id: 1, size: 1 }];
    let specs: Vec<ChunkSpec> = [groups[0], groups[0], groups[1]]
        .into_iter()
        .enumerate()
        .map(|(i, g)| ChunkSpec {
            group: Some(g),
            ..testkit::sample_chunk(i as u32)
        })
        .collect();
    store.put_chunks(&job.id, &specs).await.unwrap();
    let item = |sk: &str| {
        store
            .client()
            .get_item()
            .table_name(&table)
            .key("pk", AttributeValue::S(format!("JOB#{}", job.id)))
            .key("sk", AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
    };
    for g in groups {
        let got = item(&format!("COUNTER#{}", g.counter()))
            .await
            .unwrap()
            .item;
        assert_eq!(
            got.and_then(|i| i.get("n").cloned()),
            Some(AttributeValue::N("0".into())),
            "group {} written with the chunks, at 0",
            g.id
        );
    }

    // A peek of a running job is answered again; a stop is then seen by `get` at once and by
    // `peek` once the reuse is over.
    assert_eq!(
        store.peek(&job.id).await.unwrap().unwrap().state,
        JobState::Running
    );
    let cancelled = job.transitioned(JobState::Cancelled, now).unwrap();
    store.update(&cancelled, job.version).await.unwrap();
    assert_eq!(
        store.get(&job.id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        store.peek(&job.id).await.unwrap().unwrap().state,
        JobState::Running,
        "a peek within {PEEK_REUSE:?} is the one before"
    );
    tokio::time::sleep(PEEK_REUSE + std::time::Duration::from_millis(100)).await;
    assert_eq!(
        store.peek(&job.id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );

    // The job's item is cancelled but the groups are not marked yet: a chunk of a group
    // reads its group's item, a chunk without one the job's.
    assert!(!store.stopped(&job.id, Some(groups[0])).await.unwrap());
    assert!(store.stopped(&job.id, None).await.unwrap());
    store.mark_groups_stopped(&job.id, 2).await.unwrap();
    for g in groups {
        assert!(
            store.stopped(&job.id, Some(g)).await.unwrap(),
            "group {}",
            g.id
        );
        let got = item(&format!("COUNTER#{}", g.counter()))
            .await
            .unwrap()
            .item
            .unwrap();
        assert!(got.contains_key("ttl"), "a mark expires by itself: {got:?}");
    }
    // A group item that is not there (a job planned before group items were written): the
    // job's state decides.
    let lone = CountGroup { id: 9, size: 1 };
    assert!(store.stopped(&job.id, Some(lone)).await.unwrap());
}

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

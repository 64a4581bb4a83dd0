//! The usage record of an export, checked against moto through an HTTP recording layer: the
//! worker's SDK clients go through a recorder that counts every request by service and
//! operation as AWS would bill it, and the record (`extension.usage` of the status answer)
//! must hold the same counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::aws::stack;
use integration_tests::moto;
use integration_tests::recorder::Recorder;
use serde_json::Value;
use shared::usage::Usage;

#[tokio::test]
async fn the_usage_record_counts_what_moto_was_asked() {
    // Small chunks: several chunk messages, each recorded on its own.
    let Some(stack) = stack(30, &[("FHIR_EXPORT_CHUNK_BYTES", "200000")], 5).await else {
        return;
    };
    let moto_url = moto().await.unwrap();
    let recorder = Recorder::start(&moto_url).await;
    // The worker as Lambda would run it, with every client pointed at the recorder.
    let worker = stack.worker_through(&recorder.url).await;

    // The kick-off goes straight to moto: only the worker's requests are recorded.
    let status = stack.kickoff("/$export", "").await;
    // Lambda's event source mapping: receives and deletes are its own (not the function's),
    // so they go straight to moto too; the batch is one message, as the template has it.
    let mut idle = 0;
    while idle < 3 {
        if stack.pump_with(&worker, false, 1).await == 0 {
            idle += 1;
        } else {
            idle = 0;
        }
    }

    let resp = stack.finish(&status).await;
    assert_eq!(resp.status(), 200);
    let manifest: Value = resp.json().await.unwrap();
    let usage: Usage = serde_json::from_value(manifest["extension"]["usage"].clone())
        .expect("the manifest's extension carries the usage");
    let recorded = recorder.recorded();
    eprintln!("usage: {usage:#?}\nrecorded: {recorded:#?}");

    // Every request the worker made is in the record, per service and operation; the one
    // exception is the record's own write: one PutItem per message, which it cannot count.
    assert!(usage.messages >= 3, "plan, chunks, notify: {usage:?}");
    for (service, ops) in &recorded.requests {
        for (op, n) in ops {
            let own_writes = if service == "dynamodb" && op == "PutItem" {
                usage.messages
            } else {
                0
            };
            assert_eq!(
                usage.requests_of(service, op) + own_writes,
                *n,
                "{service} {op}: the record says {}, the wire {n}",
                usage.requests_of(service, op)
            );
        }
    }
    for (service, ops) in &usage.requests {
        for (op, n) in ops {
            assert!(
                *n <= recorded.of(service, op),
                "{service} {op} never went out"
            );
        }
    }
    // The worker reads its source from S3, writes its files there, and keeps its state in
    // DynamoDB: each shows up, and DynamoDB's capacity with it.
    assert!(usage.requests_of("s3", "GetObject") >= 1);
    assert!(usage.requests_to("dynamodb") >= 5);
    assert!(usage.dynamodb_write_units >= usage.requests_of("dynamodb", "UpdateItem") as f64);
    assert!(usage.dynamodb_read_units > 0.0);
    assert_eq!(usage.bytes_uploaded, recorded.s3_uploaded);
    // What it exported: every resource of the manifest, and the bytes of its files.
    let exported: u64 = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["count"].as_u64().unwrap())
        .sum();
    let source_total: usize = stack.source.values().map(Vec::len).sum();
    assert_eq!(exported, source_total as u64);
    assert_eq!(usage.resources, exported);
    assert!(usage.bytes_written > 0);
    assert!(
        usage.chunks >= 4 && usage.chunks < usage.messages,
        "{usage:?}"
    );
    assert!(usage.wall_ms >= usage.max_wall_ms && usage.max_wall_ms > 0);

    // A second look gives the same record: the status reads it, it does not add to it.
    let again: Value = stack.finish(&status).await.json().await.unwrap();
    assert_eq!(again["extension"]["usage"], manifest["extension"]["usage"]);
}

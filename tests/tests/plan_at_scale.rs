//! A system export of 100 million resources, planned for real over a source that only lists
//! its files with their sizes (`fhir-export bench --scale`): every job-store item and every
//! work message stays under half of DynamoDB's and SQS's limits, and the manifest is paged.
//! (The writes per second on the job's partition at 1,000 workers are reported by the bench
//! command, from a per-chunk time measured there: `docs/cost.md`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fhir_export::bench::scale::{DYNAMODB_ITEM_LIMIT, SQS_MESSAGE_LIMIT, plan_at_scale};

#[tokio::test]
async fn a_hundred_million_resources_plan_within_the_stores_limits() {
    let dir = tempfile::tempdir().unwrap();
    let f = plan_at_scale(100_000_000, dir.path()).await.unwrap();
    println!("{f:#?}");
    // About 170 GB of NDJSON in chunks of 32 MiB.
    assert!(f.source_bytes > 150_000_000_000, "{}", f.source_bytes);
    let expected = f.source_bytes / f.chunk_bytes;
    assert!(
        (f.chunks as u64) >= expected && (f.chunks as u64) <= expected + 200,
        "{} chunks for {} bytes",
        f.chunks,
        f.source_bytes
    );
    assert!(
        f.job_item_bytes < DYNAMODB_ITEM_LIMIT / 2,
        "job item {} bytes",
        f.job_item_bytes
    );
    assert!(
        f.largest_chunk_item_bytes < DYNAMODB_ITEM_LIMIT / 2,
        "chunk item {} bytes",
        f.largest_chunk_item_bytes
    );
    // One message per chunk, plus the kick-off's plan message.
    assert_eq!(f.messages, f.chunks as u64 + 1);
    assert!(f.largest_message_bytes < SQS_MESSAGE_LIMIT / 2);
    // Paged: no page holds more than 1,000 publishing chunks' files.
    assert!(f.manifest_pages >= f.chunks / 1000);
    assert!(f.largest_page_bytes < 1 << 20, "{}", f.largest_page_bytes);
}

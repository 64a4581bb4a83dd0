//! A system export of 100 million resources, planned for real over a source that only lists
//! its files with their sizes (`fhir-export bench --scale`): every job-store item and every
//! work message stays under half of DynamoDB's and SQS's limits, the manifest is paged, and
//! no single item takes more than half of DynamoDB's per-item throughput with 1,000 workers
//! at the fastest chunk time measured (0.09 s a chunk, `docs/cost.md`): chunks count in
//! groups and ask their group's item whether the job was stopped, a process reuses its first
//! look at the job for a second, the plan numbers the files, and the job's item stays small.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fhir_export::bench::scale::{
    DYNAMODB_ITEM_LIMIT, ITEM_READ_UNITS_PER_SEC, ITEM_WRITE_UNITS_PER_SEC, SQS_MESSAGE_LIMIT,
    plan_at_scale,
};

/// The fastest per-chunk time measured (a 32 MiB chunk on one core, local disk, release).
const FASTEST_CHUNK_SECS: f64 = 0.09;

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

    // Hot items at 1,000 workers: the job's item (one write per group of chunks, billed by
    // its size), a group's item (at most its chunks at once), the busiest file counter.
    let (w, t) = (1000, FASTEST_CHUNK_SECS);
    assert!(
        f.job_item_bytes <= 2048,
        "job item {} bytes",
        f.job_item_bytes
    );
    // The job's item (1 KB and a little: 2 write units a write) under the limit at the
    // fastest pace, under half of it at Lambda's S3-bound pace (0.5 s a chunk).
    assert!(
        f.job_item_write_units_per_sec(w, t) < ITEM_WRITE_UNITS_PER_SEC,
        "job item: {} WCU/s",
        f.job_item_write_units_per_sec(w, t)
    );
    assert!(f.job_item_write_units_per_sec(w, 0.5) < ITEM_WRITE_UNITS_PER_SEC / 2.0);
    assert!(
        f.group_item_writes_per_sec(w, t) < ITEM_WRITE_UNITS_PER_SEC / 2.0,
        "group item: {} writes/s",
        f.group_item_writes_per_sec(w, t)
    );
    assert_eq!(
        f.counter_writes_per_chunk, 0.0,
        "every file numbered by the plan"
    );
    // Reads: every chunk's first look is at the job's item (reused by a process for a
    // second); its stop checks at its group's item. At the fastest pace, 1,000 workers take
    // at most half of either item's read units.
    assert_eq!(
        f.grouped_share, 1.0,
        "every chunk of the export is in a group"
    );
    assert!(
        f.job_item_read_units_per_sec(w, t) <= ITEM_READ_UNITS_PER_SEC / 2.0,
        "job item: {} RCU/s",
        f.job_item_read_units_per_sec(w, t)
    );
    assert!(
        f.group_item_reads_per_sec(w, t) <= ITEM_READ_UNITS_PER_SEC / 2.0,
        "group item: {} RCU/s",
        f.group_item_reads_per_sec(w, t)
    );
    // Long chunks (a slow source) add a check a second; still within half at 1,000 workers.
    assert!(f.job_item_read_units_per_sec(w, 5.0) <= ITEM_READ_UNITS_PER_SEC / 2.0);
    assert!(f.group_item_reads_per_sec(w, 5.0) <= ITEM_READ_UNITS_PER_SEC / 2.0);
}

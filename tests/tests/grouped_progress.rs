//! A phase of many chunks counts its completions in groups (one write on the job's item per
//! group, not per chunk): the export still completes with every resource exactly once, the
//! chunks carry their groups, and the job's count ends at the total.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use integration_tests::{Options, TestServer, read_source};
use shared::adapters::sqlite::{SqliteDb, SqliteJobStore};
use shared::model::JobId;
use shared::ports::JobStore;

#[tokio::test]
async fn hundreds_of_chunks_count_in_groups_and_the_export_completes() {
    let server = TestServer::start(Options {
        patients: 30,
        workers: 4,
        // Tiny chunks: several hundred of them, which the plan groups.
        env: vec![("FHIR_EXPORT_CHUNK_BYTES".into(), "2000".into())],
        ..Options::default()
    })
    .await;
    let status = server.start_export("/$export", "").await;
    let manifest = server.manifest(&status).await;
    let got = server.download(&manifest, "output").await;
    let source = read_source(server.source_dir());
    let want: BTreeMap<String, usize> = source.iter().map(|(t, v)| (t.clone(), v.len())).collect();
    let counts: BTreeMap<String, usize> = got.iter().map(|(t, v)| (t.clone(), v.len())).collect();
    assert_eq!(counts, want);
    for (t, rs) in &got {
        let ids: BTreeSet<&str> = rs.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), rs.len(), "{t}: each resource once");
    }

    let db = SqliteDb::open(&server.state.path().join("state").join("fhir-export.sqlite")).unwrap();
    let jobs = Arc::new(SqliteJobStore::new(db));
    let id = JobId::parse(status.rsplit('/').next().unwrap()).unwrap();
    let job = jobs.get(&id).await.unwrap().unwrap();
    let chunks = jobs.chunks(&id).await.unwrap();
    assert!(chunks.len() >= 256, "{} chunks", chunks.len());
    assert_eq!(job.chunks_done, job.chunks_total);
    let mut sizes: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for c in &chunks {
        let g = c
            .spec
            .group
            .expect("every chunk of a large phase is in a group");
        let e = sizes.entry(g.id).or_insert((g.size, 0));
        assert_eq!(e.0, g.size, "one size per group");
        e.1 += 1;
    }
    for (g, (size, members)) in &sizes {
        assert_eq!(size, members, "group {g}");
        assert!(*size <= 32);
    }
    assert_eq!(sizes.len(), chunks.len().div_ceil(32));
}

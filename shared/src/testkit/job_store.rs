//! The `JobStore` contract.

use std::sync::Arc;

use chrono::{Duration, Utc};

use super::{sample_chunk, sample_job};
use crate::job::{ChunkResult, ChunkSpec, FileKind, JobState, OutputFile, StagedFile};
use crate::model::{JobId, ResourceType};
use crate::ports::{JobStore, Naming, StoreError};

fn result(n: u64) -> ChunkResult {
    ChunkResult {
        files: vec![StagedFile {
            kind: FileKind::Output,
            resource_type: Some(ResourceType::PATIENT),
            path: format!(".staging/x/Patient-{n}.ndjson"),
            count: n,
            bytes: n * 10,
            continues: false,
            partition_offsets: vec![],
            encoding: Default::default(),
        }],
        resources: n,
        errors: 0,
    }
}

fn output(name: &str, n: u64) -> OutputFile {
    OutputFile {
        kind: FileKind::Output,
        resource_type: Some(ResourceType::PATIENT),
        name: name.to_owned(),
        count: n,
        bytes: n * 100,
        continues_in: None,
        staged: format!(".staging/{name}"),
        page: 1,
        encoding: Default::default(),
    }
}

pub async fn run(store: Arc<dyn JobStore>) {
    let now = Utc::now();
    let s = store.as_ref();
    schedules(s).await;
    stops(s).await;

    // create / get / duplicate create
    let job = sample_job(JobState::Accepted, now);
    s.create(&job).await.expect("create");
    assert!(matches!(
        s.create(&job).await,
        Err(StoreError::AlreadyExists)
    ));
    let got = s.get(&job.id).await.expect("get").expect("exists");
    assert_eq!(got, job);
    assert!(s.get(&JobId::new()).await.expect("get").is_none());

    // compare-and-set
    let mut planning = job
        .transitioned(JobState::Planning, now)
        .expect("transition");
    planning.chunks_total = 3;
    s.update(&planning, job.version).await.expect("update");
    assert!(matches!(
        s.update(&planning, job.version).await,
        Err(StoreError::Conflict)
    ));
    let ghost = sample_job(JobState::Accepted, now);
    assert!(matches!(
        s.update(&ghost, 1).await,
        Err(StoreError::NotFound)
    ));
    let got = s.get(&job.id).await.expect("get").expect("exists");
    assert_eq!(got.state, JobState::Planning);
    assert_eq!(got.version, job.version + 1);
    assert_eq!(
        s.state(&job.id).await.expect("state"),
        Some(JobState::Planning),
        "state follows updates"
    );
    assert_eq!(s.state(&JobId::new()).await.expect("state"), None);

    // chunks: idempotent put, results recorded once
    let chunks: Vec<_> = (0..3).map(sample_chunk).collect();
    s.put_chunks(&job.id, &chunks).await.expect("put_chunks");
    s.put_chunks(&job.id, &chunks)
        .await
        .expect("put_chunks again");
    let listed = s.chunks(&job.id).await.expect("chunks");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|c| !c.is_done()));
    assert_eq!(listed[2].spec, chunks[2]);
    let c = s
        .complete_chunk(&job.id, 1, &result(5), now, None)
        .await
        .expect("complete");
    assert!(c.first);
    assert_eq!((c.done, c.total), (1, 3));
    assert_eq!(c.state, JobState::Planning);
    let again = s
        .complete_chunk(&job.id, 1, &result(99), now, None)
        .await
        .expect("complete again");
    assert!(!again.first, "a second completion must not count");
    assert_eq!(again.done, 1);
    let rec = s.chunk(&job.id, 1).await.expect("chunk").expect("exists");
    assert_eq!(rec.result, Some(result(5)), "the first result stays");
    assert!(matches!(
        s.complete_chunk(&job.id, 42, &result(1), now, None).await,
        Err(StoreError::NotFound)
    ));

    // a state change does not lose chunk completions made after it was read
    let stale = s.get(&job.id).await.expect("get").expect("exists");
    s.complete_chunk(&job.id, 0, &result(1), now, None)
        .await
        .expect("complete 0");
    let running = stale
        .transitioned(JobState::Running, now)
        .expect("transition");
    s.update(&running, stale.version).await.expect("update");
    assert_eq!(
        s.get(&job.id)
            .await
            .expect("get")
            .expect("exists")
            .chunks_done,
        2
    );

    // a completion reports the job's state as it leaves it: a cancel made while the chunk
    // ran is seen without another read, by a first completion and by a duplicate alike
    let job3 = sample_job(JobState::Running, now);
    s.create(&job3).await.expect("create");
    s.put_chunks(&job3.id, &chunks).await.expect("put_chunks");
    let c = s
        .complete_chunk(&job3.id, 0, &result(1), now, None)
        .await
        .expect("complete");
    assert_eq!(c.state, JobState::Running);
    let current = s.get(&job3.id).await.expect("get").expect("exists");
    let cancelled = current
        .transitioned(JobState::Cancelled, now)
        .expect("transition");
    s.update(&cancelled, current.version).await.expect("cancel");
    let c = s
        .complete_chunk(&job3.id, 1, &result(1), now, None)
        .await
        .expect("complete");
    assert_eq!((c.first, c.state), (true, JobState::Cancelled));
    let c = s
        .complete_chunk(&job3.id, 1, &result(1), now, None)
        .await
        .expect("complete again");
    assert_eq!((c.first, c.state), (false, JobState::Cancelled));

    // a group counts on the job once, when its last chunk is done; a chunk outside any
    // group counts at once; a duplicate reads the job
    let mut grouped = sample_job(JobState::Running, now);
    grouped.chunks_total = 4;
    s.create(&grouped).await.expect("create");
    let group = crate::job::CountGroup { id: 7, size: 3 };
    let specs: Vec<ChunkSpec> = (0..4)
        .map(|i| ChunkSpec {
            group: (i < 3).then_some(group),
            ..sample_chunk(i)
        })
        .collect();
    s.put_chunks(&grouped.id, &specs).await.expect("put_chunks");
    let done_of = |c: &crate::ports::ChunkCompletion| (c.first, c.counted, c.done, c.total);
    let c = s
        .complete_chunk(&grouped.id, 0, &result(1), now, Some(group))
        .await
        .expect("complete");
    assert_eq!(done_of(&c), (true, false, 0, 0));
    let c = s
        .complete_chunk(&grouped.id, 3, &result(1), now, None)
        .await
        .expect("complete");
    assert_eq!(done_of(&c), (true, true, 1, 4));
    let c = s
        .complete_chunk(&grouped.id, 1, &result(1), now, Some(group))
        .await
        .expect("complete");
    assert_eq!(done_of(&c), (true, false, 0, 0));
    let c = s
        .complete_chunk(&grouped.id, 1, &result(1), now, Some(group))
        .await
        .expect("complete again");
    assert_eq!(done_of(&c), (false, true, 1, 4));
    let c = s
        .complete_chunk(&grouped.id, 2, &result(1), now, Some(group))
        .await
        .expect("complete");
    assert_eq!(done_of(&c), (true, true, 4, 4));
    assert_eq!(c.state, JobState::Running);

    // concurrent completions: each counted once, exactly one sees the last one
    let job2 = sample_job(JobState::Running, now);
    let mut job2 = job2;
    job2.chunks_total = 8;
    s.create(&job2).await.expect("create");
    let chunks: Vec<_> = (0..8).map(sample_chunk).collect();
    s.put_chunks(&job2.id, &chunks).await.expect("put_chunks");
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        for _ in 0..2 {
            let store = store.clone();
            let id = job2.id.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .complete_chunk(&id, i, &result(u64::from(i)), Utc::now(), None)
                    .await
            }));
        }
    }
    let mut firsts = 0;
    let mut saw_last = 0;
    for t in tasks {
        let c = t.await.expect("join").expect("complete");
        if c.first {
            firsts += 1;
            if c.done == c.total {
                saw_last += 1;
            }
        }
    }
    assert_eq!(firsts, 8);
    assert_eq!(saw_last, 1, "exactly one completion observes done == total");
    assert_eq!(
        s.get(&job2.id)
            .await
            .expect("get")
            .expect("exists")
            .chunks_done,
        8
    );

    // counters: disjoint reservations, also under concurrency
    assert_eq!(s.reserve(&job.id, "Patient", 3).await.expect("reserve"), 1);
    assert_eq!(s.reserve(&job.id, "Patient", 2).await.expect("reserve"), 4);
    assert_eq!(
        s.reserve(&job.id, "error", 1).await.expect("reserve"),
        1,
        "counters are independent"
    );
    assert_eq!(
        s.reserve(&job2.id, "Patient", 1).await.expect("reserve"),
        1,
        "and per job"
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        let id = job.id.clone();
        tasks.push(tokio::spawn(async move {
            store.reserve(&id, "Observation", 2).await
        }));
    }
    let mut firsts = Vec::new();
    for t in tasks {
        firsts.push(t.await.expect("join").expect("reserve"));
    }
    firsts.sort_unstable();
    assert_eq!(firsts, (0..10).map(|i| 1 + 2 * i).collect::<Vec<u64>>());

    // published names: the first recorded stand; renamed flag
    let ours = vec![output("Patient-1.ndjson", 5)];
    let theirs = vec![output("Patient-9.ndjson", 5)];
    assert_eq!(
        s.set_published(&job.id, 1, &ours).await.expect("publish"),
        ours
    );
    assert_eq!(
        s.set_published(&job.id, 1, &theirs).await.expect("publish"),
        ours,
        "first names stand"
    );
    let rec = s.chunk(&job.id, 1).await.expect("chunk").expect("exists");
    assert_eq!(rec.published, Some(ours.clone()));
    assert!(!rec.renamed);
    s.mark_renamed(&job.id, 1).await.expect("renamed");
    assert!(
        s.chunk(&job.id, 1)
            .await
            .expect("chunk")
            .expect("exists")
            .renamed
    );
    assert!(matches!(
        s.set_published(&job.id, 77, &ours).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.mark_renamed(&job.id, 77).await,
        Err(StoreError::NotFound)
    ));

    // completion with naming: the first completion names the files from fresh numbers,
    // a duplicate names nothing and takes no numbers, a cancelled job's chunk is not named
    let job4 = sample_job(JobState::Running, now);
    s.create(&job4).await.expect("create");
    let chunks: Vec<_> = (0..3).map(sample_chunk).collect();
    s.put_chunks(&job4.id, &chunks).await.expect("put_chunks");
    s.reserve(&job4.id, "Patient", 2)
        .await
        .expect("an earlier chunk's names");
    let naming = || Naming {
        counters: vec![("Patient".to_owned(), 2), ("error".to_owned(), 1)],
        name: Box::new(|firsts: &[u64]| {
            vec![
                output(&format!("Patient-{}.ndjson", firsts[0]), 1),
                output(&format!("Patient-{}.ndjson", firsts[0] + 1), 1),
                output(&format!("error-{}.ndjson", firsts[1]), 1),
            ]
        }),
    };
    let names = |ns: &[&str]| ns.iter().map(|n| output(n, 1)).collect::<Vec<_>>();
    let (c, named) = s
        .complete_and_name(&job4.id, 1, &result(2), now, None, Some(naming()))
        .await
        .expect("complete and name");
    assert!(c.first);
    let expected = names(&["Patient-3.ndjson", "Patient-4.ndjson", "error-1.ndjson"]);
    assert_eq!(named.as_ref(), Some(&expected));
    let rec = s.chunk(&job4.id, 1).await.expect("chunk").expect("exists");
    assert_eq!(rec.published, Some(expected.clone()));
    assert_eq!(rec.result, Some(result(2)));
    let (c, named) = s
        .complete_and_name(&job4.id, 1, &result(2), now, None, Some(naming()))
        .await
        .expect("duplicate");
    assert!(!c.first);
    assert_eq!(named, None);
    assert_eq!(
        s.reserve(&job4.id, "Patient", 1).await.expect("reserve"),
        5,
        "a duplicate completion takes no numbers"
    );
    assert!(matches!(
        s.complete_and_name(&job4.id, 9, &result(1), now, None, Some(naming()))
            .await,
        Err(StoreError::NotFound)
    ));
    let current = s.get(&job4.id).await.expect("get").expect("exists");
    let cancelled = current
        .transitioned(JobState::Cancelled, now)
        .expect("transition");
    s.update(&cancelled, current.version).await.expect("cancel");
    let (c, named) = s
        .complete_and_name(&job4.id, 2, &result(1), now, None, Some(naming()))
        .await
        .expect("complete after cancel");
    assert_eq!((c.first, c.state, named), (true, JobState::Cancelled, None));
    assert_eq!(
        s.chunk(&job4.id, 2)
            .await
            .expect("chunk")
            .expect("exists")
            .published,
        None
    );

    // outputs replace
    let files: Vec<OutputFile> = (1..=3)
        .map(|n| output(&format!("Patient-{n}.ndjson"), n))
        .collect();
    s.put_outputs(&job.id, &files).await.expect("outputs");
    assert_eq!(s.outputs(&job.id).await.expect("outputs"), files);
    s.put_outputs(&job.id, &files[..1]).await.expect("outputs");
    assert_eq!(
        s.outputs(&job.id).await.expect("outputs"),
        files[..1].to_vec()
    );

    // stalled: active and old only; heartbeat counts as progress
    let old = now - Duration::minutes(30);
    let mut stuck = sample_job(JobState::Running, old);
    stuck.updated_at = old;
    s.create(&stuck).await.expect("create");
    let mut done_old = sample_job(JobState::Completed, old);
    done_old.updated_at = old;
    s.create(&done_old).await.expect("create");
    let stalled: Vec<JobId> = s
        .stalled(now - Duration::minutes(10))
        .await
        .expect("stalled")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert!(stalled.contains(&stuck.id));
    assert!(
        !stalled.contains(&done_old.id),
        "finished jobs are never stalled"
    );
    assert!(!stalled.contains(&job.id), "recent jobs are not stalled");
    s.heartbeat(&stuck.id, now).await.expect("heartbeat");
    let stalled = s
        .stalled(now - Duration::minutes(10))
        .await
        .expect("stalled");
    assert!(
        !stalled.iter().any(|j| j.id == stuck.id),
        "a heartbeat is progress"
    );

    // expired
    let mut gone = sample_job(JobState::Completed, old);
    gone.expires_at = now - Duration::minutes(1);
    s.create(&gone).await.expect("create");
    let expired = s.expired(now).await.expect("expired");
    assert!(expired.iter().any(|j| j.id == gone.id));
    assert!(!expired.iter().any(|j| j.id == job.id));

    // usage: parts summed, a key recorded again replaced, other jobs apart
    assert!(s.usage(&job.id).await.expect("usage").is_empty());
    let mut part = crate::usage::Usage {
        messages: 1,
        wall_ms: 40,
        max_wall_ms: 40,
        dynamodb_write_units: 2.5,
        ..Default::default()
    };
    part.count(crate::usage::S3, "PutObject", 3);
    s.record_usage(&job.id, "chunk-0-a", &part)
        .await
        .expect("record");
    s.record_usage(&job.id, "chunk-1-b", &part)
        .await
        .expect("record");
    s.record_usage(&job.id, "chunk-1-b", &part)
        .await
        .expect("record again");
    s.record_usage(&gone.id, "plan-c", &part)
        .await
        .expect("record");
    let total = s.usage(&job.id).await.expect("usage");
    assert_eq!(total.messages, 2);
    assert_eq!(total.wall_ms, 80);
    assert_eq!(total.max_wall_ms, 40);
    assert_eq!(total.requests_of(crate::usage::S3, "PutObject"), 6);
    assert_eq!(total.dynamodb_write_units, 5.0);

    // delete removes job, chunks, outputs and usage; deleting again is fine
    s.delete(&job.id).await.expect("delete");
    s.delete(&job.id).await.expect("delete again");
    assert!(s.get(&job.id).await.expect("get").is_none());
    assert!(s.chunks(&job.id).await.expect("chunks").is_empty());
    assert!(s.outputs(&job.id).await.expect("outputs").is_empty());
    assert!(s.usage(&job.id).await.expect("usage").is_empty());
    assert_eq!(s.usage(&gone.id).await.expect("usage").messages, 1);
}

/// Schedules' state: compare-and-set on the version, listing, and names unique per store
/// run (the store may be shared with other suites).
/// `stopped` is false while a job runs, true once it is cancelled (or failed) and its groups
/// marked, and true once it is deleted; with a group and without, before and after the
/// group's first completion.
async fn stops(s: &dyn JobStore) {
    let now = Utc::now();
    for end in [JobState::Cancelled, JobState::Failed] {
        let mut job = sample_job(JobState::Running, now);
        job.chunks_total = 3;
        s.create(&job).await.expect("create");
        let (g0, g1) = (
            crate::job::CountGroup { id: 0, size: 2 },
            crate::job::CountGroup { id: 1, size: 1 },
        );
        let specs: Vec<ChunkSpec> = [Some(g0), Some(g0), Some(g1)]
            .into_iter()
            .enumerate()
            .map(|(i, group)| ChunkSpec {
                group,
                ..sample_chunk(i as u32)
            })
            .collect();
        s.put_chunks(&job.id, &specs).await.expect("put_chunks");
        s.complete_chunk(&job.id, 0, &result(1), now, Some(g0))
            .await
            .expect("complete");
        for group in [None, Some(g0), Some(g1)] {
            assert!(
                !s.stopped(&job.id, group).await.expect("stopped"),
                "{group:?} of a running job"
            );
        }
        s.mark_groups_stopped(&job.id, 0).await.expect("no groups");
        let current = s.get(&job.id).await.expect("get").expect("exists");
        let stopped = current.transitioned(end, now).expect("transition");
        s.update(&stopped, current.version).await.expect("stop");
        s.mark_groups_stopped(&job.id, 2).await.expect("mark");
        s.mark_groups_stopped(&job.id, 2).await.expect("mark again");
        for group in [None, Some(g0), Some(g1)] {
            assert!(
                s.stopped(&job.id, group).await.expect("stopped"),
                "{group:?} of a {end:?} job"
            );
        }
        // A late completion in a marked group still counts once and leaves the mark.
        let c = s
            .complete_chunk(&job.id, 1, &result(1), now, Some(g0))
            .await
            .expect("complete");
        assert!(c.first);
        assert!(s.stopped(&job.id, Some(g0)).await.expect("stopped"));
        s.delete(&job.id).await.expect("delete");
        for group in [None, Some(g0), Some(g1)] {
            assert!(
                s.stopped(&job.id, group).await.expect("stopped"),
                "{group:?} of a deleted job"
            );
        }
    }
}

async fn schedules(s: &dyn JobStore) {
    let name = format!("testkit-{}", JobId::new());
    assert!(s.schedule(&name).await.expect("schedule").is_none());
    let mut st =
        crate::schedule::ScheduleState::new(&name, "iss#client", serde_json::json!({"name": name}));
    s.put_schedule(&st, 0).await.expect("first write");
    assert!(
        matches!(s.put_schedule(&st, 0).await, Err(StoreError::Conflict)),
        "a second first write loses"
    );
    let stored = s.schedule(&name).await.expect("schedule").expect("stored");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.owner, "iss#client");
    let job = JobId::new();
    st.in_flight = Some(job.clone());
    s.put_schedule(&st, 1).await.expect("second write");
    assert!(
        matches!(s.put_schedule(&st, 1).await, Err(StoreError::Conflict)),
        "a stale version loses"
    );
    let stored = s.schedule(&name).await.expect("schedule").expect("stored");
    assert_eq!((stored.version, stored.in_flight), (2, Some(job)));
    assert!(
        s.schedules()
            .await
            .expect("list")
            .iter()
            .any(|x| x.name == name && x.version == 2)
    );
}

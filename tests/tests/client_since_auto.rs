//! `fhir-export export --since auto` against the real server: a chain of incremental exports
//! driven by the client. The first run of a request exports everything; each later run sends
//! `_since=<transactionTime of the previous completed run>` and gets exactly what changed; a
//! failed or interrupted run saves nothing, so the next one covers the gap; each request (types,
//! method ...) has its own saved instant; each run writes into a folder of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use fhir_export::client::{self, ClientError, ExportArgs, ExportSummary, STATE_FILE, Section};
use integration_tests::{Options, TestServer, read_source};
use serde_json::Value;

async fn server() -> TestServer {
    TestServer::start(Options::default().env("FHIR_EXPORT_RETRY_AFTER_SECS", "1")).await
}

fn auto_args(t: &TestServer, out: &Path, types: &[&str]) -> ExportArgs {
    ExportArgs {
        base: Some(t.base.clone()),
        since: Some("auto".into()),
        types: types.iter().map(|s| (*s).to_owned()).collect(),
        out: Some(out.to_path_buf()),
        no_progress: true,
        max_wait: 120,
        ..ExportArgs::default()
    }
}

/// The saved `transactionTime` per request key.
fn saved(out: &Path) -> BTreeMap<String, String> {
    let v: Value = serde_json::from_slice(&std::fs::read(out.join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    v["requests"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, e)| (k.clone(), e["transactionTime"].as_str().unwrap().to_owned()))
        .collect()
}

/// The names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// `(type, id)` of every line of the `output` files, sorted (a resource twice is listed twice).
fn exported(s: &ExportSummary) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in s.files.iter().filter(|f| f.section == Section::Output) {
        for line in std::fs::read_to_string(&f.path).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            out.push((
                v["resourceType"].as_str().unwrap().to_owned(),
                v["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

/// The `_since` of the manifest's `request` URL.
fn request_since(s: &ExportSummary) -> Option<String> {
    let request = url::Url::parse(s.manifest["request"].as_str().unwrap()).unwrap();
    request
        .query_pairs()
        .find(|(k, _)| k == "_since")
        .map(|(_, v)| v.into_owned())
}

fn transaction_time(s: &ExportSummary) -> String {
    s.manifest["transactionTime"].as_str().unwrap().to_owned()
}

fn instant(s: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap()
}

/// Appends to the source, for each type, updated copies of two existing resources (the
/// `skip`th and the next) and one new resource, all last updated now; returns them sorted.
fn change_source(t: &TestServer, types: &[&str], skip: usize, tag: &str) -> Vec<(String, String)> {
    let source = read_source(t.source_dir());
    let now = shared::model::format_instant(&chrono::Utc::now());
    let mut changed = Vec::new();
    for ty in types {
        let path = t.source_dir().join(format!("{ty}.ndjson"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut add = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            add.push('\n');
        }
        let existing = &source[*ty];
        assert!(existing.len() > skip + 1, "{ty}: enough resources");
        let mut lines = Vec::new();
        for r in &existing[skip..skip + 2] {
            lines.push(r.clone());
        }
        let mut new = existing[0].clone();
        new["id"] = Value::from(format!("{tag}-{ty}-new"));
        lines.push(new);
        for mut r in lines {
            r["meta"]["lastUpdated"] = Value::from(now.clone());
            changed.push(((*ty).to_owned(), r["id"].as_str().unwrap().to_owned()));
            add.push_str(&r.to_string());
            add.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(add.as_bytes())
            .unwrap();
    }
    changed.sort();
    changed
}

/// Runs the client against a server started without workers, handling its queue meanwhile.
async fn run_with_worker(t: &TestServer, args: ExportArgs) -> Result<ExportSummary, ClientError> {
    let worker = async {
        let deps = &t.server.deps;
        loop {
            let got = deps
                .queue
                .receive(10, Duration::from_millis(200))
                .await
                .expect("receive");
            if got.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for d in got {
                // Messages of a cancelled export may be refused: that is not this test's concern.
                let _ =
                    shared::worker::handle_message(deps, &d.body, &shared::worker::NoLease).await;
                deps.queue.delete(&d.receipt).await.expect("ack");
            }
        }
    };
    tokio::select! {
        r = client::run(args) => r,
        () = worker => unreachable!(),
    }
}

#[tokio::test]
async fn first_run_exports_everything_then_only_what_changed() {
    let t = server().await;
    let out = tempfile::tempdir().unwrap();
    let types = ["Patient", "Observation"];
    let source = read_source(t.source_dir());

    // Run 1: no saved instant, so no `_since`: everything of the types.
    let s1 = client::run(auto_args(&t, out.path(), &types))
        .await
        .unwrap();
    let want: BTreeMap<String, u64> = types
        .iter()
        .map(|ty| ((*ty).to_owned(), source[*ty].len() as u64))
        .collect();
    assert_eq!(s1.per_type(), want, "everything of the types");
    assert_eq!(request_since(&s1), None, "no _since on the first run");
    let tt1 = transaction_time(&s1);
    let a1 = s1.since_auto.clone().expect("--since auto reported");
    assert_eq!(a1.since, None);
    assert_eq!(a1.saved, tt1);
    assert_eq!(a1.state_file, out.path().join(STATE_FILE));
    assert_eq!(
        saved(out.path()),
        BTreeMap::from([(a1.key.clone(), tt1.clone())])
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(out.path().join(STATE_FILE)).unwrap()).unwrap();
    let entry = &state["requests"][&a1.key];
    assert_eq!(entry["status_url"], s1.status_url.as_str());
    let folder1 = s1.out_dir.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(entry["folder"], folder1.as_str());
    shared::model::parse_instant(entry["completed_at"].as_str().unwrap()).unwrap();
    // The run's files are in a folder of its own, complete, under its final name.
    assert_eq!(s1.out_dir.parent(), Some(out.path()));
    assert_eq!(
        listing(out.path()),
        [STATE_FILE.to_owned(), folder1.clone()]
    );
    assert!(s1.out_dir.join("manifest.json").is_file());
    for f in &s1.files {
        assert!(f.path.starts_with(&s1.out_dir) && f.path.is_file(), "{f:?}");
    }
    let text = s1.to_string();
    assert!(text.contains("without _since"), "{text}");
    assert!(
        text.contains(&format!("saved transactionTime {tt1}")),
        "{text}"
    );

    // Changes after run 1's transactionTime, in the requested types and another one.
    let changed = change_source(&t, &types, 3, "run2");
    let _ = change_source(&t, &["Condition"], 0, "other");
    let lu = read_source(t.source_dir())["Patient"].last().unwrap()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(instant(&lu) > instant(&tt1), "{lu} after {tt1}");
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Run 2: `_since` is run 1's transactionTime, and exactly the changes come back.
    let s2 = client::run(auto_args(&t, out.path(), &types))
        .await
        .unwrap();
    assert_eq!(request_since(&s2).as_deref(), Some(tt1.as_str()));
    let a2 = s2.since_auto.clone().unwrap();
    assert_eq!(a2.since.as_deref(), Some(tt1.as_str()));
    assert_eq!(a2.key, a1.key);
    assert_eq!(exported(&s2), changed);
    let tt2 = transaction_time(&s2);
    assert!(instant(&tt2) > instant(&tt1));
    assert_eq!(
        saved(out.path()),
        BTreeMap::from([(a1.key.clone(), tt2.clone())])
    );
    let folder2 = s2.out_dir.file_name().unwrap().to_str().unwrap().to_owned();
    assert_ne!(folder1, folder2);
    assert_eq!(
        listing(out.path()),
        [STATE_FILE.to_owned(), folder1.clone(), folder2.clone()]
    );
    assert!(folder1 < folder2, "run folders sort in run order");
    let text = s2.to_string();
    assert!(text.contains(&format!("_since={tt1}")), "{text}");

    // Run 3, nothing changed: nothing exported, the chain moves on.
    let s3 = client::run(auto_args(&t, out.path(), &types))
        .await
        .unwrap();
    assert_eq!(request_since(&s3).as_deref(), Some(tt2.as_str()));
    assert_eq!(exported(&s3), []);
    assert_eq!(
        saved(out.path()),
        BTreeMap::from([(a1.key.clone(), transaction_time(&s3))])
    );
    t.server.stop().await;
}

#[tokio::test]
async fn a_failed_or_interrupted_run_keeps_the_saved_instant() {
    // No workers: an export only progresses while `run_with_worker` handles the queue, so a
    // run without it can never complete.
    let t = TestServer::start(Options {
        workers: 0,
        ..Options::default().env("FHIR_EXPORT_RETRY_AFTER_SECS", "1")
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let args = || auto_args(&t, out.path(), &["Patient"]);

    let s1 = run_with_worker(&t, args()).await.unwrap();
    let tt1 = transaction_time(&s1);
    let state = std::fs::read(out.path().join(STATE_FILE)).unwrap();
    let before = listing(out.path());
    let unchanged = |what: &str| {
        assert_eq!(
            std::fs::read(out.path().join(STATE_FILE)).unwrap(),
            state,
            "{what}: the saved instant is kept"
        );
        assert_eq!(listing(out.path()), before, "{what}: no folder left behind");
    };
    let changed = change_source(&t, &["Patient"], 5, "gap");
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Interrupted before the server accepted the export.
    match client::run_until(args(), std::future::ready(())).await {
        Err(ClientError::Interrupted {
            status_url: None, ..
        }) => {}
        other => panic!("expected an interrupt before the kick-off, got {other:?}"),
    }
    unchanged("interrupted before the kick-off");

    // Timed out: the export never completes.
    match client::run(ExportArgs {
        max_wait: 1,
        ..args()
    })
    .await
    {
        Err(ClientError::TimedOut { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    unchanged("timed out");

    // Interrupted while the export runs, and cancelled.
    match client::run_until(
        ExportArgs {
            cancel_on_interrupt: true,
            ..args()
        },
        tokio::time::sleep(Duration::from_millis(500)),
    )
    .await
    {
        Err(ClientError::Interrupted {
            status_url: Some(_),
            cancelled: true,
        }) => {}
        other => panic!("expected an interrupt after the kick-off, got {other:?}"),
    }
    unchanged("interrupted");

    // The next complete run starts from the saved instant: the changes are all there.
    let s = run_with_worker(&t, args()).await.unwrap();
    assert_eq!(request_since(&s).as_deref(), Some(tt1.as_str()));
    assert_eq!(exported(&s), changed);
    assert_eq!(
        saved(out.path()).into_values().collect::<Vec<_>>(),
        [transaction_time(&s)]
    );
    t.server.stop().await;
}

#[tokio::test]
async fn each_request_keeps_its_own_instant() {
    let t = server().await;
    let out = tempfile::tempdir().unwrap();
    let source = read_source(t.source_dir());

    let p1 = client::run(auto_args(&t, out.path(), &["Patient"]))
        .await
        .unwrap();
    let key_p = p1.since_auto.clone().unwrap().key;
    let tt_p1 = transaction_time(&p1);

    // Another type list is another request: its first run exports everything.
    let o1 = client::run(auto_args(&t, out.path(), &["Observation"]))
        .await
        .unwrap();
    assert_eq!(request_since(&o1), None);
    assert_eq!(
        o1.per_type()["Observation"],
        source["Observation"].len() as u64
    );
    let key_o = o1.since_auto.clone().unwrap().key;
    assert_ne!(key_o, key_p);
    let tt_o1 = transaction_time(&o1);
    assert_eq!(
        saved(out.path()),
        BTreeMap::from([
            (key_p.clone(), tt_p1.clone()),
            (key_o.clone(), tt_o1.clone())
        ])
    );

    // Patient again (the type repeated: the same request): from its own instant.
    let p2 = client::run(auto_args(&t, out.path(), &["Patient", "Patient"]))
        .await
        .unwrap();
    assert_eq!(p2.since_auto.clone().unwrap().key, key_p);
    assert_eq!(request_since(&p2).as_deref(), Some(tt_p1.as_str()));
    assert_eq!(exported(&p2), []);
    let tt_p2 = transaction_time(&p2);
    assert_eq!(
        saved(out.path()),
        BTreeMap::from([
            (key_p.clone(), tt_p2.clone()),
            (key_o.clone(), tt_o1.clone())
        ])
    );

    // POST is another request too.
    let post = client::run(ExportArgs {
        post: true,
        ..auto_args(&t, out.path(), &["Patient"])
    })
    .await
    .unwrap();
    let a = post.since_auto.clone().unwrap();
    assert_eq!(a.since, None);
    assert_eq!(post.per_type()["Patient"], source["Patient"].len() as u64);
    assert_eq!(saved(out.path()).len(), 3);
    assert_eq!(saved(out.path())[&key_p], tt_p2);
    assert_eq!(saved(out.path())[&key_o], tt_o1);

    // A run without `--since auto` into the same folder works as it always did: into the
    // folder itself, and the saved instants are left alone.
    let state = std::fs::read(out.path().join(STATE_FILE)).unwrap();
    let plain = client::run(ExportArgs {
        since: None,
        ..auto_args(&t, out.path(), &["Patient"])
    })
    .await
    .unwrap();
    assert_eq!(plain.out_dir, out.path());
    assert!(plain.since_auto.is_none());
    assert!(!plain.to_string().contains("--since auto"));
    assert!(out.path().join("manifest.json").is_file());
    assert_eq!(std::fs::read(out.path().join(STATE_FILE)).unwrap(), state);

    let folders: BTreeSet<String> = [&p1, &o1, &p2, &post]
        .iter()
        .map(|s| {
            s.out_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(folders.len(), 4, "a folder per run: {folders:?}");
    let names = listing(out.path());
    for f in &folders {
        assert!(names.contains(f), "{f} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with(".incomplete")),
        "{names:?}"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn since_auto_needs_an_out_folder() {
    let args = ExportArgs {
        // Nothing listens there: the flags are refused before any request.
        base: Some("http://127.0.0.1:9/fhir".into()),
        since: Some("auto".into()),
        no_progress: true,
        ..ExportArgs::default()
    };
    match client::run(args.clone()).await {
        Err(e @ ClientError::Usage(_)) => {
            let text = e.to_string();
            assert!(text.contains("--since auto needs --out"), "{text}");
        }
        other => panic!("expected a usage error, got {other:?}"),
    }
    let out = tempfile::tempdir().unwrap();
    match client::run(ExportArgs {
        status: Some("http://127.0.0.1:9/fhir/_export/x".into()),
        out: Some(out.path().to_path_buf()),
        ..args
    })
    .await
    {
        Err(ClientError::Usage(m)) => assert!(m.contains("--status"), "{m}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
    assert_eq!(listing(out.path()), Vec::<String>::new(), "nothing written");
}

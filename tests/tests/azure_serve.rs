//! `fhir-export serve` over real sockets with its output on Azurite: exports at an account
//! root (a container per export), into a user's container (`_container`), under a
//! container's prefix; files served or reached by SAS links; cancels, roll-over, and the
//! credential and container faults that must fail an export at once, in words.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fhir_export::serve::Wrap;
use fhir_export::synth;
use integration_tests::azure::{
    account_store, azurite, container_exists, container_name, container_sas, emulator_env,
    new_container, sas_env,
};
use integration_tests::wrappers::{SlowSource, SourceWrapper, Wrapped};
use integration_tests::{
    COMPARTMENT_TYPES, Options, TestServer, current_members, file_names, patient_refs, read_source,
};
use serde_json::Value;
use shared::adapters::azure::AzureStore;
use shared::job::ReadSpec;
use shared::layout;
use shared::model::JobId;
use shared::ports::{ObjectMeta, ObjectStore, RecordReader, ResourceSource, SourceError};

/// A server exporting to `output` on Azurite (its key, plus `env`).
async fn server(url: &str, output: &str, patients: u64, env: &[(&str, &str)]) -> TestServer {
    let mut opts = Options {
        patients,
        output: Some(output.to_owned()),
        env: emulator_env(url),
        ..Options::default()
    };
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    TestServer::start(opts).await
}

fn job_id(status_url: &str) -> JobId {
    JobId::parse(status_url.rsplit('/').next().unwrap()).unwrap()
}

/// The export's container and folder (`<container>/<job id>`), from its record.
async fn container_of(t: &TestServer, status: &str) -> String {
    let job = t.job(status).await;
    let id = job_id(status);
    let (container, folder) = job
        .output_prefix
        .split_once('/')
        .unwrap_or_else(|| panic!("no container in {}", job.output_prefix));
    assert_eq!(folder, id.as_str(), "the export's folder is its job id");
    container.to_owned()
}

/// Every blob under a prefix, as (key, size).
async fn blobs(store: &AzureStore, prefix: &str) -> Vec<(String, u64)> {
    store
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
        .into_iter()
        .map(|ObjectMeta { key, size }| (key, size))
        .collect()
}

/// The ids per type that an export selecting the resources `keep` takes should return.
fn ids_of(
    source: &BTreeMap<String, Vec<Value>>,
    keep: impl Fn(&str, &Value) -> bool,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (t, resources) in source {
        let ids: BTreeSet<String> = resources
            .iter()
            .filter(|r| keep(t, r))
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        if !ids.is_empty() {
            out.insert(t.clone(), ids);
        }
    }
    out
}

/// In the Patient compartment of one of the patients `keep` keeps.
fn of_patients(t: &str, r: &Value, keep: &dyn Fn(&str) -> bool) -> bool {
    if !COMPARTMENT_TYPES.contains(&t) {
        return false;
    }
    if t == "Patient" {
        return keep(r["id"].as_str().unwrap());
    }
    let mut refs = BTreeSet::new();
    patient_refs(r, &mut refs);
    refs.iter().any(|id| keep(id))
}

/// Asserts that the downloaded resources are `want`'s, each once, each as in the source.
fn assert_resources(
    got: &BTreeMap<String, Vec<Value>>,
    source: &BTreeMap<String, Vec<Value>>,
    want: &BTreeMap<String, BTreeSet<String>>,
) {
    let got_ids: BTreeMap<String, BTreeSet<String>> = got
        .iter()
        .map(|(t, rs)| {
            let ids: BTreeSet<String> = rs
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ids.len(), rs.len(), "{t} has duplicates");
            (t.clone(), ids)
        })
        .collect();
    assert_eq!(&got_ids, want);
    for (t, rs) in got {
        let by_id: BTreeMap<&str, &Value> = source[t]
            .iter()
            .map(|r| (r["id"].as_str().unwrap(), r))
            .collect();
        for r in rs {
            assert_eq!(
                Some(&r),
                by_id.get(r["id"].as_str().unwrap()),
                "{t} content"
            );
        }
    }
}

/// The text of every issue of an OperationOutcome.
fn outcome_text(oo: &Value) -> String {
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Waits for a failed export; returns its OperationOutcome's text.
async fn failure(t: &TestServer, status: &str) -> String {
    let resp = t.wait(status).await;
    assert_eq!(resp.status(), 500, "the export did not fail");
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(oo["issue"][0]["severity"], "error", "{oo}");
    outcome_text(&oo)
}

/// An export at the account root, kicked off at `path`: a container of its own whose name
/// says so, the export's folder in it and nothing else once it completed, and files served
/// through the server equal to what the request selects.
async fn export_at_the_account_root(
    path: &str,
    want: impl Fn(&BTreeMap<String, Vec<Value>>) -> BTreeMap<String, BTreeSet<String>>,
) {
    let Some(url) = azurite().await else { return };
    let t = server(&url, "az://", 30, &[]).await;
    let source = read_source(t.source_dir());
    let status = t.start_export(path, "").await;
    let manifest = t.manifest(&status).await;
    let id = job_id(&status);
    assert_eq!(manifest["requiresAccessToken"], false);
    assert_eq!(manifest["error"], serde_json::json!([]));
    for item in manifest["output"].as_array().unwrap() {
        let file = item["url"].as_str().unwrap();
        assert!(
            file.starts_with(&format!("{}/_export/{id}/files/", t.base)),
            "served through the files route: {file}"
        );
    }
    let got = t.download(&manifest, "output").await;
    let want = want(&source);
    assert!(!want.is_empty());
    assert_resources(&got, &source, &want);

    let container = container_of(&t, &status).await;
    assert!(layout::is_new_container(&container), "{container}");
    assert!(
        container.ends_with(&id.as_str()[..8]),
        "{container} names job {id}"
    );
    assert!(container_exists(&url, &container).await);
    let stored = blobs(&account_store(&url), &format!("{container}/")).await;
    let folder = format!("{container}/{id}/");
    let mut names: Vec<String> = stored
        .iter()
        .map(|(k, _)| {
            k.strip_prefix(&folder)
                .unwrap_or_else(|| panic!("{k} is outside the export's folder"))
                .to_owned()
        })
        .collect();
    names.sort();
    let mut listed = file_names(&manifest);
    listed.sort();
    assert_eq!(names, listed, "the container holds the export's files only");
    t.server.stop().await;
}

#[tokio::test]
async fn a_system_export_at_the_account_root_gets_a_container_of_its_own() {
    export_at_the_account_root("/$export", |source| ids_of(source, |_, _| true)).await;
}

#[tokio::test]
async fn a_patient_export_at_the_account_root_gets_a_container_of_its_own() {
    export_at_the_account_root("/Patient/$export", |source| {
        ids_of(source, |t, r| of_patients(t, r, &|_| true))
    })
    .await;
}

#[tokio::test]
async fn a_group_export_at_the_account_root_gets_a_container_of_its_own() {
    export_at_the_account_root(
        &format!("/Group/{}/$export", synth::GROUP_SMALL),
        |source| {
            let group = source["Group"]
                .iter()
                .find(|g| g["id"] == synth::GROUP_SMALL)
                .unwrap();
            let members = current_members(group);
            assert!(!members.is_empty());
            ids_of(source, |t, r| of_patients(t, r, &|id| members.contains(id)))
        },
    )
    .await;
}

#[tokio::test]
async fn exports_into_a_users_container_get_a_folder_each() {
    let Some(url) = azurite().await else { return };
    let Some((mine, store)) = new_container("mine", "").await else {
        return;
    };
    let t = server(&url, "az://", 20, &[]).await;
    let source = read_source(t.source_dir());
    let query = format!("_container={mine}&_type=Patient,Condition");

    let first = t.start_export("/$export", &query).await;
    let manifest = t.manifest(&first).await;
    let got = t.download(&manifest, "output").await;
    let want = ids_of(&source, |t, _| t == "Patient" || t == "Condition");
    assert_resources(&got, &source, &want);
    assert_eq!(container_of(&t, &first).await, mine);
    let id1 = job_id(&first);
    let before = blobs(&store, "").await;
    let mut names: Vec<String> = before
        .iter()
        .map(|(k, _)| {
            k.strip_prefix(&format!("{id1}/"))
                .unwrap_or_else(|| panic!("{k} is outside the export's folder"))
                .to_owned()
        })
        .collect();
    names.sort();
    let mut listed = file_names(&manifest);
    listed.sort();
    assert_eq!(names, listed);

    let second = t.start_export("/$export", &query).await;
    let manifest = t.manifest(&second).await;
    assert_resources(&t.download(&manifest, "output").await, &source, &want);
    let id2 = job_id(&second);
    assert_ne!(id1, id2);
    assert_eq!(container_of(&t, &second).await, mine);
    // The first export's files are as they were; the second's are in a folder of its own.
    assert_eq!(blobs(&store, &format!("{id1}/")).await, before);
    let theirs = blobs(&store, &format!("{id2}/")).await;
    assert_eq!(theirs.len(), file_names(&manifest).len());
    assert_eq!(
        blobs(&store, "").await.len(),
        before.len() + theirs.len(),
        "no staging or other blob is left"
    );
    t.server.stop().await;
    assert!(container_exists(&url, &mine).await);
}

#[tokio::test]
async fn under_a_containers_prefix_container_is_a_sub_folder() {
    let Some(url) = azurite().await else { return };
    let Some((name, store)) = new_container("rooted", "").await else {
        return;
    };
    let t = server(&url, &format!("az://{name}/some/prefix"), 20, &[]).await;
    let source = read_source(t.source_dir());

    let status = t
        .start_export("/$export", "_container=sub&_type=Patient")
        .await;
    let manifest = t.manifest(&status).await;
    let got = t.download(&manifest, "output").await;
    assert_resources(&got, &source, &ids_of(&source, |t, _| t == "Patient"));
    let id = job_id(&status);
    assert_eq!(t.job(&status).await.output_prefix, format!("sub/{id}"));
    let under = blobs(&store, &format!("some/prefix/sub/{id}/")).await;
    assert_eq!(under.len(), file_names(&manifest).len());

    // Without `_container`: the prefix's own folder; no container is made.
    let status = t.start_export("/$export", "_type=Patient").await;
    let manifest = t.manifest(&status).await;
    assert_resources(
        &t.download(&manifest, "output").await,
        &source,
        &ids_of(&source, |t, _| t == "Patient"),
    );
    let id2 = job_id(&status);
    assert_eq!(t.job(&status).await.output_prefix, id2.as_str());
    let beside = blobs(&store, &format!("some/prefix/{id2}/")).await;
    assert_eq!(beside.len(), file_names(&manifest).len());
    // Nothing else in the container: no staging, no probe.
    assert_eq!(blobs(&store, "").await.len(), under.len() + beside.len());
    t.server.stop().await;
}

#[tokio::test]
async fn signed_file_access_lists_sas_links_that_a_plain_client_fetches() {
    let Some(url) = azurite().await else { return };
    let t = server(&url, "az://", 20, &[("FHIR_EXPORT_FILE_ACCESS", "signed")]).await;
    let source = read_source(t.source_dir());
    let status = t
        .start_export("/$export", "_type=Patient,Observation")
        .await;
    let manifest = t.manifest(&status).await;
    assert_eq!(manifest["requiresAccessToken"], false);
    let id = job_id(&status);
    let container = container_of(&t, &status).await;
    let plain = reqwest::Client::new();
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let items = manifest["output"].as_array().unwrap();
    assert!(!items.is_empty());
    for item in items {
        let link = item["url"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("{url}/devstoreaccount1/{container}/{id}/")),
            "{link}"
        );
        assert!(link.contains("sig="), "{link}");
        let resp = plain.get(link).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{link}");
        assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
        let body = resp.text().await.unwrap();
        assert_eq!(
            body.lines().count() as u64,
            item["count"].as_u64().unwrap(),
            "{link}"
        );
        // The server's files route gives the same bytes (it sends the client on to a link
        // of its own).
        let name = link.split('?').next().unwrap().rsplit('/').next().unwrap();
        let served = plain
            .get(format!("{}/_export/{id}/files/{name}", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200, "{name}");
        assert_eq!(served.text().await.unwrap(), body, "{name}");
        let ty = item["type"].as_str().unwrap();
        for line in body.lines() {
            got.entry(ty.to_owned())
                .or_default()
                .push(serde_json::from_str(line).unwrap());
        }
    }
    assert_resources(
        &got,
        &source,
        &ids_of(&source, |t, _| t == "Patient" || t == "Observation"),
    );
    t.server.stop().await;
}

#[tokio::test]
async fn with_a_sas_token_credential_files_are_served_by_the_server() {
    let Some(url) = azurite().await else { return };
    let Some((name, _)) = new_container("sasout", "").await else {
        return;
    };
    let sas = container_sas(
        &name,
        "racwdl",
        chrono::Utc::now() + chrono::Duration::hours(1),
    );
    let mut opts = Options {
        patients: 20,
        output: Some(format!("az://{name}")),
        env: sas_env(&url, &sas),
        ..Options::default()
    };
    opts = opts.env("FHIR_EXPORT_FILE_ACCESS", "signed");
    let t = TestServer::start(opts).await;
    let source = read_source(t.source_dir());
    let status = t.start_export("/$export", "_type=Patient").await;
    let manifest = t.manifest(&status).await;
    let id = job_id(&status);
    assert_eq!(manifest["requiresAccessToken"], false);
    for item in manifest["output"].as_array().unwrap() {
        let file = item["url"].as_str().unwrap();
        assert!(
            file.starts_with(&format!("{}/_export/{id}/files/", t.base)),
            "a SAS token cannot sign: the server serves {file}"
        );
        assert!(!file.contains("sig="), "{file}");
    }
    let got = t.download(&manifest, "output").await;
    assert_resources(&got, &source, &ids_of(&source, |t, _| t == "Patient"));
    t.server.stop().await;
}

/// A cancel in the middle of an export's first chunk (see `cancel.rs`): nothing of the
/// export is left, and a container made for it is gone.
async fn cancel_mid_export(user_container: bool) {
    let Some(url) = azurite().await else { return };
    let mine = match user_container {
        true => match new_container("cancel", "").await {
            Some((name, _)) => Some(name),
            None => return,
        },
        false => None,
    };
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    let mut opts = Options {
        workers: 1,
        patients: 300,
        output: Some("az://".to_owned()),
        env: emulator_env(&url),
        ..Options::default()
    }
    .env("FHIR_EXPORT_CHUNK_BYTES", "3000000");
    opts.wrap.source = Some(Wrap::new(move |inner| {
        Arc::new(Wrapped(SlowSource {
            inner,
            delay: Duration::from_millis(100),
            batches: counted.clone(),
        }))
    }));
    let t = TestServer::start(opts).await;
    let query = match &mine {
        Some(c) => format!("_type=Observation&_container={c}"),
        None => "_type=Observation".to_owned(),
    };
    let status = t.start_export("/$export", &query).await;
    let id = job_id(&status);
    let container = container_of(&t, &status).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while batches.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no chunk started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(container_exists(&url, &container).await);
    let resp = t.http.delete(&status).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(t.http.get(&status).send().await.unwrap().status(), 404);
    let cancelled_at = Instant::now();
    t.settle().await;
    // The chunk in flight stops, cleans up and is done: no clean-up fails and is retried.
    let settled = cancelled_at.elapsed();
    assert!(
        settled < Duration::from_secs(10),
        "the work queue took {settled:?} to settle after the cancel"
    );
    let job = t.server.deps.jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(job.chunks_done, 0, "a chunk finished after the cancel");
    match &mine {
        Some(c) => {
            let store = account_store(&url);
            for prefix in layout::export_prefixes(&format!("{c}/{id}")) {
                let left = blobs(&store, &prefix).await;
                assert!(left.is_empty(), "blobs are left: {left:?}");
            }
            assert!(container_exists(&url, c).await, "the user's container went");
        }
        None => assert!(
            !container_exists(&url, &container).await,
            "the export's container {container} is left"
        ),
    }
    t.server.stop().await;
}

#[tokio::test]
async fn a_cancel_mid_export_leaves_no_container_at_the_account_root() {
    cancel_mid_export(false).await;
}

#[tokio::test]
async fn a_cancel_mid_export_leaves_nothing_in_a_users_container() {
    cancel_mid_export(true).await;
}

#[tokio::test]
async fn a_discarded_export_takes_its_container_with_it() {
    let Some(url) = azurite().await else { return };
    let t = server(&url, "az://", 10, &[]).await;
    let status = t.start_export("/$export", "_type=Patient").await;
    let container = container_of(&t, &status).await;
    let manifest = t.manifest(&status).await;
    assert!(!manifest["output"].as_array().unwrap().is_empty());
    assert!(container_exists(&url, &container).await);
    // A client discards the completed export.
    let resp = t.http.delete(&status).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(t.http.get(&status).send().await.unwrap().status(), 404);
    assert!(
        !container_exists(&url, &container).await,
        "a discarded export's container is left"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn an_expired_export_takes_its_container_with_it() {
    let Some(url) = azurite().await else { return };
    let t = server(&url, "az://", 10, &[("FHIR_EXPORT_RETENTION_SECS", "3")]).await;
    let status = t
        .start_export(&format!("/Group/{}/$export", synth::GROUP_SMALL), "")
        .await;
    let container = container_of(&t, &status).await;
    let manifest = t.manifest(&status).await;
    assert!(!manifest["output"].as_array().unwrap().is_empty());
    assert!(container_exists(&url, &container).await);
    // The sweep runs every second here.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.http.get(&status).send().await.unwrap().status() != 404 {
        assert!(Instant::now() < deadline, "the export did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !container_exists(&url, &container).await,
        "an expired export's container is left"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn files_roll_over_past_the_size_threshold() {
    let Some(url) = azurite().await else { return };
    let t = server(
        &url,
        "az://",
        30,
        &[("FHIR_EXPORT_MAX_FILE_BYTES", "20000")],
    )
    .await;
    let source = read_source(t.source_dir());
    let status = t.start_export("/$export", "_type=Observation").await;
    let manifest = t.manifest(&status).await;
    let names = file_names(&manifest);
    assert!(names.len() > 3, "expected several files, got {names:?}");
    let want: Vec<String> = (1..=names.len())
        .map(|n| format!("Observation-{n}.ndjson"))
        .collect();
    assert_eq!(names, want, "numbered Type-1.ndjson, Type-2.ndjson, ...");
    let id = job_id(&status);
    let container = container_of(&t, &status).await;
    let stored = blobs(&account_store(&url), &format!("{container}/{id}/")).await;
    assert_eq!(stored.len(), names.len());
    for (key, size) in &stored {
        assert!(*size <= 20000, "{key} is {size} bytes");
    }
    let got = t.download(&manifest, "output").await;
    assert_resources(&got, &source, &ids_of(&source, |t, _| t == "Observation"));
    t.server.stop().await;
}

#[tokio::test]
async fn a_read_only_credential_fails_the_export_at_once_in_words() {
    let Some(url) = azurite().await else { return };
    let Some((x, admin)) = new_container("readonly", "").await else {
        return;
    };
    let sas = container_sas(&x, "rl", chrono::Utc::now() + chrono::Duration::hours(1));
    let t = TestServer::start(Options {
        patients: 20,
        output: Some("az://".to_owned()),
        env: sas_env(&url, &sas),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let status = t.start_export("/$export", &format!("_container={x}")).await;
    let text = failure(&t, &status).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "failed after {elapsed:?}"
    );
    for part in [
        "devstoreaccount1",
        x.as_str(),
        "Storage Blob Data Contributor",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert!(!text.contains('<'), "raw XML: {text}");
    assert!(blobs(&admin, "").await.is_empty(), "something was written");
    t.server.stop().await;
}

#[tokio::test]
async fn a_container_that_does_not_exist_fails_the_export_and_is_named() {
    let Some(url) = azurite().await else { return };
    let missing = container_name("absent");
    let t = server(&url, "az://", 20, &[]).await;
    let started = Instant::now();
    let status = t
        .start_export("/$export", &format!("_container={missing}"))
        .await;
    let text = failure(&t, &status).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed after {:?}",
        started.elapsed()
    );
    assert!(text.contains("does not exist"), "{text}");
    assert!(text.contains(&missing), "{text}");
    assert!(text.contains("devstoreaccount1"), "{text}");
    assert!(!text.contains('<'), "raw XML: {text}");
    assert!(
        !container_exists(&url, &missing).await,
        "a user's container was made"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn bad_container_names_are_refused_at_kickoff() {
    let Some(url) = azurite().await else { return };
    let t = server(&url, "az://", 3, &[]).await;
    for bad in ["Bad", "a", "..%2Fx", "../x", "a--b", "-ab"] {
        let resp = t.kickoff("/$export", &format!("_container={bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let oo: Value = resp.json().await.unwrap();
        assert_eq!(oo["issue"][0]["severity"], "error", "{bad}: {oo}");
        assert_eq!(oo["issue"][0]["expression"][0], "_container", "{bad}: {oo}");
        assert!(outcome_text(&oo).contains("_container"), "{bad}: {oo}");
    }
    let far = chrono::Utc::now() + chrono::Duration::days(365);
    let jobs = t.server.deps.jobs.stalled(far).await.unwrap();
    assert!(jobs.is_empty(), "bad requests created jobs: {jobs:?}");
    t.server.stop().await;
}

/// Exports at the account root with `faults` on (`FHIR_EXPORT_FAULTS`), in chunks of their
/// own: every resource once, and nothing but the export's files in its container.
async fn account_root_export_through(faults: &str) {
    let Some(url) = azurite().await else { return };
    let injected_before = shared::adapters::faults::injected_failures();
    let t = server(
        &url,
        "az://",
        20,
        &[
            ("FHIR_EXPORT_FAULTS", faults),
            ("FHIR_EXPORT_CHUNK_BYTES", "20000"),
            ("FHIR_EXPORT_PACK_BYTES", "0"),
        ],
    )
    .await;
    let source = read_source(t.source_dir());
    for path in ["/$export", "/Patient/$export"] {
        let status = t.start_export(path, "").await;
        let manifest = t.manifest(&status).await;
        let got = t.download(&manifest, "output").await;
        let want = match path {
            "/$export" => ids_of(&source, |_, _| true),
            _ => ids_of(&source, |t, r| of_patients(t, r, &|_| true)),
        };
        assert_resources(&got, &source, &want);
        let container = container_of(&t, &status).await;
        let id = job_id(&status);
        let stored = blobs(&account_store(&url), &format!("{container}/")).await;
        let folder = format!("{container}/{id}/");
        for (key, _) in &stored {
            assert!(key.starts_with(&folder), "{key} is left beside the export");
        }
        assert_eq!(stored.len(), file_names(&manifest).len());
    }
    if faults.starts_with("object-store-errors") {
        let injected = shared::adapters::faults::injected_failures() - injected_before;
        assert!(injected > 10, "only {injected} faults injected");
    }
    t.server.stop().await;
}

#[tokio::test]
async fn account_root_exports_complete_with_every_message_delivered_twice() {
    account_root_export_through("duplicate-delivery").await;
}

#[tokio::test]
async fn account_root_exports_complete_when_store_calls_fail_now_and_then() {
    account_root_export_through("object-store-errors=0.1").await;
}

/// A source whose first reader fails with a transient error: the chunk's first attempt
/// fails and its message is delivered again.
struct FailsOnce {
    inner: Arc<dyn ResourceSource>,
    opened: Arc<AtomicUsize>,
}

#[async_trait]
impl SourceWrapper for FailsOnce {
    fn inner(&self) -> &Arc<dyn ResourceSource> {
        &self.inner
    }
    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
        if self.opened.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(SourceError::Backend("a transient hiccup".into()));
        }
        self.inner.open(read).await
    }
}

#[tokio::test]
async fn a_chunk_retried_at_the_account_root_still_completes_the_export() {
    let Some(url) = azurite().await else { return };
    let opened = Arc::new(AtomicUsize::new(0));
    let mut opts = Options {
        patients: 10,
        output: Some("az://".to_owned()),
        env: emulator_env(&url),
        ..Options::default()
    };
    let counter = opened.clone();
    opts.wrap.source = Some(Wrap::new(move |inner| {
        Arc::new(Wrapped(FailsOnce {
            inner,
            opened: counter.clone(),
        }))
    }));
    let t = TestServer::start(opts).await;
    let source = read_source(t.source_dir());
    let status = t.start_export("/$export", "_type=Patient").await;
    let manifest = t.manifest(&status).await;
    let got = t.download(&manifest, "output").await;
    assert_resources(&got, &source, &ids_of(&source, |t, _| t == "Patient"));
    assert!(
        opened.load(Ordering::SeqCst) >= 2,
        "the chunk was not tried again"
    );
    t.server.stop().await;
}

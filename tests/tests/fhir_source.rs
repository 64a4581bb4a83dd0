//! The upstream FHIR server source against a real FHIR server (Helios): an export through
//! our server reading Helios must equal, type by type and id by id (and resource by resource,
//! but for `meta`, which the server rewrites), what the NDJSON source gives on the same data,
//! at all three levels, with `_typeFilter`, `patient` and Groups; `_since` selects what
//! changed on the server after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::helios::{Helios, read_dir_resources};
use integration_tests::{Options, TestServer, dataset, synthea_dir};
use serde_json::{Value, json};

/// Per type, id -> the resource without `meta`.
type Keyed = BTreeMap<String, BTreeMap<String, Value>>;

fn keyed(got: &BTreeMap<String, Vec<Value>>) -> Keyed {
    let mut out = Keyed::new();
    for (t, rs) in got {
        let by_id = out.entry(t.clone()).or_default();
        for r in rs {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("meta");
            let id = r["id"].as_str().unwrap().to_owned();
            assert!(
                by_id.insert(id.clone(), r).is_none(),
                "{t}/{id} exported twice"
            );
        }
    }
    out
}

fn ids(k: &Keyed) -> BTreeMap<String, BTreeSet<String>> {
    k.iter()
        .map(|(t, m)| (t.clone(), m.keys().cloned().collect()))
        .collect()
}

/// Asserts two exports hold the same resources.
fn assert_same(what: &str, upstream: &Keyed, files: &Keyed) {
    assert_eq!(ids(upstream), ids(files), "{what}: ids differ");
    for (t, m) in files {
        for (id, r) in m {
            assert_eq!(&upstream[t][id], r, "{what}: {t}/{id} differs");
        }
    }
}

async fn export(t: &TestServer, path: &str, query: &str) -> Keyed {
    keyed(
        &t.download(&export_manifest(t, path, query).await, "output")
            .await,
    )
}

/// The manifest of a completed export, whose error files hold warnings at most (Helios
/// lists `history-type` for OperationDefinition and answers 404: a `_since` export says it
/// cannot list that type's deletions).
async fn export_manifest(t: &TestServer, path: &str, query: &str) -> Value {
    let status = t.start_export(path, query).await;
    let manifest = t.manifest(&status).await;
    let errors = t.download(&manifest, "error").await;
    for outcome in errors.values().flatten() {
        for issue in outcome["issue"].as_array().unwrap() {
            assert_eq!(issue["severity"], "warning", "{path}?{query}: {outcome}");
        }
    }
    manifest
}

async fn post_export(t: &TestServer, path: &str, params: Value) -> Keyed {
    let resp = t
        .http
        .post(format!("{}{}", t.base, path))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let status = integration_tests::content_location(resp.headers());
    let manifest = t.manifest(&status).await;
    keyed(&t.download(&manifest, "output").await)
}

/// Small chunks, pages and patient batches, so that every path of the planner and the
/// reader is taken on a small dataset.
fn upstream_options(base: &str) -> Options {
    Options {
        source_url: Some(base.to_owned()),
        workers: 3,
        ..Options::default()
    }
    .env("FHIR_EXPORT_CHUNK_BYTES", "200000")
    .env("FHIR_EXPORT_UPSTREAM_PAGE_SIZE", "37")
    .env("FHIR_EXPORT_UPSTREAM_PATIENTS_PER_CHUNK", "7")
}

/// Loads `resources` in `phases` parts, a little over a second apart, so that the server's
/// `lastUpdated` spreads over several seconds and the planner has windows to cut.
async fn load_in_phases(helios: &Helios, resources: &[Value], phases: usize) {
    let per = resources.len().div_ceil(phases);
    for (i, part) in resources.chunks(per).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        helios.put_all(part).await;
    }
}

#[tokio::test]
async fn exports_from_a_fhir_server_equal_the_ndjson_source_at_every_level() {
    let Some(helios) = Helios::start().await else {
        return;
    };
    let (dir, _) = dataset(30);
    let resources = read_dir_resources(dir.path());
    load_in_phases(&helios, &resources, 3).await;

    let files = TestServer::start(Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let upstream = TestServer::start(upstream_options(&helios.base)).await;

    let filter = "Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C8867-4%2Chttp%3A%2F%2Floinc.org%7C8480-6,Observation%3Fstatus%3Damended";
    let cases: Vec<(&str, String)> = vec![
        ("/$export", String::new()),
        ("/$export", "_type=Patient,Observation,Condition".into()),
        (
            "/$export",
            format!("_type=Observation,Patient&_typeFilter={filter}"),
        ),
        ("/Patient/$export", String::new()),
        (
            "/Patient/$export",
            format!("_type=Observation&_typeFilter={filter}"),
        ),
        ("/Group/even-patients/$export", String::new()),
        (
            "/Group/small-cohort/$export",
            "_type=Patient,Observation,Encounter".into(),
        ),
    ];
    for (path, query) in &cases {
        let want = export(&files, path, query).await;
        let got = export(&upstream, path, query).await;
        assert!(
            !want.is_empty(),
            "{path}?{query}: the oracle exported nothing"
        );
        assert_same(&format!("{path}?{query}"), &got, &want);
    }
    // Shared observations lie in two patients' compartments, and in two batches: each is
    // written once (the `keyed` check) and none is lost (the comparison above).

    let patients = json!([
        {"name": "patient", "valueReference": {"reference": "Patient/pat-000003"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pat-000017"}},
        {"name": "_type", "valueString": "Patient,Observation,Condition"}
    ]);
    let want = post_export(&files, "/Patient/$export", patients.clone()).await;
    let got = post_export(&upstream, "/Patient/$export", patients).await;
    assert_eq!(want["Patient"].len(), 2);
    assert_same("patient=", &got, &want);

    // The server's own `$export` is a second oracle.
    for path in [
        "/$export",
        "/Patient/$export",
        "/Group/even-patients/$export",
    ] {
        let own = keyed(&helios.own_export(path).await);
        let got = export(&upstream, path, "").await;
        let (mut got, mut own) = (ids(&got), ids(&own));
        if path != "/$export" {
            // Two documented differences at patient level. Group is in the R4 Patient
            // compartment (`member`) and Helios exports it; we leave it out unless `_type`
            // asks for it, since a Group's member list names patients outside the export.
            // And we export the Provenance of every exported resource (a shared
            // Observation's, say), where Helios exports the compartment's only.
            own.remove("Group");
            got.remove("Provenance");
            own.remove("Provenance");
        }
        let types: BTreeSet<&String> = got.keys().chain(own.keys()).collect();
        let differ: Vec<String> = types
            .into_iter()
            .filter(|t| got.get(*t) != own.get(*t))
            .map(|t| {
                let (a, b) = (
                    got.get(t).cloned().unwrap_or_default(),
                    own.get(t).cloned().unwrap_or_default(),
                );
                format!(
                    "{t}: ours only {:?}, Helios only {:?}",
                    a.difference(&b).take(5).collect::<Vec<_>>(),
                    b.difference(&a).take(5).collect::<Vec<_>>()
                )
            })
            .collect();
        assert!(
            differ.is_empty(),
            "{path} against Helios's own $export: {differ:?}"
        );
    }

    files.server.stop().await;
    upstream.server.stop().await;
}

#[tokio::test]
async fn since_exports_what_changed_on_the_server_after_it() {
    let Some(helios) = Helios::start().await else {
        return;
    };
    let (dir, _) = dataset(12);
    let resources = read_dir_resources(dir.path());
    helios.put_all(&resources).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Changes after `since`: three Patients and the Observations of one of them.
    let changed: Vec<Value> = resources
        .iter()
        .filter(|r| {
            let id = r["id"].as_str().unwrap();
            (r["resourceType"] == "Patient"
                && ["pat-000001", "pat-000004", "pat-000009"].contains(&id))
                || (r["resourceType"] == "Observation" && id.starts_with("obs-000004-"))
        })
        .map(|r| {
            let mut r = r.clone();
            r["language"] = json!("en");
            r
        })
        .collect();
    helios.put_all(&changed).await;
    // And deletions: they go to the manifest's `deleted`.
    let first = |t: &str| {
        resources
            .iter()
            .find(|r| r["resourceType"] == t)
            .map(|r| format!("{t}/{}", r["id"].as_str().unwrap()))
            .unwrap()
    };
    let deletions = BTreeSet::from([first("Condition"), first("Encounter")]);
    for reference in &deletions {
        let (t, id) = reference.split_once('/').unwrap();
        helios.delete(t, id).await;
    }

    let upstream = TestServer::start(upstream_options(&helios.base)).await;
    let q = format!(
        "_since={}",
        since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let manifest = export_manifest(&upstream, "/$export", &q).await;
    let got = keyed(&upstream.download(&manifest, "output").await);
    let deleted = upstream.download(&manifest, "deleted").await;
    let mut gone: BTreeSet<String> = BTreeSet::new();
    for bundle in deleted.get("Bundle").into_iter().flatten() {
        assert_eq!(bundle["type"], "transaction");
        for e in bundle["entry"].as_array().unwrap() {
            assert_eq!(e["request"]["method"], "DELETE");
            gone.insert(e["request"]["url"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(gone, deletions);
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &changed {
        want.entry(r["resourceType"].as_str().unwrap().to_owned())
            .or_default()
            .insert(r["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids(&got), want);
    assert!(got["Patient"].values().all(|p| p["language"] == "en"));
    upstream.server.stop().await;
}

#[tokio::test]
async fn the_synthea_set_through_a_fhir_server_equals_its_files() {
    let Some(dir) = synthea_dir() else {
        eprintln!("SKIPPED: the Synthea dataset (../shared/data) is not present");
        return;
    };
    let Some(helios) = Helios::start().await else {
        return;
    };
    helios.load_dir(&dir).await;
    let files = TestServer::start(Options {
        source: Some(dir.clone()),
        ..Options::default()
    })
    .await;
    let upstream = TestServer::start(Options {
        source_url: Some(helios.base.clone()),
        workers: 4,
        ..Options::default()
    })
    .await;
    for path in ["/$export", "/Patient/$export"] {
        let want = export(&files, path, "").await;
        let got = export(&upstream, path, "").await;
        assert_same(path, &got, &want);
    }
    files.server.stop().await;
    upstream.server.stop().await;
}

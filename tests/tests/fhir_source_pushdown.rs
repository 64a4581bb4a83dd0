//! What the upstream source asks of a FHIR server (seen through a proxy in front of Helios):
//! `_typeFilter` queries, `_lastUpdated` windows and patient batches are sent as search
//! parameters, and a server that silently ignores one does not widen the export, because the
//! worker checks every criterion again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::helios::{Helios, read_dir_resources};
use integration_tests::proxy::{Fault, Proxy};
use integration_tests::{Options, TestServer, dataset};
use serde_json::Value;

fn ids_of(got: &BTreeMap<String, Vec<Value>>, t: &str) -> BTreeSet<String> {
    got.get(t)
        .into_iter()
        .flatten()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of the amended Observations: what `_typeFilter=Observation?status=amended` keeps.
fn amended(resources: &[Value]) -> BTreeSet<String> {
    resources
        .iter()
        .filter(|r| r["resourceType"] == "Observation" && r["status"] == "amended")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A server loaded in three phases a second apart, and the resources loaded.
async fn loaded(patients: u64) -> Option<(Helios, Vec<Value>)> {
    let helios = Helios::start().await?;
    let (dir, _) = dataset(patients);
    let resources = read_dir_resources(dir.path());
    for (i, part) in resources.chunks(resources.len().div_ceil(3)).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        helios.put_all(part).await;
    }
    Some((helios, resources))
}

fn options(base: &str) -> Options {
    Options {
        source_url: Some(base.to_owned()),
        ..Options::default()
    }
    .env("FHIR_EXPORT_CHUNK_BYTES", "150000")
    .env("FHIR_EXPORT_UPSTREAM_PATIENTS_PER_CHUNK", "4")
}

async fn export(t: &TestServer, path: &str, query: &str) -> BTreeMap<String, Vec<Value>> {
    let status = t.start_export(path, query).await;
    let manifest = t.manifest(&status).await;
    t.download(&manifest, "output").await
}

#[tokio::test]
async fn criteria_go_to_the_server_as_search_parameters() {
    let Some((helios, resources)) = loaded(20).await else {
        return;
    };
    let proxy = Proxy::start(&helios.base, Arc::new(|_, _| Fault::Pass), None).await;
    let t = TestServer::start(options(&proxy.base)).await;

    // `_typeFilter`: the query itself is the search.
    let got = export(
        &t,
        "/$export",
        "_type=Observation&_typeFilter=Observation%3Fstatus%3Damended",
    )
    .await;
    let want = amended(&resources);
    assert!(!want.is_empty());
    assert_eq!(ids_of(&got, "Observation"), want);
    let log = proxy.log();
    let reads: Vec<&String> = log
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("/Observation?") && !p.contains("_summary=count"))
        .collect();
    assert!(!reads.is_empty());
    for p in &reads {
        assert!(
            p.contains("status=amended"),
            "a search without the filter: {p}"
        );
    }

    // A large type is read in several `_lastUpdated` windows, one chunk each.
    let before = proxy.log().len();
    let got = export(&t, "/$export", "_type=Observation").await;
    let all: BTreeSet<String> = resources
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_of(&got, "Observation"), all);
    let windows: BTreeSet<String> = proxy.log()[before..]
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("/Observation?") && !p.contains("_summary=count"))
        .filter(|p| p.contains("_count=1000"))
        .map(|p| {
            let query = p.split_once('?').map_or("", |(_, q)| q);
            query
                .split('&')
                .filter(|kv| kv.starts_with("_lastUpdated="))
                .collect::<Vec<_>>()
                .join("&")
        })
        .collect();
    assert!(
        windows.len() >= 2,
        "{} Observations read in one window: {windows:?}",
        all.len()
    );

    // A Group: each compartment parameter searched with a batch of members.
    let before = proxy.log().len();
    export(
        &t,
        "/Group/small-cohort/$export",
        "_type=Observation,Patient",
    )
    .await;
    let log = proxy.log();
    let batched = log[before..]
        .iter()
        .filter(|(p, _)| {
            (p.starts_with("/Observation?") && p.contains("subject=Patient%2Fpat-"))
                || p.starts_with("/Observation/_search")
        })
        .count();
    assert!(batched > 0, "no Observation search by patient batch");
    assert!(
        log[before..]
            .iter()
            .any(|(p, _)| p.starts_with("/Patient?") && p.contains("_id=pat-")),
        "Patients not read by id"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn a_server_that_ignores_a_parameter_does_not_widen_the_export() {
    let Some((helios, resources)) = loaded(15).await else {
        return;
    };
    // The proxy drops `status=...` from every search, as a server that does not know the
    // parameter would silently do, and answers every patient batch with the whole type.
    let proxy = Proxy::start(
        &helios.base,
        Arc::new(|_, path: &str| {
            let (route, query) = path.split_once('?').unwrap_or((path, ""));
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| {
                    !kv.starts_with("status=")
                        && !kv.starts_with("subject=")
                        && !kv.starts_with("patient=")
                        && !kv.starts_with("performer=")
                })
                .collect();
            if kept.len() == query.split('&').count() {
                Fault::Pass
            } else {
                Fault::Rewrite(format!("{route}?{}", kept.join("&")))
            }
        }),
        None,
    )
    .await;
    let t = TestServer::start(options(&proxy.base)).await;
    let got = export(
        &t,
        "/$export",
        "_type=Observation&_typeFilter=Observation%3Fstatus%3Damended",
    )
    .await;
    let want = amended(&resources);
    assert_eq!(ids_of(&got, "Observation"), want);

    // Patient batches answered with everything: each resource still goes to its owner's
    // chunk alone, once, and nothing outside the Group leaks in.
    let (dir, _) = dataset(15);
    let files = TestServer::start(Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    for path in ["/Group/even-patients/$export", "/Patient/$export"] {
        let q = "_type=Observation,Encounter";
        let want = export(&files, path, q).await;
        let got = export(&t, path, q).await;
        for ty in ["Observation", "Encounter"] {
            let n = got.get(ty).map_or(0, Vec::len);
            assert_eq!(ids_of(&got, ty).len(), n, "{path} {ty}: written twice");
            assert_eq!(ids_of(&got, ty), ids_of(&want, ty), "{path} {ty}");
        }
    }
    t.server.stop().await;
    files.server.stop().await;
}

#[tokio::test]
async fn a_type_the_server_does_not_support_fails_a_strict_export_and_warns_a_lenient_one() {
    let Some((helios, resources)) = loaded(5).await else {
        return;
    };
    // The server's CapabilityStatement, without Condition.
    let mut metadata: Value = helios
        .http
        .get(format!("{}/metadata", helios.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    metadata["rest"][0]["resource"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["type"] != "Condition");
    let proxy = Proxy::start(
        &helios.base,
        Arc::new(move |_, path: &str| {
            if path == "/metadata" {
                Fault::Json(metadata.clone())
            } else {
                Fault::Pass
            }
        }),
        None,
    )
    .await;
    let t = TestServer::start(options(&proxy.base)).await;
    let status = t.start_export("/$export", "_type=Patient,Condition").await;
    let resp = t.wait(&status).await;
    assert_eq!(resp.status(), 500);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("does not support Condition") && text.contains(&proxy.base),
        "{text}"
    );

    let resp = t
        .http
        .get(format!("{}/$export?_type=Patient,Condition", t.base))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status = integration_tests::content_location(resp.headers());
    let manifest = t.manifest(&status).await;
    let got = t.download(&manifest, "output").await;
    assert_eq!(
        ids_of(&got, "Patient").len(),
        resources
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            .count()
    );
    assert!(!got.contains_key("Condition"));
    let errors = t.download(&manifest, "error").await;
    let warned = errors.values().flatten().any(|o| {
        o["issue"][0]["severity"] == "warning"
            && o["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("does not support Condition"))
    });
    assert!(warned, "no warning: {errors:?}");
    t.server.stop().await;
}

#[tokio::test]
async fn requests_keep_to_the_configured_rate() {
    let Some((helios, _)) = loaded(10).await else {
        return;
    };
    let proxy = Proxy::start(&helios.base, Arc::new(|_, _| Fault::Pass), None).await;
    let rate = 20usize;
    let t = TestServer::start(
        options(&proxy.base)
            .env("FHIR_EXPORT_UPSTREAM_RATE", &rate.to_string())
            .env("FHIR_EXPORT_UPSTREAM_PAGE_SIZE", "4"),
    )
    .await;
    export(&t, "/$export", "_type=Patient,Observation,Encounter").await;
    let arrivals = proxy.arrivals();
    assert!(
        arrivals.len() > rate,
        "too few requests to tell: {}",
        arrivals.len()
    );
    // Starts are spaced 1/rate apart: no second holds more than `rate` of them (and one
    // more for the edge of the window).
    for (i, at) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .take_while(|b| b.duration_since(*at) < Duration::from_secs(1))
            .count();
        assert!(within <= rate + 1, "{within} requests within a second");
    }
    t.server.stop().await;
}

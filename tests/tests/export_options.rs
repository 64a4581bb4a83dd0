//! Issue 3 features end to end over sockets: `_typeFilter`, `_elements`, `patient`,
//! associated Provenance, output organized by patient, partial and paged manifests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use fhir_export::synth;
use integration_tests::{Options, TestServer, content_location, counts, read_source};
use serde_json::{Value, json};

fn ids(resources: &[Value]) -> BTreeSet<String> {
    resources
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn codings(v: &Value) -> Vec<(String, String)> {
    v["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["system"].as_str().unwrap_or("").to_owned(),
                c["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn post(t: &TestServer, path: &str, params: Value, prefer: &str) -> reqwest::Response {
    t.http
        .post(format!("{}{}", t.base, path))
        .header("Accept", "application/fhir+json")
        .header("Prefer", prefer)
        .header("Content-Type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn type_filter_selects_with_search_semantics() {
    let t = TestServer::start(Options {
        patients: 40,
        ..Options::default()
    })
    .await;
    let source = read_source(t.source_dir());
    // Two filters for Observation are ORed; Patient has none and is exported whole.
    let f1 = "Observation?code=http://loinc.org|8867-4,http://loinc.org|8480-6";
    let f2 = "Observation?status=amended";
    let q = format!(
        "_type=Observation,Patient&_typeFilter={},{}",
        urlencode(f1),
        urlencode(f2)
    );
    let status = t.start_export("/$export", &q).await;
    let manifest = t.manifest(&status).await;
    let got = t.download(&manifest, "output").await;
    let want: BTreeSet<String> = source["Observation"]
        .iter()
        .filter(|o| {
            let code = codings(&o["code"]);
            code.iter()
                .any(|(s, c)| s == "http://loinc.org" && (c == "8867-4" || c == "8480-6"))
                || o["status"] == "amended"
        })
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!want.is_empty() && want.len() < source["Observation"].len());
    assert_eq!(ids(&got["Observation"]), want);
    assert_eq!(
        got["Patient"].len(),
        source["Patient"].len(),
        "types without a filter are not filtered"
    );

    // Parameters inside one filter are ANDed; dates compare as ranges.
    let f = "Observation?status=final&date=ge2020-01-01&date=lt2021";
    let status = t
        .start_export(
            "/$export",
            &format!("_type=Observation&_typeFilter={}", urlencode(f)),
        )
        .await;
    let got = t.download(&t.manifest(&status).await, "output").await;
    let want: BTreeSet<String> = source["Observation"]
        .iter()
        .filter(|o| {
            let d = o["effectiveDateTime"].as_str().unwrap_or("");
            o["status"] == "final" && d.starts_with("2020")
        })
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(
        got.get("Observation").map(|v| ids(v)).unwrap_or_default(),
        want
    );
    t.server.stop().await;
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[tokio::test]
async fn unsupported_filters_are_refused_or_reported() {
    let t = TestServer::start(Options {
        patients: 5,
        ..Options::default()
    })
    .await;
    let q = format!(
        "_type=Observation&_typeFilter={}",
        urlencode("Observation?subject.name=x")
    );
    let resp = t.kickoff("/$export", &q).await;
    assert_eq!(resp.status(), 400);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(oo["issue"][0]["expression"][0], "_typeFilter");

    let resp = t
        .http
        .get(format!("{}/$export?{q}", t.base))
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let manifest = t.manifest(&content_location(resp.headers())).await;
    let source = read_source(t.source_dir());
    assert_eq!(
        counts(&manifest)["Observation"],
        source["Observation"].len() as u64,
        "exported unfiltered"
    );
    let errors = t.download(&manifest, "error").await;
    let diag = errors["OperationOutcome"][0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(diag.contains("without any of its filters"), "{diag}");
    t.server.stop().await;
}

#[tokio::test]
async fn elements_keep_listed_and_mandatory_elements() {
    let t = TestServer::start(Options {
        patients: 5,
        ..Options::default()
    })
    .await;
    let status = t
        .start_export(
            "/$export",
            "_type=Patient,Observation&_elements=Patient.birthDate,Observation.subject",
        )
        .await;
    let got = t.download(&t.manifest(&status).await, "output").await;
    for p in &got["Patient"] {
        let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["resourceType", "id", "meta", "birthDate"])
        );
        let tags = p["meta"]["tag"].as_array().unwrap();
        assert!(tags.iter().any(|t| t["code"] == "SUBSETTED"));
        assert!(p["meta"]["lastUpdated"].is_string());
    }
    for o in &got["Observation"] {
        for k in ["status", "code", "subject"] {
            assert!(o.get(k).is_some(), "mandatory or listed element {k} kept");
        }
        assert!(o.get("valueQuantity").is_none() && o.get("effectiveDateTime").is_none());
    }
    let resp = t.kickoff("/$export", "_elements=Patient.colour").await;
    assert_eq!(resp.status(), 400);
    t.server.stop().await;
}

#[tokio::test]
async fn patient_parameter_narrows_and_never_widens() {
    let t = TestServer::start(Options {
        patients: 30,
        ..Options::default()
    })
    .await;
    let source = read_source(t.source_dir());
    let (a, b) = (synth::patient_id(2), synth::patient_id(4)); // both in the even group
    let params = json!([
        {"name": "patient", "valueReference": {"reference": format!("Patient/{a}")}},
        {"name": "patient", "valueReference": {"reference": format!("Patient/{b}")}},
        {"name": "_type", "valueString": "Patient,Condition"}
    ]);
    let group = format!("/Group/{}/$export", synth::GROUP_EVEN);
    let resp = post(&t, &group, params.clone(), "respond-async").await;
    assert_eq!(resp.status(), 202);
    let got = t
        .download(
            &t.manifest(&content_location(resp.headers())).await,
            "output",
        )
        .await;
    assert_eq!(ids(&got["Patient"]), BTreeSet::from([a.clone(), b.clone()]));
    let want: BTreeSet<String> = source["Condition"]
        .iter()
        .filter(|c| {
            let r = c["subject"]["reference"].as_str().unwrap();
            r == format!("Patient/{a}") || r == format!("Patient/{b}")
        })
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids(&got["Condition"]), want);

    // a non-member is refused, strictly; under lenient handling it is dropped with a warning
    let odd = synth::patient_id(3);
    let params = json!([
        {"name": "patient", "valueReference": {"reference": format!("Patient/{a}")}},
        {"name": "patient", "valueReference": {"reference": format!("Patient/{odd}")}}
    ]);
    let resp = post(&t, &group, params.clone(), "respond-async").await;
    assert_eq!(resp.status(), 400);
    let oo: Value = resp.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains(&odd)
    );
    let resp = post(&t, &group, params, "respond-async, handling=lenient").await;
    assert_eq!(resp.status(), 202);
    let manifest = t.manifest(&content_location(resp.headers())).await;
    let got = t.download(&manifest, "output").await;
    assert_eq!(ids(&got["Patient"]), BTreeSet::from([a.clone()]));
    assert_eq!(manifest["error"].as_array().unwrap().len(), 1);

    // Patient level: unknown patients are refused
    let params = json!([{"name": "patient", "valueReference": {"reference": "Patient/nobody"}}]);
    let resp = post(&t, "/Patient/$export", params, "respond-async").await;
    assert_eq!(resp.status(), 400);
    t.server.stop().await;
}

#[tokio::test]
async fn a_resource_shared_by_two_exported_patients_is_written_once() {
    let t = TestServer::start(
        Options {
            patients: 60,
            ..Options::default()
        }
        .env("FHIR_EXPORT_CHUNK_BYTES", "40000"),
    )
    .await;
    let source = read_source(t.source_dir());
    let shared: Vec<&Value> = source["Observation"]
        .iter()
        .filter(|o| {
            o["performer"].as_array().is_some_and(|p| {
                p.iter().any(|r| {
                    r["reference"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Patient/")
                })
            })
        })
        .collect();
    assert!(
        !shared.is_empty(),
        "the generator makes shared observations"
    );
    for (path, organized) in [("/Patient/$export", false), ("/Patient/$export", true)] {
        let q = if organized {
            "_type=Patient,Observation&organizeOutputBy=Patient"
        } else {
            "_type=Observation"
        };
        let status = t.start_export(path, q).await;
        let manifest = t.manifest(&status).await;
        let got = t.download_any(&manifest).await;
        let obs: Vec<&Value> = got
            .iter()
            .filter(|r| r["resourceType"] == "Observation")
            .collect();
        let unique: BTreeSet<&str> = obs.iter().map(|o| o["id"].as_str().unwrap()).collect();
        assert_eq!(
            unique.len(),
            obs.len(),
            "no duplicates (organized: {organized})"
        );
        assert_eq!(obs.len(), source["Observation"].len());
        for s in &shared {
            assert!(unique.contains(s["id"].as_str().unwrap()));
        }
    }
    t.server.stop().await;
}

/// A dataset with Provenance that targets single resources (not the patient).
fn provenance_dataset() -> (tempfile::TempDir, String, String) {
    let (dir, _) = integration_tests::dataset(12);
    let source = read_source(dir.path());
    let member = synth::patient_id(0);
    // Patient 11 is a past member of the small group, and odd.
    let other = synth::patient_id(11);
    let obs_of = |p: &str| {
        source["Observation"]
            .iter()
            .find(|o| o["subject"]["reference"] == format!("Patient/{p}"))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (mine, theirs) = (obs_of(&member), obs_of(&other));
    let prov = |id: &str, target: &str, recorded: &str| {
        json!({"resourceType":"Provenance","id":id,"meta":{"lastUpdated":"2024-01-01T00:00:00.000Z"},
            "target":[{"reference":format!("Observation/{target}")}],"recorded":recorded,
            "agent":[{"who":{"reference":"Practitioner/prac-000000"}}]})
        .to_string()
    };
    let mut text = std::fs::read_to_string(dir.path().join("Provenance.ndjson")).unwrap();
    // Generated Provenance may target the same Observation: these two bracket them in time.
    text.push_str(&prov("prov-mine-old", &mine, "1990-01-01T00:00:00Z"));
    text.push('\n');
    text.push_str(&prov("prov-mine-new", &mine, "2099-01-01T00:00:00Z"));
    text.push('\n');
    text.push_str(&prov("prov-theirs", &theirs, "2023-01-01T00:00:00Z"));
    text.push('\n');
    std::fs::write(dir.path().join("Provenance.ndjson"), text).unwrap();
    (dir, mine, theirs)
}

#[tokio::test]
async fn provenance_follows_what_is_exported() {
    let (dir, _, _) = provenance_dataset();
    let t = TestServer::start(Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let small = format!("/Group/{}/$export", synth::GROUP_SMALL);
    let prov_ids = |got: &BTreeMap<String, Vec<Value>>| {
        got.get("Provenance").map(|v| ids(v)).unwrap_or_default()
    };

    // Patient-level default: Provenance of resources in the compartment, even when `_type`
    // does not export those resources.
    let status = t.start_export(&small, "_type=Patient,Provenance").await;
    let got = t.download(&t.manifest(&status).await, "output").await;
    let p = prov_ids(&got);
    assert!(
        p.contains("prov-mine-old") && p.contains("prov-mine-new"),
        "{p:?}"
    );
    let status = t
        .start_export(
            &format!("/Group/{}/$export", synth::GROUP_EVEN),
            "_type=Patient,Provenance",
        )
        .await;
    let even = prov_ids(&t.download(&t.manifest(&status).await, "output").await);
    assert!(
        even.contains("prov-mine-new") && !even.contains("prov-theirs"),
        "patient 11 is odd"
    );

    // Relevant: Provenance of exported resources only
    let status = t
        .start_export(
            &small,
            "_type=Observation&includeAssociatedData=RelevantProvenanceResources",
        )
        .await;
    let p = prov_ids(&t.download(&t.manifest(&status).await, "output").await);
    assert!(
        p.contains("prov-mine-old") && p.contains("prov-mine-new"),
        "{p:?}"
    );
    assert!(!p.contains("prov-theirs"));
    // Latest: only the most recent one per exported resource
    let status = t
        .start_export(
            &small,
            "_type=Observation&includeAssociatedData=LatestProvenanceResources",
        )
        .await;
    let p = prov_ids(&t.download(&t.manifest(&status).await, "output").await);
    assert!(
        p.contains("prov-mine-new") && !p.contains("prov-mine-old"),
        "{p:?}"
    );
    // both values: the least restrictive applies
    let status = t
        .start_export(
            &small,
            "_type=Observation&includeAssociatedData=LatestProvenanceResources,RelevantProvenanceResources",
        )
        .await;
    let p = prov_ids(&t.download(&t.manifest(&status).await, "output").await);
    assert!(p.contains("prov-mine-old") && p.contains("prov-mine-new"));

    // System level default: every Provenance; `_type` without Provenance: none
    let source = read_source(dir.path());
    assert_eq!(
        t.export_counts("/$export", "_type=Provenance").await["Provenance"],
        source["Provenance"].len() as u64
    );
    assert!(
        !t.export_counts("/$export", "_type=Observation")
            .await
            .contains_key("Provenance")
    );
    t.server.stop().await;
}

#[tokio::test]
async fn output_organized_by_patient_writes_patient_blocks() {
    let t = TestServer::start(
        Options {
            patients: 25,
            ..Options::default()
        }
        .env("FHIR_EXPORT_MAX_FILE_BYTES", "30000")
        .env("FHIR_EXPORT_CHUNK_BYTES", "60000"),
    )
    .await;
    let source = read_source(t.source_dir());
    let group = format!("/Group/{}/$export", synth::GROUP_EVEN);
    let status = t.start_export(&group, "organizeOutputBy=Patient").await;
    let manifest = t.manifest(&status).await;
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    let items = manifest["output"].as_array().unwrap();
    assert!(items.len() > 3);
    assert!(
        items.iter().all(|i| i.get("type").is_none()),
        "organized items have no type"
    );
    let continued: Vec<&Value> = items
        .iter()
        .filter(|i| i.get("continuesInFile").is_some())
        .collect();
    assert!(!continued.is_empty(), "small files cut some blocks");
    let urls: BTreeSet<&str> = items.iter().map(|i| i["url"].as_str().unwrap()).collect();
    for c in &continued {
        assert!(urls.contains(c["continuesInFile"].as_str().unwrap()));
    }
    // read every file: blocks of one patient each, header first, then the Patient
    let mut seen_owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0u64;
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for (fi, item) in items.iter().enumerate() {
        let body = t
            .http
            .get(item["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, item["count"].as_u64().unwrap());
        assert_eq!(
            lines[0]["resourceType"], "Parameters",
            "a file starts with a block header"
        );
        let mut owner = String::new();
        for (li, r) in lines.iter().enumerate() {
            if r["resourceType"] == "Parameters" {
                owner = r["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("Patient/")
                    .to_owned();
                let first_seen = *seen_owner.entry(owner.clone()).or_insert(fi);
                assert!(
                    first_seen == fi || li == 0,
                    "a block is contiguous, repeated only at a file start"
                );
                continue;
            }
            total += 1;
            exported.insert(format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ));
            if r["resourceType"] == "Patient" {
                assert_eq!(r["id"], owner.as_str());
            }
        }
    }
    let members: BTreeSet<String> = (0..25)
        .filter(|i| i % 2 == 0)
        .map(synth::patient_id)
        .collect();
    assert_eq!(seen_owner.keys().cloned().collect::<BTreeSet<_>>(), members);
    // everything of the members' compartments is there, once
    let key = |r: &Value| {
        format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        )
    };
    let mut expected: BTreeSet<String> = source
        .iter()
        .filter(|(ty, _)| {
            !["Practitioner", "Organization", "Group", "Provenance"].contains(&ty.as_str())
        })
        .flat_map(|(_, rs)| rs)
        .filter(|r| {
            let s = r.to_string();
            members
                .iter()
                .any(|m| s.contains(&format!("\"Patient/{m}\"")) || r["id"] == m.as_str())
        })
        .map(key)
        .collect();
    // Provenance goes with the resources it targets (the Patient-level default).
    let provenance: Vec<String> = source["Provenance"]
        .iter()
        .filter(|p| {
            p["target"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| expected.contains(t["reference"].as_str().unwrap()))
        })
        .map(key)
        .collect();
    expected.extend(provenance);
    assert_eq!(
        exported.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new()
    );
    assert_eq!(total, expected.len() as u64, "each resource once");
    t.server.stop().await;
}

#[tokio::test]
async fn partial_manifests_grow_by_pages_while_the_export_runs() {
    let t = TestServer::start(
        Options {
            workers: 0,
            patients: 30,
            ..Options::default()
        }
        .env("FHIR_EXPORT_CHUNK_BYTES", "30000")
        .env("FHIR_EXPORT_MANIFEST_PAGE_CHUNKS", "2"),
    )
    .await;
    let source = read_source(t.source_dir());
    let status = t
        .start_export(
            "/$export",
            "allowPartialManifests=true&_type=Observation,Condition",
        )
        .await;
    t.handle_next(1).await; // plan
    let resp = t.http.get(&status).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(
        resp.bytes().await.unwrap().is_empty(),
        "no manifest before a page is ready"
    );
    t.handle_next(2).await; // the two chunks of page 1
    let resp = t.http.get(&status).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let page1: Value = resp.json().await.unwrap();
    assert!(page1.get("link").is_none(), "page 2 is not ready");
    assert!(!page1["output"].as_array().unwrap().is_empty());
    // its files can be fetched already
    let early = t.download(&page1, "output").await;
    assert!(!early.is_empty());
    t.handle_next(2).await;
    let page1_again: Value = t
        .http
        .get(&status)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page1_again["output"], page1["output"],
        "a returned page never changes"
    );
    let next_url = page1_again["link"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(page1_again["link"][0]["relation"], "next");
    let page2 = t.http.get(&next_url).send().await.unwrap();
    assert_eq!(page2.status(), 202);
    // finish, then walk every page of the completed manifest
    t.drain().await;
    let mut url = status.clone();
    let mut all: BTreeMap<String, u64> = BTreeMap::new();
    let mut pages = 0;
    loop {
        let resp = t.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let m: Value = resp.json().await.unwrap();
        pages += 1;
        if pages == 1 {
            assert_eq!(
                m["output"], page1["output"],
                "the completed manifest's first page is the partial one"
            );
        }
        for (k, v) in counts(&m) {
            *all.entry(k).or_default() += v;
        }
        match m["link"][0]["url"].as_str() {
            Some(n) => url = n.to_owned(),
            None => break,
        }
    }
    assert!(pages >= 3);
    assert_eq!(all["Observation"], source["Observation"].len() as u64);
    assert_eq!(all["Condition"], source["Condition"].len() as u64);
    t.server.stop().await;
}

/// The `.ndjson` files published so far, as (export folder, file name); staging and temp
/// folders left out.
fn published(dir: &std::path::Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                if !name.starts_with('.') {
                    stack.push(e.path());
                }
            } else if name.ends_with(".ndjson") {
                let folder = d.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert((folder, name));
            }
        }
    }
    out
}

/// Names of the files published since `before`.
fn new_files(dir: &std::path::Path, before: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    published(dir)
        .difference(before)
        .map(|(_, name)| name.clone())
        .collect()
}

#[tokio::test]
async fn small_types_are_packed_into_one_chunk() {
    let t = TestServer::start(Options {
        workers: 0,
        patients: 20,
        ..Options::default()
    })
    .await;
    let source = read_source(t.source_dir());
    let before = published(t.output_dir());
    let status = t.start_export("/$export", "").await;
    // The plan, then one chunk: every type of this small dataset is in it.
    t.handle_next(2).await;
    let want: BTreeSet<String> = source.keys().map(|k| format!("{k}-1.ndjson")).collect();
    assert!(want.len() > 5, "{want:?}");
    assert_eq!(new_files(t.output_dir(), &before), want);
    t.drain().await;
    let m = t.manifest(&status).await;
    for (t, resources) in &source {
        assert_eq!(counts(&m)[t], resources.len() as u64, "{t}");
    }
    // Files are listed in plan (type) order.
    let listed: Vec<&str> = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    t.server.stop().await;
}

#[tokio::test]
async fn the_biggest_chunk_runs_first_unless_pages_are_wanted_in_order() {
    // One chunk per type (no packing), so that the order of the chunks shows.
    let t = TestServer::start(
        Options {
            workers: 0,
            patients: 20,
            ..Options::default()
        }
        .env("FHIR_EXPORT_PACK_BYTES", "0"),
    )
    .await;
    let source = read_source(t.source_dir());
    let biggest = source
        .iter()
        .max_by_key(|(_, r)| serde_json::to_vec(r).unwrap().len())
        .map(|(k, _)| k.clone())
        .unwrap();
    let first_in_plan = source.keys().next().unwrap().clone();
    assert_ne!(
        biggest, first_in_plan,
        "the dataset must tell the orders apart"
    );

    let before = published(t.output_dir());
    let status = t.start_export("/$export", "").await;
    t.handle_next(2).await; // plan, then the first chunk sent
    assert_eq!(
        new_files(t.output_dir(), &before),
        BTreeSet::from([format!("{biggest}-1.ndjson")])
    );
    t.drain().await;
    let m = t.manifest(&status).await;
    assert_eq!(counts(&m)[&biggest], source[&biggest].len() as u64);
    // The manifest lists files in plan order, whatever order they were written in.
    let first_url = m["output"][0]["url"].as_str().unwrap();
    assert!(
        first_url.ends_with(&format!("/{first_in_plan}-1.ndjson")),
        "{first_url}"
    );

    // Partial manifests fill their pages in plan order.
    let before = published(t.output_dir());
    let status = t
        .start_export("/$export", "allowPartialManifests=true")
        .await;
    t.handle_next(2).await;
    assert_eq!(
        new_files(t.output_dir(), &before),
        BTreeSet::from([format!("{first_in_plan}-1.ndjson")])
    );
    t.drain().await;
    assert_eq!(counts(&t.manifest(&status).await), counts(&m));
    t.server.stop().await;
}

//! End-to-end exports over real sockets: what comes out equals what the request selects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use fhir_export::synth;
use integration_tests::{
    COMPARTMENT_TYPES, Options, TestServer, counts, current_members, patient_refs, read_source,
    synthea_dir,
};
use serde_json::Value;

/// Independent expectation: per type, resources that are the patient or reference it.
fn expected_for_patients(
    source: &BTreeMap<String, Vec<Value>>,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (t, resources) in source {
        if !COMPARTMENT_TYPES.contains(&t.as_str()) {
            continue;
        }
        let n = resources
            .iter()
            .filter(|r| {
                if t == "Patient" {
                    return keep(r["id"].as_str().unwrap());
                }
                let mut refs = BTreeSet::new();
                patient_refs(r, &mut refs);
                refs.iter().any(|id| keep(id))
            })
            .count() as u64;
        if n > 0 {
            out.insert(t.clone(), n);
        }
    }
    out
}

fn source_counts(source: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, u64> {
    source
        .iter()
        .map(|(t, v)| (t.clone(), v.len() as u64))
        .collect()
}

#[tokio::test]
async fn system_export_returns_every_resource_exactly_once() {
    let t = TestServer::start(Options::default()).await;
    let source = read_source(t.source_dir());
    let status = t.start_export("/$export", "").await;
    assert!(
        status.starts_with(&format!("{}/_export/", t.base)),
        "{status}"
    );
    let resp = t.wait(&status).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("expires"));
    let manifest: Value = resp.json().await.unwrap();
    for key in [
        "transactionTime",
        "request",
        "requiresAccessToken",
        "output",
        "error",
    ] {
        assert!(manifest.get(key).is_some(), "manifest lacks {key}");
    }
    assert_eq!(manifest["request"], format!("{}/$export", t.base));
    assert_eq!(manifest["requiresAccessToken"], false);
    assert_eq!(manifest["error"], serde_json::json!([]));
    let got = t.download(&manifest, "output").await;
    assert_eq!(
        got.iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect::<BTreeMap<_, _>>(),
        source_counts(&source)
    );
    // each (type, id) exactly once, and the same bytes of JSON as the source
    for (ty, resources) in &got {
        let ids: BTreeSet<&str> = resources
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), resources.len(), "{ty} has duplicates");
        let want: BTreeMap<&str, &Value> = source[ty]
            .iter()
            .map(|r| (r["id"].as_str().unwrap(), r))
            .collect();
        for r in resources {
            assert_eq!(
                Some(&r),
                want.get(r["id"].as_str().unwrap()),
                "{ty} content"
            );
        }
    }
    // one type per file, files named Type-n.ndjson
    for item in manifest["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        let name = url.rsplit('/').next().unwrap();
        assert!(
            name.starts_with(&format!("{}-", item["type"].as_str().unwrap())),
            "{name}"
        );
    }
    t.server.stop().await;
}

#[tokio::test]
async fn post_kickoff_with_parameters_matches_get() {
    let t = TestServer::start(Options::default()).await;
    let get = t.export_counts("/$export", "_type=Patient,Condition").await;
    let body = serde_json::json!({"resourceType":"Parameters","parameter":[
        {"name":"_type","valueString":"Patient"},
        {"name":"_type","valueString":"Condition"},
        {"name":"_outputFormat","valueString":"application/fhir+ndjson"}]});
    let resp = t
        .http
        .post(format!("{}/$export", t.base))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status = integration_tests::content_location(resp.headers());
    let manifest = t.manifest(&status).await;
    assert_eq!(
        manifest["request"],
        format!("{}/$export", t.base),
        "POST request URL has no parameters"
    );
    assert_eq!(counts(&manifest), get);
    assert_eq!(
        get.keys().cloned().collect::<Vec<_>>(),
        vec!["Condition", "Patient"]
    );
    t.server.stop().await;
}

#[tokio::test]
async fn patient_and_group_level_export_compartments() {
    let t = TestServer::start(Options {
        patients: 40,
        ..Options::default()
    })
    .await;
    let source = read_source(t.source_dir());

    let all = t.export_counts("/Patient/$export", "").await;
    assert_eq!(all, expected_for_patients(&source, |_| true));
    assert!(!all.contains_key("Practitioner") && !all.contains_key("Organization"));

    let members: BTreeSet<String> = (0..10).map(synth::patient_id).collect();
    let small = t
        .export_counts(&format!("/Group/{}/$export", synth::GROUP_SMALL), "")
        .await;
    assert_eq!(
        small,
        expected_for_patients(&source, |id| members.contains(id))
    );
    assert_eq!(
        small["Patient"], 10,
        "inactive and past members are not exported"
    );

    let status = t
        .start_export(
            &format!("/Group/{}/$export", synth::GROUP_SMALL),
            "_type=Patient,Observation",
        )
        .await;
    let manifest = t.manifest(&status).await;
    let got = t.download(&manifest, "output").await;
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["Observation", "Patient"]
    );
    for p in &got["Patient"] {
        assert!(members.contains(p["id"].as_str().unwrap()));
    }

    let empty = t
        .export_counts(&format!("/Group/{}/$export", synth::GROUP_EMPTY), "")
        .await;
    assert!(
        empty.is_empty(),
        "an empty group exports nothing: {empty:?}"
    );

    let resp = t.kickoff("/Group/no-such-group/$export", "").await;
    assert_eq!(resp.status(), 404);
    let oo: Value = resp.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    t.server.stop().await;
}

#[tokio::test]
async fn since_and_until_select_by_last_updated() {
    let t = TestServer::start(Options::default()).await;
    let source = read_source(t.source_dir());
    let since = "2022-03-01T00:00:00Z";
    let until = "2024-07-01T12:00:00+02:00";
    let since_t = chrono::DateTime::parse_from_rfc3339(since).unwrap();
    let until_t = chrono::DateTime::parse_from_rfc3339(until).unwrap();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (ty, rs) in &source {
        let n = rs
            .iter()
            .filter(|r| {
                let lu = chrono::DateTime::parse_from_rfc3339(
                    r["meta"]["lastUpdated"].as_str().unwrap(),
                )
                .unwrap();
                lu > since_t && lu < until_t
            })
            .count() as u64;
        if n > 0 {
            want.insert(ty.clone(), n);
        }
    }
    assert!(want.values().sum::<u64>() > 0);
    let got = t
        .export_counts(
            "/$export",
            &format!("_since={since}&_until={}", until.replace('+', "%2B")),
        )
        .await;
    assert_eq!(got, want);
    // `_till` is the same parameter, and an unencoded `+` in the zone is read as a plus
    let got = t
        .export_counts("/$export", &format!("_since={since}&_till={until}"))
        .await;
    assert_eq!(got, want);
    t.server.stop().await;
}

#[tokio::test]
async fn files_roll_over_past_the_size_threshold() {
    let t = TestServer::start(Options::default().env("FHIR_EXPORT_MAX_FILE_BYTES", "20000")).await;
    let source = read_source(t.source_dir());
    let status = t.start_export("/$export", "_type=Observation").await;
    let manifest = t.manifest(&status).await;
    let items = manifest["output"].as_array().unwrap();
    assert!(
        items.len() > 3,
        "expected several files, got {}",
        items.len()
    );
    let names: Vec<String> = items
        .iter()
        .map(|i| {
            i["url"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let want: Vec<String> = (1..=items.len())
        .map(|n| format!("Observation-{n}.ndjson"))
        .collect();
    assert_eq!(names, want, "numbered Type-1.ndjson, Type-2.ndjson, ...");
    for name in &names {
        let path = t
            .output_dir()
            .join(status.rsplit('/').next().unwrap())
            .join(name);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 20000, "{name} is {len} bytes");
    }
    let got = t.download(&manifest, "output").await;
    assert_eq!(got["Observation"].len(), source["Observation"].len());
    t.server.stop().await;
}

#[tokio::test]
async fn malformed_source_lines_become_error_entries() {
    let (dir, _) = integration_tests::dataset(5);
    let good = std::fs::read_to_string(dir.path().join("Condition.ndjson")).unwrap();
    let n_good = good.lines().count();
    let mut text = String::new();
    for (i, line) in good.lines().enumerate() {
        text.push_str(line);
        text.push('\n');
        if i == 1 {
            text.push_str("{\"resourceType\":\"Condition\",\"id\":\"broken\",SECRET\n");
            text.push_str("[1,2,3]\n");
            text.push_str("{\"resourceType\":\"Patient\",\"id\":\"wrong-file\"}\n");
        }
    }
    std::fs::write(dir.path().join("Condition.ndjson"), text).unwrap();
    let t = TestServer::start(Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let status = t.start_export("/$export", "_type=Condition").await;
    let manifest = t.manifest(&status).await;
    assert_eq!(counts(&manifest)["Condition"], n_good as u64);
    let errors = t.download(&manifest, "error").await;
    let outcomes = &errors["OperationOutcome"];
    assert_eq!(outcomes.len(), 3);
    let diags: Vec<&str> = outcomes
        .iter()
        .map(|o| o["issue"][0]["diagnostics"].as_str().unwrap())
        .collect();
    assert!(
        diags[0].starts_with("Condition.ndjson line 3:"),
        "{diags:?}"
    );
    assert!(
        diags[1].starts_with("Condition.ndjson line 4:"),
        "{diags:?}"
    );
    assert!(
        diags[2].starts_with("Condition.ndjson line 5:") && diags[2].contains("Patient"),
        "{diags:?}"
    );
    assert!(
        diags.iter().all(|d| !d.contains("SECRET")),
        "no patient data in errors"
    );
    t.server.stop().await;
}

/// A source file whose lines end in `\n` and `\r\n`, with blank and whitespace-only lines, a
/// malformed line, lines across the reader's 512 KiB buffers and a last line without its
/// `\n`: with no per-resource filter, kept lines are written from the read buffers in runs,
/// and the export must still be exactly the valid lines, in order, each ended by `\n`.
async fn pass_through_export_of_ragged_lines(max_file_bytes: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut want = String::new();
    let n = 20_000;
    for i in 0..n {
        let line = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"name\":[{{\"family\":\"{}\"}}],\"pad\":\"{}\"}}",
            "F".repeat(i % 13),
            "x".repeat(150 + i % 211)
        );
        want.push_str(&line);
        want.push('\n');
        text.push_str(&line);
        text.push_str(match i {
            _ if i == n - 1 => "",
            _ if i % 97 == 0 => "\r\n",
            _ => "\n",
        });
        if i % 1000 == 500 {
            text.push_str("\n   \t \n");
        }
        if i == 7_000 {
            text.push_str("{\"resourceType\":\"Patient\",\"id\":\"broken\",\n");
        }
    }
    std::fs::write(dir.path().join("Patient.ndjson"), &text).unwrap();
    let mut opts = Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    };
    if let Some(max) = max_file_bytes {
        opts = opts.env("FHIR_EXPORT_MAX_FILE_BYTES", max);
    }
    let t = TestServer::start(opts).await;
    let status = t.start_export("/$export", "_type=Patient").await;
    let manifest = t.manifest(&status).await;
    assert_eq!(counts(&manifest)["Patient"], n as u64);
    let errors = t.download(&manifest, "error").await;
    assert_eq!(errors["OperationOutcome"].len(), 1, "the broken line");
    let folder = t.output_dir().join(status.rsplit('/').next().unwrap());
    let mut got = String::new();
    let mut parts = 0;
    for item in manifest["output"].as_array().unwrap() {
        let name = item["url"].as_str().unwrap().rsplit('/').next().unwrap();
        let part = std::fs::read_to_string(folder.join(name)).unwrap();
        if let Some(max) = max_file_bytes {
            assert!(
                part.len() <= max.parse::<usize>().unwrap(),
                "{name}: {}",
                part.len()
            );
        }
        assert_eq!(
            item["count"].as_u64(),
            Some(part.lines().count() as u64),
            "{name}"
        );
        got.push_str(&part);
        parts += 1;
    }
    assert!(
        got == want,
        "the export differs from the valid source lines"
    );
    if max_file_bytes.is_some() {
        assert!(parts > 3, "{parts} parts");
    }
    t.server.stop().await;
}

#[tokio::test]
async fn pass_through_writes_the_valid_source_lines_byte_for_byte() {
    pass_through_export_of_ragged_lines(None).await;
}

#[tokio::test]
async fn pass_through_rolls_over_within_runs_of_lines() {
    // Parts of ~1.5 MiB: they fill up in the middle of a run of lines from one buffer.
    pass_through_export_of_ragged_lines(Some("1500000")).await;
}

#[tokio::test]
async fn metadata_lists_every_source_type_with_its_filters_and_follows_the_source() {
    let t = TestServer::start(
        Options {
            patients: 2,
            ..Options::default()
        }
        // Look at the source on every request, so that a new type shows at once.
        .env("FHIR_EXPORT_METADATA_TTL_SECS", "0"),
    )
    .await;
    let get = |etag: Option<String>| {
        let mut req = t.http.get(format!("{}/metadata", t.base));
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        req.send()
    };
    let resp = get(None).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let cs: Value = resp.json().await.unwrap();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    assert_eq!(cs["software"]["name"], "fhir-export");
    assert_eq!(cs["implementation"]["url"], t.base.as_str());
    assert_eq!(cs["rest"][0]["operation"][0]["name"], "export");
    let listed = |cs: &Value| -> BTreeMap<String, Value> {
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["type"].as_str().unwrap().to_owned(), r.clone()))
            .collect()
    };
    let by_type = listed(&cs);
    let mut want: BTreeSet<String> = read_source(t.source_dir()).into_keys().collect();
    want.extend(["Patient".to_owned(), "Group".to_owned()]);
    assert_eq!(by_type.keys().cloned().collect::<BTreeSet<_>>(), want);
    for (ty, r) in &by_type {
        let params: Vec<&str> = r["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(params.contains(&"_lastUpdated"), "{ty}: {params:?}");
    }
    assert_eq!(
        by_type["Patient"]["operation"][0]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    );
    assert_eq!(
        by_type["Group"]["operation"][0]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
    );
    // Unchanged: a conditional request is answered without the body.
    let resp = get(Some(etag.clone())).await.unwrap();
    assert_eq!(resp.status(), 304);

    // A new type in the source is listed, and the statement's tag changes with it.
    assert!(!by_type.contains_key("Device"));
    std::fs::write(
        t.source_dir().join("Device.extra.ndjson"),
        "{\"resourceType\":\"Device\",\"id\":\"d1\"}\n",
    )
    .unwrap();
    let resp = get(Some(etag.clone())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag);
    let cs: Value = resp.json().await.unwrap();
    let device = &listed(&cs)["Device"];
    assert!(
        device["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "type" && p["type"] == "token"),
        "{device}"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn synthea_dataset_exports_every_resource() {
    let Some(dir) = synthea_dir() else {
        eprintln!("SKIPPED: the Synthea dataset (../shared/data) is not present");
        return;
    };
    let want: BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("counts.json")).unwrap()).unwrap();
    let t = TestServer::start(Options {
        source: Some(dir.clone()),
        workers: 4,
        ..Options::default()
    })
    .await;
    let started = std::time::Instant::now();
    let status = t.start_export("/$export", "").await;
    let manifest = t.manifest(&status).await;
    eprintln!("Synthea system export: {:?}", started.elapsed());
    assert_eq!(counts(&manifest), want);
    let got = t.download(&manifest, "output").await;
    let total: usize = got.values().map(Vec::len).sum();
    assert_eq!(total as u64, want.values().sum::<u64>());

    // Group level over the real data: the 10-member group, counted independently.
    let source = read_source(&dir);
    let group = source["Group"]
        .iter()
        .find(|g| g["id"] == "BMCHealthNet")
        .unwrap();
    let members = current_members(group);
    assert_eq!(members.len(), 10);
    let got = t.export_counts("/Group/BMCHealthNet/$export", "").await;
    let mut want = BTreeMap::new();
    // Every type of the data that is in the Patient compartment (Device, Organization and
    // Practitioner are not; Group is left out unless asked for).
    for ty in [
        "AllergyIntolerance",
        "CarePlan",
        "CareTeam",
        "Claim",
        "Condition",
        "DiagnosticReport",
        "Encounter",
        "ExplanationOfBenefit",
        "ImagingStudy",
        "Immunization",
        "MedicationRequest",
        "Observation",
        "Patient",
        "Procedure",
    ] {
        let n = source[ty]
            .iter()
            .filter(|r| {
                if ty == "Patient" {
                    return members.contains(r["id"].as_str().unwrap());
                }
                let mut refs = BTreeSet::new();
                patient_refs(r, &mut refs);
                refs.iter().any(|id| members.contains(id))
            })
            .count() as u64;
        if n > 0 {
            want.insert(ty.to_owned(), n);
        }
    }
    assert_eq!(got, want);
    assert!(
        want.len() > 10,
        "most types have resources of the group's patients"
    );
    // Patient level: every resource of those types refers to one of the 100 patients.
    let got = t.export_counts("/Patient/$export", "").await;
    let all: BTreeMap<String, u64> = want
        .keys()
        .map(|ty| (ty.clone(), source[ty].len() as u64))
        .collect();
    assert_eq!(got, all);
    t.server.stop().await;
}

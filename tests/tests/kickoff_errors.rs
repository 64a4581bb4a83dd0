//! Every bad input gets the right 4xx and an OperationOutcome naming what was wrong, and
//! creates no job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::{Options, TestServer, counts};
use serde_json::Value;

async fn assert_outcome(
    resp: reqwest::Response,
    status: u16,
    expression: Option<&str>,
    case: &str,
) {
    assert_eq!(resp.status().as_u16(), status, "{case}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json",
        "{case}"
    );
    let oo: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{case}: body is not JSON: {e}"));
    assert_eq!(oo["resourceType"], "OperationOutcome", "{case}");
    assert_eq!(oo["issue"][0]["severity"], "error", "{case}");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{case}"
    );
    if let Some(e) = expression {
        assert_eq!(oo["issue"][0]["expression"][0], e, "{case}: {oo}");
    }
}

async fn no_jobs(t: &TestServer) {
    let far = chrono::Utc::now() + chrono::Duration::days(365);
    let jobs = t.server.deps.jobs.stalled(far).await.unwrap();
    assert!(jobs.is_empty(), "bad requests created jobs: {jobs:?}");
    let entries: Vec<_> = std::fs::read_dir(t.output_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ".tmp")
        .collect();
    assert!(entries.is_empty(), "bad requests wrote files: {entries:?}");
}

#[tokio::test]
async fn bad_query_parameters() {
    let t = TestServer::start(Options {
        patients: 3,
        ..Options::default()
    })
    .await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/$export", "_outputFormat=text/csv", 400, "_outputFormat"),
        (
            "/$export",
            "_outputFormat=ndjson&_outputFormat=text/csv",
            400,
            "_outputFormat",
        ),
        ("/$export", "_since=yesterday", 400, "_since"),
        ("/$export", "_since=2024-01-01", 400, "_since"),
        ("/$export", "_since=2024-13-01T00:00:00Z", 400, "_since"),
        (
            "/$export",
            "_since=2024-06-01T00:00:00Z&_until=2024-01-01T00:00:00Z",
            400,
            "_until",
        ),
        (
            "/$export",
            "_since=2024-06-01T00:00:00Z&_till=2024-01-01T00:00:00Z",
            400,
            "_till",
        ),
        ("/$export", "_type=Foo", 400, "_type"),
        ("/$export", "_type=patient", 400, "_type"),
        ("/$export", "_type=Patient,,Observation", 400, "_type"),
        ("/$export", "_foo=bar", 400, "_foo"),
        ("/$export", "_typeFilter=Observation", 400, "_typeFilter"),
        (
            "/$export",
            "_typeFilter=Observation%3F_sort%3Ddate",
            400,
            "_typeFilter",
        ),
        (
            "/$export",
            "_typeFilter=Observation%3Fdate%3Dgx2020",
            400,
            "_typeFilter",
        ),
        (
            "/$export",
            "_typeFilter=Observation%3Fvalue-quantity%3Dabc",
            400,
            "_typeFilter",
        ),
        (
            "/$export",
            "_typeFilter=Observation%3Fsubject.name%3Dx",
            400,
            "_typeFilter",
        ),
        (
            "/$export",
            "_typeFilter=Observation%3Fnot-a-param%3Dx",
            400,
            "_typeFilter",
        ),
        (
            "/$export",
            "_typeFilter=Observation%3Fstatus:sounds-like%3Dx",
            400,
            "_typeFilter",
        ),
        ("/$export", "_elements=Patient.name.given", 400, "_elements"),
        ("/$export", "_elements=Patient.colour", 400, "_elements"),
        (
            "/$export",
            "_type=Observation&_elements=birthDate",
            400,
            "_elements",
        ),
        ("/$export", "patient=Patient/1", 400, "patient"),
        ("/Patient/$export", "patient=Observation/1", 400, "patient"),
        ("/Patient/$export", "patient=Patient/nobody", 400, "patient"),
        (
            "/$export",
            "includeAssociatedData=Everything",
            400,
            "includeAssociatedData",
        ),
        (
            "/$export",
            "organizeOutputBy=Observation",
            400,
            "organizeOutputBy",
        ),
        ("/$export", "organizeOutputBy=Nope", 400, "organizeOutputBy"),
        (
            "/$export",
            "allowPartialManifests=maybe",
            400,
            "allowPartialManifests",
        ),
        ("/$export", "_container=Not_Valid", 400, "_container"),
        ("/$export", "_container=..%2Fescape", 400, "_container"),
        ("/Patient/$export", "_type=Organization", 400, "_type"),
        (
            "/Group/small-cohort/$export",
            "_type=Practitioner",
            400,
            "_type",
        ),
    ];
    for (path, query, status, param) in cases {
        let resp = t.kickoff(path, query).await;
        assert_outcome(resp, *status, Some(param), &format!("{path}?{query}")).await;
    }
    no_jobs(&t).await;
    t.server.stop().await;
}

#[tokio::test]
async fn bad_headers_bodies_and_routes() {
    let t = TestServer::start(Options {
        patients: 3,
        ..Options::default()
    })
    .await;
    let url = format!("{}/$export", t.base);

    let resp = t
        .http
        .get(&url)
        .header("Accept", "text/html")
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_outcome(resp, 406, Some("Accept"), "Accept text/html").await;
    let resp = t
        .http
        .get(&url)
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_outcome(resp, 400, Some("Prefer"), "no Prefer").await;
    let resp = t
        .http
        .get(&url)
        .header("Prefer", "respond-async, handling=sloppy")
        .send()
        .await
        .unwrap();
    assert_outcome(resp, 400, Some("Prefer"), "bad handling").await;

    let post = |body: &'static str, ct: &'static str| {
        t.http
            .post(&url)
            .header("Prefer", "respond-async")
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    assert_outcome(
        post("_type=Patient", "text/plain").await.unwrap(),
        415,
        Some("Content-Type"),
        "text/plain body",
    )
    .await;
    assert_outcome(
        post("{not json", "application/fhir+json").await.unwrap(),
        400,
        None,
        "invalid JSON",
    )
    .await;
    assert_outcome(
        post(r#"{"resourceType":"Patient"}"#, "application/fhir+json")
            .await
            .unwrap(),
        400,
        None,
        "not Parameters",
    )
    .await;
    assert_outcome(
        post(
            r#"{"resourceType":"Parameters","parameter":[{"name":"_since"}]}"#,
            "application/fhir+json",
        )
        .await
        .unwrap(),
        400,
        Some("_since"),
        "parameter without value",
    )
    .await;
    assert_outcome(
        post(r#"{"resourceType":"Parameters","parameter":[{"name":"_since","valueInstant":"soon"}]}"#, "application/json").await.unwrap(),
        400,
        Some("_since"),
        "bad instant in body",
    )
    .await;
    // Past FHIR_EXPORT_MAX_BODY_BYTES (8 MiB by default).
    let big = "x".repeat(9 * 1024 * 1024);
    let resp = t
        .http
        .post(&url)
        .header("Prefer", "respond-async")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_outcome(resp, 413, None, "oversized body").await;

    let resp = t.kickoff("/Group/bad*id/$export", "").await;
    assert_outcome(resp, 404, None, "invalid group id").await;
    let resp = t
        .http
        .get(format!("{}/nothing-here", t.base))
        .send()
        .await
        .unwrap();
    assert_outcome(resp, 404, None, "unknown route").await;
    let resp = t.http.put(&url).send().await.unwrap();
    assert_outcome(resp, 405, None, "wrong method").await;
    for status in [
        format!("{}/_export/0123456789abcdef0123456789abcdef", t.base),
        format!("{}/_export/..%2F..%2Fetc", t.base),
    ] {
        assert_outcome(
            t.http.get(&status).send().await.unwrap(),
            404,
            None,
            "unknown job",
        )
        .await;
        assert_outcome(
            t.http.delete(&status).send().await.unwrap(),
            404,
            None,
            "cancel unknown job",
        )
        .await;
    }
    let resp = t
        .http
        .get(format!(
            "{}/_export/0123456789abcdef0123456789abcdef/files/Patient-1.ndjson",
            t.base
        ))
        .send()
        .await
        .unwrap();
    assert_outcome(resp, 404, None, "file of unknown job").await;
    no_jobs(&t).await;
    t.server.stop().await;
}

#[tokio::test]
async fn lenient_handling_exports_and_reports_what_it_ignored() {
    let t = TestServer::start(Options {
        patients: 3,
        ..Options::default()
    })
    .await;
    let resp = t
        .http
        .get(format!(
            "{}/Patient/$export?_type=Patient,Organization&_foo=1&_elements=Patient.colour",
            t.base
        ))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status = integration_tests::content_location(resp.headers());
    let manifest = t.manifest(&status).await;
    assert_eq!(
        counts(&manifest).keys().cloned().collect::<Vec<_>>(),
        vec!["Patient"]
    );
    let errors = t.download(&manifest, "error").await;
    let mut named: Vec<String> = errors["OperationOutcome"]
        .iter()
        .map(|o| o["issue"][0]["expression"][0].as_str().unwrap().to_owned())
        .collect();
    named.sort();
    assert_eq!(named, vec!["_elements", "_foo", "_type"]);
    for o in &errors["OperationOutcome"] {
        assert_eq!(o["issue"][0]["severity"], "warning");
    }
    t.server.stop().await;
}

#[tokio::test]
async fn mixed_type_lists_at_group_level_export_the_compartment_types_with_a_warning() {
    let t = TestServer::start(Options {
        patients: 6,
        ..Options::default()
    })
    .await;
    // What clients send at every level: their whole list, strict handling.
    let status = t
        .start_export(
            "/Group/small-cohort/$export",
            "_type=Patient,Device,Observation,Organization",
        )
        .await;
    let manifest = t.manifest(&status).await;
    let exported = counts(&manifest);
    assert_eq!(
        exported.keys().cloned().collect::<Vec<_>>(),
        vec!["Observation", "Patient"]
    );
    assert!(exported["Patient"] > 0);
    let errors = t.download(&manifest, "error").await;
    let issues: Vec<&serde_json::Value> = errors["OperationOutcome"]
        .iter()
        .map(|o| &o["issue"][0])
        .collect();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0]["severity"], "warning");
    assert_eq!(issues[0]["expression"][0], "_type");
    let text = issues[0]["diagnostics"].as_str().unwrap();
    assert!(
        text.contains("Device") && text.contains("Organization"),
        "{text}"
    );
    t.server.stop().await;
}

#[tokio::test]
async fn an_encoded_dollar_reaches_the_same_operation() {
    let t = TestServer::start(Options {
        patients: 2,
        ..Options::default()
    })
    .await;
    for path in [
        "/%24export",
        "/Patient/%24export",
        "/Group/small-cohort/%24export",
    ] {
        let status = t.start_export(path, "_type=Patient").await;
        let manifest = t.manifest(&status).await;
        assert_eq!(counts(&manifest)["Patient"], 2, "{path}");
    }
    t.server.stop().await;
}

#[tokio::test]
async fn accepts_all_output_format_spellings() {
    let t = TestServer::start(Options {
        patients: 2,
        ..Options::default()
    })
    .await;
    for f in ["application/fhir%2Bndjson", "application/ndjson", "ndjson"] {
        let status = t
            .start_export("/$export", &format!("_outputFormat={f}&_type=Patient"))
            .await;
        let manifest = t.manifest(&status).await;
        assert_eq!(counts(&manifest)["Patient"], 2, "{f}");
    }
    t.server.stop().await;
}

//! The `fhir-export export` client: against the real server (what it downloads is what the
//! server's manifest lists), and against a scripted fake server that misbehaves in the ways
//! the client must survive or report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fhir_export::client::{
    self, BearerToken, ClientError, ExportArgs, ExportSummary, Level, LineProblem, Section,
};
use fhir_export::synth;
use integration_tests::{Options, TestServer, counts};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Against the real server

async fn server() -> TestServer {
    TestServer::start(Options::default().env("FHIR_EXPORT_RETRY_AFTER_SECS", "1")).await
}

fn args_for(t: &TestServer, out: &Path) -> ExportArgs {
    ExportArgs {
        base: Some(t.base.clone()),
        out: Some(out.to_path_buf()),
        no_progress: true,
        max_wait: 120,
        ..ExportArgs::default()
    }
}

/// The files on disk are exactly what the manifest lists: one per item, `count` lines each,
/// every line of the item's type; `manifest.json` is the manifest.
fn check_against_manifest(s: &ExportSummary) {
    for (key, section) in [("output", Section::Output), ("error", Section::Error)] {
        let items = s.manifest[key].as_array().unwrap();
        let files: Vec<_> = s.files.iter().filter(|f| f.section == section).collect();
        assert_eq!(files.len(), items.len(), "{key} files");
        for (item, f) in items.iter().zip(files) {
            assert_eq!(item["url"], f.url.as_str());
            assert_eq!(item["type"].as_str(), f.resource_type.as_deref());
            assert_eq!(item["count"].as_u64(), Some(f.lines), "{}", f.url);
            let text = std::fs::read_to_string(&f.path).unwrap();
            assert_eq!(text.len() as u64, f.bytes);
            assert_eq!(text.lines().count() as u64, f.lines);
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["resourceType"], item["type"], "{}", f.path.display());
            }
        }
    }
    assert_eq!(s.per_type(), counts(&s.manifest));
    assert_eq!(s.resources, counts(&s.manifest).values().sum::<u64>());
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(s.out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, s.manifest);
    assert!(
        !s.out_dir.join(".partial").exists(),
        "no partial files left"
    );
}

#[tokio::test]
async fn system_export_downloads_what_the_manifest_lists() {
    let t = server().await;
    let out = tempfile::tempdir().unwrap();
    let s = client::run(args_for(&t, out.path())).await.unwrap();
    assert!(s.status_url.starts_with(&format!("{}/_export/", t.base)));
    check_against_manifest(&s);
    let source: BTreeMap<String, u64> = integration_tests::read_source(t.source_dir())
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect();
    assert_eq!(s.per_type(), source, "every source resource exported");
    t.server.stop().await;
}

#[tokio::test]
async fn patient_and_group_exports_match_the_server() {
    let t = server().await;
    let out = tempfile::tempdir().unwrap();
    let s = client::run(ExportArgs {
        level: Level::Patient,
        ..args_for(&t, &out.path().join("patient"))
    })
    .await
    .unwrap();
    check_against_manifest(&s);
    assert_eq!(s.per_type(), t.export_counts("/Patient/$export", "").await);
    assert!(!s.per_type().contains_key("Practitioner"));

    let group = format!("/Group/{}/$export", synth::GROUP_SMALL);
    let s = client::run(ExportArgs {
        level: Level::Group(synth::GROUP_SMALL.into()),
        parallel: 1,
        ..args_for(&t, &out.path().join("group"))
    })
    .await
    .unwrap();
    check_against_manifest(&s);
    assert_eq!(s.per_type(), t.export_counts(&group, "").await);
    assert_eq!(s.per_type()["Patient"], 10);
    t.server.stop().await;
}

#[tokio::test]
async fn type_since_until_by_get_and_post() {
    let t = server().await;
    let since = "2022-03-01T00:00:00Z";
    // A `+` zone must reach the server encoded, not as a space.
    let until = "2024-07-01T12:00:00+02:00";
    let want = t
        .export_counts(
            "/$export",
            &format!("_type=Patient,Condition&_since={since}&_until=2024-07-01T12:00:00%2B02:00"),
        )
        .await;
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        ["Condition", "Patient"],
        "the filter keeps something of both types"
    );
    let out = tempfile::tempdir().unwrap();
    for post in [false, true] {
        let s = client::run(ExportArgs {
            types: vec!["Patient".into(), "Condition".into()],
            since: Some(since.into()),
            until: Some(until.into()),
            post,
            ..args_for(&t, &out.path().join(format!("post-{post}")))
        })
        .await
        .unwrap();
        check_against_manifest(&s);
        assert_eq!(s.per_type(), want, "post: {post}");
        let request = s.manifest["request"].as_str().unwrap();
        if post {
            assert_eq!(request, format!("{}/$export", t.base), "POST: no query");
        } else {
            assert!(request.contains("_type=Patient,Condition"), "{request}");
        }
    }
    t.server.stop().await;
}

#[tokio::test]
async fn reattach_by_status_url_then_cancel() {
    let t = server().await;
    let status = t.start_export("/$export", "_type=Patient").await;
    let out = tempfile::tempdir().unwrap();
    let reattach = |dir: &str| ExportArgs {
        status: Some(status.clone()),
        out: Some(out.path().join(dir)),
        no_progress: true,
        max_wait: 120,
        ..ExportArgs::default()
    };
    let first = client::run(reattach("a")).await.unwrap();
    assert_eq!(first.status_url, status);
    check_against_manifest(&first);
    assert_eq!(
        first.per_type().keys().collect::<Vec<_>>(),
        ["Patient"],
        "the export's own parameters apply"
    );
    // A finished export can be fetched again.
    let again = client::run(reattach("b")).await.unwrap();
    assert_eq!(again.per_type(), first.per_type());

    client::cancel(&status, None).await.unwrap();
    client::cancel(&status, None)
        .await
        .expect("cancelling a gone export is not an error");
    match client::run(reattach("c")).await {
        Err(ClientError::ExportGone {
            status: 404,
            status_url,
            ..
        }) => assert_eq!(status_url, status),
        other => panic!("expected ExportGone, got {other:?}"),
    }
    t.server.stop().await;
}

#[tokio::test]
async fn refused_kickoffs_fail_with_the_servers_message() {
    let t = server().await;
    let out = tempfile::tempdir().unwrap();
    let cases = [
        (
            ExportArgs {
                types: vec!["Foo".into()],
                ..args_for(&t, out.path())
            },
            400,
            "[_type]",
        ),
        (
            ExportArgs {
                level: Level::Group("no-such-group".into()),
                ..args_for(&t, out.path())
            },
            404,
            "no-such-group",
        ),
        (
            ExportArgs {
                params: vec![("_foo".into(), "1".into())],
                post: true,
                ..args_for(&t, out.path())
            },
            400,
            "[_foo]",
        ),
    ];
    for (args, want_status, want_text) in cases {
        match client::run(args).await {
            Err(e @ ClientError::KickoffRefused { .. }) => {
                let ClientError::KickoffRefused {
                    status,
                    diagnostics,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(*status, want_status, "{e}");
                assert!(diagnostics.contains(want_text), "{e}");
                assert!(e.to_string().contains(want_text));
            }
            other => panic!("expected a refused kick-off, got {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing written"
    );

    // Under lenient handling the same parameter is ignored and reported in the error files.
    let s = client::run(ExportArgs {
        types: vec!["Patient".into()],
        params: vec![("_foo".into(), "1".into())],
        lenient: true,
        ..args_for(&t, out.path())
    })
    .await
    .unwrap();
    check_against_manifest(&s);
    let errors: Vec<_> = s
        .files
        .iter()
        .filter(|f| f.section == Section::Error)
        .collect();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|f| f.per_type.keys().eq(["OperationOutcome"]))
    );
    t.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A scripted fake server

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Reply {
    fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn json(self, v: Value) -> Reply {
        let mut r = self.header("content-type", "application/json");
        r.body = v.to_string().into_bytes();
        r
    }
    fn ndjson(self, lines: &[Value]) -> Reply {
        let mut r = self.header("content-type", "application/fhir+ndjson");
        for l in lines {
            r.body.extend_from_slice(l.to_string().as_bytes());
            r.body.push(b'\n');
        }
        r
    }
    fn outcome(self, code: &str, text: &str) -> Reply {
        let mut r = self.header("content-type", "application/fhir+json");
        r.body = json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
        .to_string()
        .into_bytes();
        r
    }
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Script {
    /// Replies per (method, path without query), served in order; the last one repeats.
    routes: HashMap<(String, String), VecDeque<Reply>>,
    seen: Vec<Seen>,
}

struct Fake {
    base: String,
    script: Arc<Mutex<Script>>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        Fake {
            base: format!("http://{addr}"),
            script,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn route(&self, method: &str, path: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .unwrap()
            .routes
            .insert((method.into(), path.into()), replies.into());
    }

    fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        self.script
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.method == method && s.target.split('?').next() == Some(path))
            .cloned()
            .collect()
    }
}

async fn serve(mut sock: TcpStream, script: Arc<Mutex<Script>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut tmp = [0u8; 8192];
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut tmp = [0u8; 8192];
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    let r = {
        let mut s = script.lock().unwrap();
        s.seen.push(Seen {
            method: method.clone(),
            target: target.clone(),
            headers,
            body,
        });
        match s.routes.get_mut(&(method, path)) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap(),
            Some(q) if !q.is_empty() => q[0].clone(),
            _ => reply(404).outcome("not-found", "no such route in the script"),
        }
    };
    let mut out = format!(
        "HTTP/1.1 {} Scripted\r\ncontent-length: {}\r\nconnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.write_all(&r.body).await;
    let _ = sock.shutdown().await;
}

fn resource(ty: &str, id: &str) -> Value {
    json!({"resourceType": ty, "id": id, "note": "PATIENT-DATA"})
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn manifest(output: Value, error: Value, extra: Value) -> Value {
    let mut m = json!({
        "transactionTime": "2024-05-01T10:00:00.000Z",
        "request": "http://fake/fhir/$export",
        "requiresAccessToken": true,
        "output": output,
        "error": error,
        "x-vendor": {"kept": true},
    });
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

fn fake_args(fake: &Fake, out: &Path) -> ExportArgs {
    ExportArgs {
        base: Some(fake.url("/fhir")),
        out: Some(out.to_path_buf()),
        token: Some(BearerToken::new("secret-token")),
        no_progress: true,
        max_wait: 60,
        ..ExportArgs::default()
    }
}

fn auth(s: &Seen) -> Option<&str> {
    s.headers.get("authorization").map(String::as_str)
}

#[tokio::test]
async fn survives_a_misbehaving_server() {
    let a = Fake::start().await;
    let b = Fake::start().await; // another origin: a redirect target
    // Relative Content-Location: resolved against the kick-off URL.
    a.route(
        "GET",
        "/fhir/$export",
        vec![reply(202).header("content-location", "_status/1")],
    );
    let page1 = manifest(
        json!([
            {"type": "Patient", "url": a.url("/files/Patient.ndjson"), "count": 3},
            {"type": "Observation", "url": a.url("/files/Observation.ndjson"), "count": 2},
            {"type": "Condition", "url": a.url("/redirect/Condition.ndjson"), "count": 1},
        ]),
        json!([]),
        json!({"link": [{"relation": "next", "url": "/fhir/_status/1/page2"}]}),
    );
    let page2 = manifest(
        json!([
            {"type": "Patient", "url": a.url("/elsewhere/Patient.ndjson"), "count": 2},
            {"url": a.url("/by-patient/p1.ndjson")},
        ]),
        json!([{"type": "OperationOutcome", "url": a.url("/files/errors.ndjson"), "count": 1}]),
        json!({"deleted": [{"type": "Bundle", "url": a.url("/files/deleted.ndjson")}]}),
    );
    a.route(
        "GET",
        "/fhir/_status/1",
        vec![
            reply(429).header("retry-after", "1"),
            reply(503).outcome("transient", "database busy"),
            reply(202)
                .header("retry-after", "999999")
                .header("x-progress", "50% complete"),
            reply(202)
                .header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")
                .header("x-progress", "90% complete"),
            reply(200).json(page1),
        ],
    );
    a.route("GET", "/fhir/_status/1/page2", vec![reply(200).json(page2)]);
    let patients: Vec<Value> = (1..=3)
        .map(|i| resource("Patient", &i.to_string()))
        .collect();
    a.route(
        "GET",
        "/files/Patient.ndjson",
        vec![
            reply(500).outcome("exception", "storage hiccup"),
            reply(200).ndjson(&patients),
        ],
    );
    let obs = reply(200).ndjson(&[resource("Observation", "o1"), resource("Observation", "o2")]);
    let plain_obs = obs.body.clone();
    let mut gz = obs.header("content-encoding", "gzip");
    gz.body = gzip(&gz.body);
    a.route("GET", "/files/Observation.ndjson", vec![gz]);
    a.route(
        "GET",
        "/redirect/Condition.ndjson",
        vec![reply(307).header("location", &b.url("/blob/Condition.ndjson"))],
    );
    b.route(
        "GET",
        "/blob/Condition.ndjson",
        vec![reply(200).ndjson(&[resource("Condition", "c1")])],
    );
    a.route(
        "GET",
        "/elsewhere/Patient.ndjson",
        vec![reply(200).ndjson(&[resource("Patient", "4"), resource("Patient", "5")])],
    );
    a.route(
        "GET",
        "/by-patient/p1.ndjson",
        vec![reply(200).ndjson(&[
            json!({"resourceType": "Parameters", "parameter": [{"name": "header"}]}),
            resource("Patient", "p1"),
            resource("Encounter", "e1"),
        ])],
    );
    a.route(
        "GET",
        "/files/errors.ndjson",
        vec![reply(200).ndjson(&[json!({"resourceType": "OperationOutcome", "issue": []})])],
    );
    a.route(
        "GET",
        "/files/deleted.ndjson",
        vec![reply(200).ndjson(&[json!({"resourceType": "Bundle", "type": "transaction"})])],
    );

    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let s = client::run(ExportArgs {
        types: vec!["Patient,Observation".into(), "Condition".into()],
        type_filters: vec!["Patient?name=a,b&_count=1".into()],
        ..fake_args(&a, out.path())
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "Retry-After 999999 must not be honoured: took {:?}",
        started.elapsed()
    );

    // kick-off and polling
    let kick = a.seen("GET", "/fhir/$export");
    assert_eq!(kick.len(), 1);
    assert_eq!(
        kick[0].target,
        "/fhir/$export?_type=Patient,Observation,Condition&_typeFilter=Patient%3Fname%3Da%2Cb%26_count%3D1"
    );
    assert_eq!(kick[0].headers["accept"], "application/fhir+json");
    assert_eq!(kick[0].headers["prefer"], "respond-async");
    assert_eq!(auth(&kick[0]), Some("Bearer secret-token"));
    let polls = a.seen("GET", "/fhir/_status/1");
    assert_eq!(polls.len(), 5);
    assert!(polls.iter().all(
        |p| p.headers["accept"] == "application/json" && auth(p) == Some("Bearer secret-token")
    ));
    assert_eq!(s.status_url, a.url("/fhir/_status/1"));

    // files: retried, decoded, redirected, renamed apart, verified
    assert_eq!(
        a.seen("GET", "/files/Patient.ndjson").len(),
        2,
        "retried once"
    );
    let names: Vec<(Section, String, u64)> = s
        .files
        .iter()
        .map(|f| {
            (
                f.section,
                f.path.file_name().unwrap().to_string_lossy().into_owned(),
                f.lines,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (Section::Output, "Patient.ndjson".into(), 3),
            (Section::Output, "Observation.ndjson".into(), 2),
            (Section::Output, "Condition.ndjson".into(), 1),
            (Section::Output, "Patient_2.ndjson".into(), 2),
            (Section::Output, "p1.ndjson".into(), 3),
            (Section::Error, "errors.ndjson".into(), 1),
            (Section::Deleted, "deleted.ndjson".into(), 1),
        ]
    );
    assert_eq!(s.resources, 11);
    assert_eq!(
        std::fs::read(out.path().join("Observation.ndjson")).unwrap(),
        plain_obs,
        "gzip is undone"
    );
    assert_eq!(
        s.per_type(),
        BTreeMap::from([
            ("Condition".into(), 1),
            ("Encounter".into(), 1),
            ("Observation".into(), 2),
            ("Parameters".into(), 1),
            ("Patient".into(), 6),
        ])
    );
    for f in a.seen("GET", "/files/Observation.ndjson") {
        assert_eq!(f.headers["accept"], "application/fhir+ndjson");
        assert_eq!(
            auth(&f),
            Some("Bearer secret-token"),
            "requiresAccessToken: true"
        );
    }
    assert_eq!(
        auth(&a.seen("GET", "/redirect/Condition.ndjson")[0]),
        Some("Bearer secret-token")
    );
    let moved = b.seen("GET", "/blob/Condition.ndjson");
    assert_eq!(moved.len(), 1);
    assert_eq!(
        auth(&moved[0]),
        None,
        "no token past a cross-origin redirect"
    );

    // the merged manifest
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m, s.manifest);
    assert_eq!(m["output"].as_array().unwrap().len(), 5);
    assert_eq!(m["error"].as_array().unwrap().len(), 1);
    assert_eq!(m["deleted"].as_array().unwrap().len(), 1);
    assert!(m.get("link").is_none());
    assert_eq!(m["x-vendor"]["kept"], true, "unknown keys are kept");
}

#[tokio::test]
async fn post_kickoff_sends_parameters_and_keeps_the_token_from_open_files() {
    let a = Fake::start().await;
    a.route(
        "POST",
        "/fhir/Group/g1/$export",
        vec![reply(202).header("content-location", &a.url("/status/9"))],
    );
    let mut m = manifest(
        json!([{"type": "Patient", "url": a.url("/f/Patient.ndjson"), "count": 1}]),
        json!([]),
        json!({}),
    );
    m["requiresAccessToken"] = json!(false);
    a.route("GET", "/status/9", vec![reply(200).json(m)]);
    a.route(
        "GET",
        "/f/Patient.ndjson",
        vec![reply(200).ndjson(&[resource("Patient", "1")])],
    );
    let out = tempfile::tempdir().unwrap();
    let s = client::run(ExportArgs {
        level: Level::Group("g1".into()),
        post: true,
        lenient: true,
        types: vec!["Patient".into()],
        since: Some("2024-01-01T00:00:00+01:00".into()),
        params: vec![("patient".into(), "Patient/1".into())],
        ..fake_args(&a, out.path())
    })
    .await
    .unwrap();
    assert_eq!(s.resources, 1);
    let kick = &a.seen("POST", "/fhir/Group/g1/$export")[0];
    assert_eq!(kick.target, "/fhir/Group/g1/$export", "no query string");
    assert_eq!(kick.headers["content-type"], "application/fhir+json");
    assert_eq!(kick.headers["prefer"], "respond-async, handling=lenient");
    assert_eq!(auth(kick), Some("Bearer secret-token"));
    let body: Value = serde_json::from_slice(&kick.body).unwrap();
    assert_eq!(
        body,
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "_since", "valueInstant": "2024-01-01T00:00:00+01:00"},
            {"name": "patient", "valueReference": {"reference": "Patient/1"}},
        ]})
    );
    assert_eq!(
        auth(&a.seen("GET", "/status/9")[0]),
        Some("Bearer secret-token")
    );
    assert_eq!(
        auth(&a.seen("GET", "/f/Patient.ndjson")[0]),
        None,
        "requiresAccessToken: false"
    );
}

/// A fake whose manifest lists one file, served as given.
async fn one_file_export(item: Value, file: Reply) -> (Fake, tempfile::TempDir) {
    let a = Fake::start().await;
    a.route(
        "GET",
        "/fhir/$export",
        vec![reply(202).header("content-location", &a.url("/status/1"))],
    );
    a.route(
        "GET",
        "/status/1",
        vec![reply(200).json(manifest(json!([item]), json!([]), json!({})))],
    );
    a.route("GET", "/file.ndjson", vec![file]);
    (a, tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn a_line_count_that_differs_from_count_fails() {
    let (a, out) = one_file_export(
        json!({"type": "Patient", "url": "/file.ndjson", "count": 5}),
        reply(200).ndjson(&[resource("Patient", "1"), resource("Patient", "2")]),
    )
    .await;
    let e = client::run(fake_args(&a, out.path())).await.unwrap_err();
    match &e {
        ClientError::CountMismatch {
            file, lines, count, ..
        } => {
            assert_eq!(file, "file.ndjson");
            assert_eq!((*lines, *count), (2, 5));
        }
        other => panic!("expected CountMismatch, got {other:?}"),
    }
    assert!(e.to_string().contains("file.ndjson"), "{e}");
    assert!(
        !out.path().join("file.ndjson").exists(),
        "not kept as if good"
    );
    assert_eq!(a.seen("GET", "/file.ndjson").len(), 1, "not retried");
}

#[tokio::test]
async fn a_bad_line_fails_naming_file_and_line_but_not_content() {
    let cases = [
        (
            "{\"resourceType\":\"Patient\",\"id\":\"1\"}\n{\"resourceType\":\"Observation\",\"note\":\"PATIENT-DATA\"}\n",
            2,
            LineProblem::WrongType {
                expected: "Patient".into(),
                found: "Observation".into(),
            },
        ),
        (
            "{\"resourceType\":\"Patient\",\"id\":\"1\"}\n\n",
            2,
            LineProblem::Blank,
        ),
        (
            "{\"resourceType\":\"Patient\",\"note\":\"PATIENT-DATA\"",
            1,
            LineProblem::Json(String::new()),
        ),
    ];
    for (body, want_line, want_problem) in cases {
        let mut file = reply(200);
        file.body = body.as_bytes().to_vec();
        let (a, out) =
            one_file_export(json!({"type": "Patient", "url": "/file.ndjson"}), file).await;
        let e = client::run(fake_args(&a, out.path())).await.unwrap_err();
        match &e {
            ClientError::Line {
                file,
                line,
                problem,
                ..
            } => {
                assert_eq!(file, "file.ndjson");
                assert_eq!(*line, want_line);
                match want_problem {
                    LineProblem::Json(_) => assert!(matches!(problem, LineProblem::Json(_))),
                    _ => assert_eq!(*problem, want_problem),
                }
            }
            other => panic!("expected a line error, got {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains("file.ndjson") && text.contains(&format!("line {want_line}")));
        assert!(!text.contains("PATIENT-DATA"), "{text}");
    }
}

#[tokio::test]
async fn error_files_must_hold_operation_outcomes() {
    let a = Fake::start().await;
    a.route(
        "GET",
        "/fhir/$export",
        vec![reply(202).header("content-location", &a.url("/status/1"))],
    );
    a.route(
        "GET",
        "/status/1",
        vec![reply(200).json(manifest(
            json!([]),
            json!([{"type": "OperationOutcome", "url": a.url("/err.ndjson")}]),
            json!({}),
        ))],
    );
    a.route(
        "GET",
        "/err.ndjson",
        vec![reply(200).ndjson(&[resource("Patient", "1")])],
    );
    let out = tempfile::tempdir().unwrap();
    let e = client::run(fake_args(&a, out.path())).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Line { line: 1, problem: LineProblem::WrongType { expected, .. }, .. } if expected == "OperationOutcome"),
        "{e:?}"
    );
}

#[tokio::test]
async fn failed_gone_and_unavailable_exports_are_reported() {
    let a = Fake::start().await;
    a.route(
        "GET",
        "/fhir/$export",
        vec![reply(202).header("content-location", &a.url("/failed"))],
    );
    a.route(
        "GET",
        "/failed",
        vec![reply(500).outcome("exception", "the export failed: disk full")],
    );
    a.route(
        "GET",
        "/gone",
        vec![reply(404).outcome("not-found", "no export here")],
    );
    a.route(
        "GET",
        "/down",
        vec![
            reply(503)
                .header("retry-after", "1")
                .outcome("transient", "busy"),
        ],
    );
    a.route(
        "GET",
        "/forbidden",
        vec![reply(403).outcome("forbidden", "not yours")],
    );
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    match client::run(fake_args(&a, out.path())).await {
        Err(ClientError::ExportFailed { diagnostics, .. }) => {
            assert!(diagnostics.contains("disk full"), "{diagnostics}")
        }
        other => panic!("expected ExportFailed, got {other:?}"),
    }
    assert_eq!(a.seen("GET", "/failed").len(), 2, "confirmed once");
    assert!(started.elapsed() < Duration::from_secs(5));

    let reattach = |path: &str| ExportArgs {
        status: Some(a.url(path)),
        ..fake_args(&a, out.path())
    };
    assert!(matches!(
        client::run(reattach("/gone")).await,
        Err(ClientError::ExportGone { status: 404, ref diagnostics, .. }) if diagnostics.contains("no export here")
    ));
    assert!(matches!(
        client::run(reattach("/forbidden")).await,
        Err(ClientError::Refused { status: 403, ref diagnostics, .. }) if diagnostics.contains("not yours")
    ));
    match client::run(reattach("/down")).await {
        Err(ClientError::ServerUnavailable {
            status: 503,
            attempts,
            ..
        }) => assert_eq!(attempts, 6),
        other => panic!("expected ServerUnavailable, got {other:?}"),
    }
    assert_eq!(a.seen("GET", "/down").len(), 6, "5 retries");
}

#[tokio::test]
async fn max_wait_gives_up_with_the_status_url() {
    let a = Fake::start().await;
    a.route("GET", "/slow", vec![reply(202).header("retry-after", "1")]);
    let out = tempfile::tempdir().unwrap();
    let e = client::run(ExportArgs {
        status: Some(a.url("/slow")),
        max_wait: 2,
        ..fake_args(&a, out.path())
    })
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::TimedOut { .. }), "{e:?}");
    assert!(e.to_string().contains(&a.url("/slow")), "{e}");
}

#[tokio::test]
async fn an_interrupt_cancels_only_when_asked() {
    let a = Fake::start().await;
    a.route(
        "GET",
        "/fhir/$export",
        vec![reply(202).header("content-location", &a.url("/status/1"))],
    );
    a.route(
        "GET",
        "/status/1",
        vec![
            reply(202)
                .header("retry-after", "1")
                .header("x-progress", "10%"),
        ],
    );
    a.route("DELETE", "/status/1", vec![reply(202)]);
    let out = tempfile::tempdir().unwrap();

    let interrupt = tokio::time::sleep(Duration::from_millis(300));
    let e = client::run_until(fake_args(&a, out.path()), interrupt)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Interrupted { status_url: Some(u), cancelled: false } if *u == a.url("/status/1")),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("--status"),
        "tells how to re-attach: {e}"
    );
    assert!(a.seen("DELETE", "/status/1").is_empty());

    let interrupt = tokio::time::sleep(Duration::from_millis(300));
    let e = client::run_until(
        ExportArgs {
            cancel_on_interrupt: true,
            ..fake_args(&a, out.path())
        },
        interrupt,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Interrupted {
                cancelled: true,
                ..
            }
        ),
        "{e:?}"
    );
    let deletes = a.seen("DELETE", "/status/1");
    assert_eq!(deletes.len(), 1);
    assert_eq!(auth(&deletes[0]), Some("Bearer secret-token"));

    // a refused DELETE is an error of its own
    a.route(
        "DELETE",
        "/status/1",
        vec![reply(405).outcome("not-supported", "no cancel")],
    );
    assert!(matches!(
        client::cancel(&a.url("/status/1"), None).await,
        Err(ClientError::Refused { status: 405, .. })
    ));
}

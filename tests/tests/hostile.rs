//! Requests no client should send: every answer is an `OperationOutcome` with the status that
//! says why (hyper's own refusals included), odd values are refused with the parameter
//! named, filters past the documented limits are refused at kick-off, and connections that
//! never finish their headers, or too many of them, cannot tie the server up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration_tests::{Options, TestServer};
use serde_json::Value;

/// Sends raw bytes on a new connection; returns the status and the body of the answer.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if let Some(head_end) = find(&out, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if out.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let head_end = find(&out, b"\r\n\r\n").expect("an HTTP answer");
    let status: u16 = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/fhir+json"),
        "{status}: {head}"
    );
    let body: Value = serde_json::from_slice(&out[head_end + 4..]).expect("a JSON body");
    (status, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn assert_outcome(status: u16, body: &Value, want: u16, expression: Option<&str>, case: &str) {
    assert_eq!(status, want, "{case}: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{case}");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{case}"
    );
    if let Some(e) = expression {
        assert_eq!(body["issue"][0]["expression"][0], e, "{case}: {body}");
    }
}

#[tokio::test]
async fn what_hyper_refuses_is_answered_with_an_operation_outcome() {
    let t = TestServer::start(Options {
        patients: 2,
        ..Options::default()
    })
    .await;
    let addr = t.server.addr;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            format!(
                "GET /fhir/$export?_type={} HTTP/1.1\r\nHost: x\r\nPrefer: respond-async\r\n\r\n",
                "A".repeat(100_000)
            )
            .into_bytes(),
            414,
            "100 KB URI",
        ),
        (
            format!(
                "GET /fhir/$export?_type={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "A".repeat(1_000_000)
            )
            .into_bytes(),
            431,
            "1 MB request line",
        ),
        (
            b"GET /fhir/$export?_type=\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "a raw non-ASCII byte",
        ),
        (
            b"GET /fhir/_export/%FF%FE HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "a path that is not UTF-8",
        ),
        (b"BLAH\r\n\r\n".to_vec(), 400, "not HTTP"),
    ];
    for (request, want, case) in cases {
        let (status, body) = tokio::task::spawn_blocking(move || raw(addr, &request))
            .await
            .unwrap();
        assert_outcome(status, &body, want, None, case);
    }
    t.server.stop().await;
}

#[tokio::test]
async fn odd_values_are_refused_with_the_parameter_named() {
    let t = TestServer::start(Options {
        patients: 2,
        ..Options::default()
    })
    .await;
    for (query, name) in [
        ("_since=0000-01-01T00:00:00Z", "_since"),
        ("_typeFilter=Observation%3Fcode%3D%25ZZ", "_typeFilter"),
        ("_type=%ZZ", "_type"),
        ("_type=Patient%", "_type"),
    ] {
        let resp = t.kickoff("/$export", query).await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_outcome(status, &body, 400, Some(name), query);
    }
    // A page that is not a number is a bad request, not a missing page.
    let status_url = t.start_export("/$export", "_type=Patient").await;
    t.manifest(&status_url).await;
    let resp = t
        .http
        .get(format!("{status_url}?page=abc"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_outcome(
        status,
        &resp.json().await.unwrap(),
        400,
        Some("page"),
        "page=abc",
    );
    let resp = t
        .http
        .get(format!("{status_url}?page=9"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a page that does not exist");

    let post = |query: &str, body: &'static str| {
        t.http
            .post(format!("{}/$export{query}", t.base))
            .header("Prefer", "respond-async")
            .header("Content-Type", "application/fhir+json")
            .body(body)
            .send()
    };
    let params =
        r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"}]}"#;
    let resp = post("?_type=Observation", params).await.unwrap();
    let status = resp.status().as_u16();
    assert_outcome(
        status,
        &resp.json().await.unwrap(),
        400,
        Some("_type"),
        "query and body",
    );
    let resp = post("", "").await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_outcome(status, &body, 400, None, "empty POST body");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Parameters"),
        "{body}"
    );
    // An empty Parameters resource is every default.
    let resp = post("", r#"{"resourceType":"Parameters"}"#).await.unwrap();
    assert_eq!(resp.status(), 202);
    t.server.stop().await;
}

#[tokio::test]
async fn filters_past_the_limits_are_refused_at_kick_off() {
    let t = TestServer::start(
        Options {
            patients: 2,
            ..Options::default()
        }
        .env("FHIR_EXPORT_MAX_TYPE_FILTERS", "100")
        .env("FHIR_EXPORT_MAX_FILTER_VALUES", "5000"),
    )
    .await;
    let parameters = |filters: Vec<String>| {
        let parameter: Vec<Value> = filters
            .into_iter()
            .map(|f| serde_json::json!({"name": "_typeFilter", "valueString": f}))
            .collect();
        serde_json::json!({"resourceType": "Parameters", "parameter": parameter}).to_string()
    };
    let post = |body: String| {
        t.http
            .post(format!("{}/$export", t.base))
            .header("Prefer", "respond-async")
            .header("Content-Type", "application/fhir+json")
            .body(body)
            .send()
    };
    let many: Vec<String> = (0..101).map(|i| format!("Observation?code=c{i}")).collect();
    let resp = post(parameters(many)).await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_outcome(status, &body, 400, Some("_typeFilter"), "101 queries");
    assert_eq!(body["issue"][0]["code"], "too-costly");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        text.contains("at most 100") && text.contains("FHIR_EXPORT_MAX_TYPE_FILTERS"),
        "{text}"
    );
    let codes: Vec<String> = (0..5001).map(|i| format!("c{i}")).collect();
    let resp = post(parameters(vec![format!(
        "Observation?code={}",
        codes.join(",")
    )]))
    .await
    .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_outcome(status, &body, 400, Some("_typeFilter"), "5001 values");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("at most 5000")
    );
    // At the limits, accepted.
    let codes: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
    let resp = post(parameters(vec![format!(
        "Observation?code={}",
        codes.join(",")
    )]))
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    t.server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_their_number_is_capped() {
    let t = TestServer::start(
        Options {
            patients: 2,
            ..Options::default()
        }
        .env("FHIR_EXPORT_HEADER_READ_TIMEOUT_SECS", "3")
        .env("FHIR_EXPORT_MAX_CONNECTIONS", "2"),
    )
    .await;
    let addr = t.server.addr;
    let metadata = format!("{}/metadata", t.base);
    tokio::task::spawn_blocking(move || {
        // Two connections that start a request and never finish its headers.
        let opened = Instant::now();
        let mut idle: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s
            })
            .collect();
        // Every slot is taken: a third client is not served while they hold on...
        let mut third = TcpStream::connect(addr).unwrap();
        third
            .write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 4096];
        match third.read(&mut buf) {
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
            Ok(n) => panic!("served past the connection cap: {n} bytes"),
        }
        // ...and is once the header-read timeout closes them.
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let n = s.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "an idle connection was answered instead of closed");
        }
        let closed_after = opened.elapsed();
        assert!(
            closed_after >= Duration::from_secs(2) && closed_after < Duration::from_secs(15),
            "closed after {closed_after:?}"
        );
        third
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = Vec::new();
        third.read_to_end(&mut answer).unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    })
    .await
    .unwrap();
    // The server itself is fine.
    assert_eq!(t.http.get(metadata).send().await.unwrap().status(), 200);
    t.server.stop().await;
}

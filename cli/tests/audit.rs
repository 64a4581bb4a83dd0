//! The audit log of the real `fhir-export serve` process: `FHIR_EXPORT_AUDIT_LOG` receives one
//! JSON line per token, kick-off, status, cancel and file request (and per request refused for
//! its token), with the client id, the job id, the outcome and the types; never a token, a
//! resource or a patient identifier. The client key comes from `fhir-export keygen`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

const EXE: &str = env!("CARGO_BIN_EXE_fhir-export");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{base}/metadata")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_request_leaves_one_audit_line_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = std::process::Command::new(EXE)
        .args(["keygen", "--client-id", "app", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(keys.join("app.private.pem")).unwrap();
    let key = shared::jose::SigningKey::from_pem(&pem).unwrap();
    assert_eq!(key.alg(), "ES384");

    let audit = dir.path().join("audit.ndjson");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let child = Command::new(EXE)
        .args([
            "serve",
            "--workers",
            "2",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--auth-client")
        .arg(format!("app={}", keys.join("app.jwks.json").display()))
        .env("FHIR_EXPORT_AUDIT_LOG", &audit)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _server = Killed(child);
    let http = reqwest::Client::new();
    wait_up(&http, &base).await;

    // A token, by the SMART configuration's endpoint.
    let config: Value = http
        .get(format!("{base}/.well-known/smart-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_url = config["token_endpoint"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp();
    let assertion = shared::jose::sign(
        &key,
        None,
        &json!({"iss": "app", "sub": "app", "aud": token_url, "exp": now + 60, "jti": "a1"}),
    )
    .unwrap();
    let form = format!(
        "grant_type=client_credentials&scope=system%2F*.read&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
    );
    let answer: Value = http
        .post(&token_url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().expect("a token").to_owned();

    // Kick-off, status until done, a file, a refused request, a cancel.
    let resp = http
        .get(format!("{base}/Patient/$export?_type=Patient,Condition"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    let job = status_url.rsplit('/').next().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest: Value = loop {
        let resp = http
            .get(&status_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break resp.json().await.unwrap();
        }
        assert_eq!(resp.status(), 202);
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let file = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Patient")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let patients = http.get(&file).bearer_auth(&token).send().await.unwrap();
    assert_eq!(patients.status(), 200);
    let patient_ids: Vec<String> = patients
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(!patient_ids.is_empty());
    let refused = http.get(&status_url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let cancelled = http
        .delete(&status_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);

    // The audit lines are written as the requests end; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["target"] == "audit"), "{text}");
    let events: Vec<&str> = lines
        .iter()
        .map(|l| l["fields"]["event"].as_str().unwrap())
        .collect();
    let kinds: BTreeSet<&str> = events.iter().copied().collect();
    assert_eq!(
        kinds,
        ["cancel", "file", "kickoff", "refused", "status", "token"].into(),
        "{text}"
    );
    // One per request: one token, one kick-off, one file, one refusal, one cancel.
    for one in ["token", "kickoff", "file", "refused", "cancel"] {
        assert_eq!(
            events.iter().filter(|e| **e == one).count(),
            1,
            "{one}: {text}"
        );
    }
    for l in &lines {
        let f = &l["fields"];
        match f["event"].as_str().unwrap() {
            "refused" => assert_eq!(f["outcome"], 401),
            "token" => assert_eq!(
                (&f["client_id"], &f["outcome"]),
                (&json!("app"), &json!(200))
            ),
            _ => {
                assert_eq!(f["client_id"], "app", "{l}");
                assert_eq!(f["job_id"], job.as_str(), "{l}");
            }
        }
    }
    let kickoff = lines
        .iter()
        .find(|l| l["fields"]["event"] == "kickoff")
        .unwrap();
    assert_eq!(kickoff["fields"]["outcome"], 202);
    assert_eq!(kickoff["fields"]["types"], "Condition, Patient");
    let file_line = lines
        .iter()
        .find(|l| l["fields"]["event"] == "file")
        .unwrap();
    assert_eq!(file_line["fields"]["types"], "Patient");
    // Nothing secret or identifying.
    assert!(!text.contains(&token) && !text.contains(&assertion));
    for id in &patient_ids {
        assert!(
            !text.contains(id.as_str()),
            "patient id {id} in the audit log"
        );
    }
}

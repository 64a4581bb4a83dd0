//! Test harness: a real `fhir-export serve` on a loopback port, driven over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod auth;
pub mod aws;
pub mod azure;
pub mod helios;
pub mod proxy;
pub mod recorder;
pub mod wrappers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fhir_export::serve::{RunningServer, ServeConfig, start};
use fhir_export::synth::{GenOptions, GenSummary, generate};
use reqwest::header::{ACCEPT, HeaderMap};
use serde_json::Value;
use tempfile::TempDir;

/// Types of the generated data that are in the Patient compartment (Group is left out of
/// patient-level exports unless asked for).
pub const COMPARTMENT_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "Encounter",
    "Immunization",
    "MedicationRequest",
    "Observation",
    "Patient",
    "Procedure",
    "Provenance",
];

pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub http: reqwest::Client,
    pub state: TempDir,
}

pub struct Options {
    /// NDJSON source folder; `None` generates `patients` patients.
    pub source: Option<PathBuf>,
    /// A source store URL (`az://...`, `s3://...`), instead of `source`.
    pub source_url: Option<String>,
    pub patients: u64,
    pub workers: usize,
    pub env: Vec<(String, String)>,
    /// Output target URL (`s3://...`); `None` is the local folder in the state folder.
    pub output: Option<String>,
    /// Wrappers around the server's ports.
    pub wrap: fhir_export::serve::Wrappers,
    /// Clients of the embedded authorization server (see [`auth::TestClient`]).
    pub auth_clients: Vec<(String, PathBuf)>,
    pub auth_client_scopes: Vec<(String, String)>,
    /// Address to bind (default `127.0.0.1:0`).
    pub bind: Option<std::net::SocketAddr>,
    /// `--schedules`, `--events-webhook`, `--events-log`.
    pub schedules: Option<PathBuf>,
    pub events_webhook: Option<String>,
    pub events_log: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            source: None,
            source_url: None,
            patients: 30,
            workers: 3,
            env: Vec::new(),
            output: None,
            wrap: Default::default(),
            auth_clients: Vec::new(),
            auth_client_scopes: Vec::new(),
            bind: None,
            schedules: None,
            events_webhook: None,
            events_log: None,
        }
    }
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// Generates a dataset into a fresh temp folder.
pub fn dataset(patients: u64) -> (TempDir, GenSummary) {
    let dir = tempfile::tempdir().expect("tmp");
    let summary = generate(
        &GenOptions {
            patients,
            ..GenOptions::default()
        },
        dir.path(),
    )
    .expect("generate");
    (dir, summary)
}

impl TestServer {
    pub async fn start(opts: Options) -> TestServer {
        let state = tempfile::tempdir().expect("tmp");
        let source = match opts.source {
            Some(p) => p,
            None => {
                let dir = state.path().join("source");
                generate(
                    &GenOptions {
                        patients: opts.patients,
                        ..GenOptions::default()
                    },
                    &dir,
                )
                .expect("generate");
                dir
            }
        };
        let mut config = ServeConfig::new(state.path().join("state"));
        config.bind = opts
            .bind
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
        config.auth_clients = opts.auth_clients;
        config.auth_client_scopes = opts.auth_client_scopes;
        config.schedules = opts.schedules;
        config.events_webhook = opts.events_webhook;
        config.events_log = opts.events_log;
        config.source = Some(
            opts.source_url
                .unwrap_or_else(|| source.display().to_string()),
        );
        config.workers = opts.workers;
        config.output = opts.output;
        config.wrap = opts.wrap;
        config.sweep_every = Duration::from_secs(1);
        config.env = opts.env;
        let server = start(config).await.expect("server starts");
        TestServer {
            base: server.base_url.clone(),
            server,
            http: reqwest::Client::new(),
            state,
        }
    }

    pub fn source_dir(&self) -> &Path {
        self.server.source_dir.as_deref().expect("local source")
    }

    pub fn output_dir(&self) -> &Path {
        self.server.output_dir.as_deref().expect("local output")
    }

    /// GET kick-off with the standard headers. `path` is relative to the FHIR base.
    pub async fn kickoff(&self, path: &str, query: &str) -> reqwest::Response {
        let url = if query.is_empty() {
            format!("{}{}", self.base, path)
        } else {
            format!("{}{}?{}", self.base, path, query)
        };
        self.http
            .get(url)
            .header(ACCEPT, "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .await
            .expect("kick-off request")
    }

    /// Kicks off and returns the status URL, asserting a 202.
    pub async fn start_export(&self, path: &str, query: &str) -> String {
        let resp = self.kickoff(path, query).await;
        assert_eq!(
            resp.status(),
            202,
            "kick-off {path}?{query}: {:?}",
            resp.text().await
        );
        content_location(resp.headers())
    }

    /// Polls until the status is no longer 202; returns the final response.
    pub async fn wait(&self, status_url: &str) -> reqwest::Response {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let resp = self
                .http
                .get(status_url)
                .header(ACCEPT, "application/json")
                .send()
                .await
                .expect("status request");
            if resp.status() != 202 {
                return resp;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "export did not finish in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a completed export and returns the manifest.
    pub async fn manifest(&self, status_url: &str) -> Value {
        let resp = self.wait(status_url).await;
        assert_eq!(
            resp.status(),
            200,
            "export did not complete: {:?}",
            resp.text().await
        );
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "manifest content type"
        );
        resp.json().await.expect("manifest json")
    }

    /// Downloads every file of a manifest section; resources by type, checking each file.
    pub async fn download(&self, manifest: &Value, section: &str) -> BTreeMap<String, Vec<Value>> {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for item in manifest[section].as_array().expect("section") {
            let ty = item["type"].as_str().expect("type");
            let url = item["url"].as_str().expect("url");
            assert!(
                url.starts_with("http://") || url.starts_with("https://"),
                "absolute url {url}"
            );
            // A 503 (a store call that failed, retries included) is tried again, as a
            // client honouring `Retry-After` would.
            let mut tries = 0;
            let resp = loop {
                let resp = self
                    .http
                    .get(url)
                    .header(ACCEPT, "application/fhir+ndjson")
                    .send()
                    .await
                    .expect("file request");
                tries += 1;
                if resp.status() != 503 || tries >= 5 {
                    break resp;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(resp.status(), 200, "{url}");
            assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
            let body = resp.text().await.expect("body");
            assert!(body.ends_with('\n'), "{url} ends with a newline");
            assert!(!body.contains("\n\n"), "{url} has a blank line");
            let lines: Vec<&str> = body.lines().collect();
            assert_eq!(
                lines.len() as u64,
                item["count"].as_u64().expect("count"),
                "count of {url}"
            );
            for line in lines {
                let v: Value = serde_json::from_str(line).expect("valid JSON line");
                assert_eq!(v["resourceType"], ty, "{url}");
                out.entry(ty.to_owned()).or_default().push(v);
            }
        }
        out
    }

    /// The job record behind a status URL.
    pub async fn job(&self, status_url: &str) -> shared::job::Job {
        let id = shared::model::JobId::parse(status_url.rsplit('/').next().expect("id"))
            .expect("a job id");
        self.server
            .deps
            .jobs
            .get(&id)
            .await
            .expect("job store")
            .expect("the job")
    }

    /// Waits until the work queue holds no message, visible or in flight (the workers have
    /// handled everything sent so far).
    pub async fn settle(&self) {
        let queue = self.server.local_queue.as_ref().expect("a local queue");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while queue.depth().await.expect("depth") > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the work queue did not drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Handles the next `n` queued messages by hand (for servers started without workers).
    pub async fn handle_next(&self, n: usize) {
        let deps = &self.server.deps;
        for _ in 0..n {
            let d = deps
                .queue
                .receive(1, Duration::from_secs(1))
                .await
                .expect("receive")
                .remove(0);
            shared::worker::handle_message(deps, &d.body, &shared::worker::NoLease)
                .await
                .expect("handled");
            deps.queue.delete(&d.receipt).await.expect("ack");
        }
    }

    /// Handles queued messages by hand until the queue is empty; returns how many.
    pub async fn drain(&self) -> usize {
        let deps = &self.server.deps;
        let mut n = 0;
        loop {
            let got = deps
                .queue
                .receive(10, Duration::from_millis(300))
                .await
                .expect("receive");
            if got.is_empty() {
                return n;
            }
            for d in got {
                shared::worker::handle_message(deps, &d.body, &shared::worker::NoLease)
                    .await
                    .expect("handled");
                deps.queue.delete(&d.receipt).await.expect("ack");
                n += 1;
            }
        }
    }

    /// Every line of every `output` file (for manifests whose items have no `type`).
    pub async fn download_any(&self, manifest: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        for item in manifest["output"].as_array().expect("output") {
            let url = item["url"].as_str().expect("url");
            let body = self
                .http
                .get(url)
                .send()
                .await
                .expect("file")
                .text()
                .await
                .expect("body");
            for line in body.lines() {
                let v: Value = serde_json::from_str(line).expect("json line");
                if v["resourceType"] != "Parameters" {
                    out.push(v);
                }
            }
        }
        out
    }

    /// Count per type of a completed export.
    pub async fn export_counts(&self, path: &str, query: &str) -> BTreeMap<String, u64> {
        let status = self.start_export(path, query).await;
        let manifest = self.manifest(&status).await;
        counts(&manifest)
    }
}

pub fn content_location(headers: &HeaderMap) -> String {
    headers
        .get("content-location")
        .expect("Content-Location")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// The file names of a manifest's `output`, in its order.
pub fn file_names(manifest: &Value) -> Vec<String> {
    manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|i| {
            let url = i["url"].as_str().expect("url");
            url.rsplit('/').next().unwrap_or(url).to_owned()
        })
        .collect()
}

/// Sum of `count` per type in a manifest's `output`.
pub fn counts(manifest: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for item in manifest["output"].as_array().expect("output") {
        *out.entry(item["type"].as_str().expect("type").to_owned())
            .or_insert(0) += item["count"].as_u64().expect("count");
    }
    out
}

/// The text of an NDJSON file, plain (`.ndjson`) or gzip (`.ndjson.gz`); `None` for any
/// other file.
pub fn read_ndjson_file(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    if name.ends_with(".ndjson.gz") {
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
            &mut s,
        )
        .unwrap();
        Some(s)
    } else if name.ends_with(".ndjson") {
        Some(std::fs::read_to_string(path).unwrap())
    } else {
        None
    }
}

/// Every file below `dir` (which may not exist), as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The ids of a Group's current members: active (not `inactive`) and not ended.
pub fn current_members(group: &Value) -> std::collections::BTreeSet<String> {
    group["member"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["inactive"] != true && m["period"]["end"].is_null())
        .map(|m| {
            m["entity"]["reference"]
                .as_str()
                .expect("reference")
                .trim_start_matches("Patient/")
                .to_owned()
        })
        .collect()
}

/// Adds the id of every patient a resource refers to, anywhere in it.
pub fn patient_refs(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference"
                    && let Some(id) = x.as_str().and_then(|s| s.strip_prefix("Patient/"))
                {
                    out.insert(id.to_owned());
                }
                patient_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| patient_refs(x, out)),
        _ => {}
    }
}

/// Reads every resource of an NDJSON folder (plain or gzip), by type.
pub fn read_source(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    assert!(dir.is_dir(), "no source folder {}", dir.display());
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for rel in files_under(dir) {
        let Some(text) = read_ndjson_file(&dir.join(rel)) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).expect("source json");
            let t = v["resourceType"].as_str().unwrap().to_owned();
            out.entry(t).or_default().push(v);
        }
    }
    out
}

/// The moto server the test command started, or `None` (the test then says it is skipped).
/// When moto is switched on but does not answer, the test fails: it never passes silently.
pub async fn moto() -> Option<String> {
    let Ok(url) = std::env::var("FHIR_EXPORT_MOTO_URL") else {
        eprintln!("SKIPPED: moto not running (run scripts/test)");
        return None;
    };
    let ok = reqwest::get(format!("{url}/moto-api/"))
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(ok, "moto is switched on at {url} but does not answer");
    Some(url)
}

/// A name unique to this test run (tables, queues and buckets are per test).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_simple())
}

fn uuid_simple() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{}",
        nanos,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `../shared/data` (the Synthea set) when present.
pub fn synthea_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FHIR_EXPORT_SYNTHEA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    dir.join("counts.json").exists().then_some(dir)
}

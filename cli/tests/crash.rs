//! Crashes: the real `fhir-export serve` process killed (SIGKILL) at points of an export
//! (while it plans, in the middle of a chunk, while a chunk publishes its files, while the
//! export is finalized), then started again on the same state folder. Every export must
//! complete within seconds of the restart, with each resource exactly once, and leave nothing
//! in the output but its published files. Once as is, and once with every queue message
//! delivered twice (`FHIR_EXPORT_FAULTS=duplicate-delivery`).
//!
//! The kill points are found from the server's own JSON log lines; each kill comes a random
//! 0-3 ms after its line, so the exact point moves from run to run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const EXE: &str = env!("CARGO_BIN_EXE_fhir-export");
/// Exports per run, each with one kill.
const EXPORTS: usize = 20;
/// What "within seconds" means here.
const RESTART_BUDGET: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    Planning,
    MidChunk,
    Publishing,
    Finalizing,
}

const POINTS: [Point; 4] = [
    Point::Planning,
    Point::MidChunk,
    Point::Publishing,
    Point::Finalizing,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Server {
    child: Child,
    /// The server's log lines, parsed.
    lines: mpsc::UnboundedReceiver<Value>,
}

struct Setup {
    source: PathBuf,
    state: PathBuf,
    port: u16,
    faults: &'static str,
}

impl Setup {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/fhir", self.port)
    }

    async fn start(&self) -> Server {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(EXE)
                .args(["serve", "--workers", "2", "--bind"])
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--source")
                .arg(&self.source)
                .arg("--state")
                .arg(&self.state)
                .env("FHIR_EXPORT_LOG_FORMAT", "json")
                .env("RUST_LOG", "info,shared::worker=debug")
                // Many small chunks, so that every point of an export lasts a while.
                .env("FHIR_EXPORT_CHUNK_BYTES", "400000")
                .env("FHIR_EXPORT_PACK_BYTES", "0")
                .env("FHIR_EXPORT_RETRY_AFTER_SECS", "1")
                .env("FHIR_EXPORT_FAULTS", self.faults)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("server starts");
            let stderr = child.stderr.take().expect("stderr");
            let (tx, mut rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let v = serde_json::from_str::<Value>(&line)
                        .unwrap_or_else(|_| serde_json::json!({ "fields": { "message": line } }));
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            });
            // Ready when it says so; a port still held by the process just killed is let go
            // within moments.
            loop {
                match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                    Ok(Some(v)) if message(&v) == "fhir-export serving" => {
                        return Server { child, lines: rx };
                    }
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
            let _ = child.kill().await;
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or("")
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    &v["fields"][name]
}

/// Waits for the log line at which `point` of export `job` is reached; `false` if the export
/// got past it first (it completed).
async fn reach(server: &mut Server, job: &str, point: Point, rng: &mut Rng) -> bool {
    // Which occurrence of the line to stop at.
    let nth = 1 + rng.below(4);
    let mut seen = 0;
    loop {
        let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(60), server.lines.recv()).await
        else {
            panic!("the server went quiet waiting for {point:?}");
        };
        let msg = message(&v);
        if field(&v, "job_id").as_str() != Some(job) {
            continue;
        }
        if msg == "export completed" {
            return false;
        }
        let hit = match point {
            Point::Planning => msg == "export accepted" || msg == "export planned",
            Point::MidChunk => msg == "chunk started",
            Point::Publishing => msg == "chunk done" && field(&v, "first") == true,
            Point::Finalizing => {
                msg == "chunk done"
                    && field(&v, "first") == true
                    && field(&v, "done") == field(&v, "total")
            }
        };
        if hit {
            seen += 1;
            if point == Point::Planning || point == Point::Finalizing || seen >= nth {
                return true;
            }
        }
    }
}

/// Every resource of the source, as `type/id`, once each.
fn source_resources(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let key = format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            );
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<String> {
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
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Checks a completed export: every resource of the source exactly once, and the job's
/// folder holding exactly the manifest's files.
async fn check(
    http: &reqwest::Client,
    setup: &Setup,
    manifest: &Value,
    want: &BTreeMap<String, usize>,
) {
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut listed = Vec::new();
    for section in ["output", "error"] {
        for item in manifest[section].as_array().unwrap() {
            let url = item["url"].as_str().unwrap();
            listed.push(url.split("/files/").nth(1).unwrap().to_owned());
            if section == "error" {
                continue;
            }
            let body = http.get(url).send().await.unwrap().text().await.unwrap();
            assert_eq!(
                body.lines().count() as u64,
                item["count"].as_u64().unwrap(),
                "{url}"
            );
            for line in body.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let key = format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap(),
                    v["id"].as_str().unwrap()
                );
                *got.entry(key).or_insert(0) += 1;
            }
        }
    }
    assert!(
        manifest["error"].as_array().unwrap().is_empty(),
        "errors: {}",
        manifest["error"]
    );
    if got != *want {
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .take(5)
            .collect();
        let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
        panic!(
            "resources differ: {} exported, {} in the source; missing e.g. {missing:?}, more than once e.g. {twice:?}",
            got.len(),
            want.len()
        );
    }
    let job = manifest["output"][0]["url"]
        .as_str()
        .unwrap()
        .split("/_export/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    listed.sort();
    let output = setup.state.join("output");
    assert_eq!(
        files_under(&output.join(&job)),
        listed,
        "the export's folder"
    );
}

/// Once every export is complete and the server idle: nothing staged, nothing temporary.
async fn check_nothing_left(setup: &Setup) {
    let output = setup.state.join("output");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let staged = files_under(&output.join(".staging"));
        let temp: Vec<String> = files_under(&output.join(".tmp"))
            .into_iter()
            .filter(|f| !f.ends_with(".lock"))
            .collect();
        if staged.is_empty() && temp.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: staged {staged:?}, temporary {temp:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(faults: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let generated = std::process::Command::new(EXE)
        .args(["gen", "--patients", "250", "--out"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let want = source_resources(&source);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let setup = Setup {
        source,
        state: dir.path().join("state"),
        port,
        faults,
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("faults `{faults}`, seed {seed}");
    let mut rng = Rng(seed);
    let http = reqwest::Client::new();
    let mut server = setup.start().await;
    let mut restarts: Vec<(Point, bool, Duration)> = Vec::new();
    for i in 0..EXPORTS {
        let point = POINTS[i % POINTS.len()];
        let resp = http
            .get(format!("{}/$export", setup.base()))
            .header("Prefer", "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "kick-off {i}");
        let status_url = resp.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_owned();
        let job = status_url.rsplit('/').next().unwrap().to_owned();
        let hit = reach(&mut server, &job, point, &mut rng).await;
        tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
        server.child.kill().await.unwrap();
        let restarted = Instant::now();
        server = setup.start().await;
        let manifest: Value = loop {
            let resp = http.get(&status_url).send().await.unwrap();
            match resp.status().as_u16() {
                200 => break resp.json().await.unwrap(),
                202 => {}
                s => panic!(
                    "export {i} ({point:?}): status {s}: {}",
                    resp.text().await.unwrap()
                ),
            }
            if restarted.elapsed() >= RESTART_BUDGET {
                let mut log = Vec::new();
                while let Ok(v) = server.lines.try_recv() {
                    log.push(v.to_string());
                }
                panic!(
                    "export {i} killed at {point:?} did not complete within {RESTART_BUDGET:?} of the restart; the server said:\n{}",
                    log.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = restarted.elapsed();
        restarts.push((point, hit, took));
        check(&http, &setup, &manifest, &want).await;
    }
    check_nothing_left(&setup).await;
    let _ = server.child.kill().await;
    for point in POINTS {
        let times: Vec<Duration> = restarts
            .iter()
            .filter(|(p, hit, _)| *p == point && *hit)
            .map(|(_, _, t)| *t)
            .collect();
        let max = times.iter().max().copied().unwrap_or_default();
        println!(
            "{point:?}: {} kills at the point, restart to complete at most {:.2} s ({:?})",
            times.len(),
            max.as_secs_f64(),
            times
                .iter()
                .map(|t| format!("{:.2}", t.as_secs_f64()))
                .collect::<Vec<_>>()
        );
        assert!(!times.is_empty(), "no kill landed at {point:?}");
    }
    let missed = restarts.iter().filter(|(_, hit, _)| !hit).count();
    println!("{missed} of {EXPORTS} exports completed before their kill point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_export_completes_after_a_crash_at_any_point() {
    run("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_export_completes_after_crashes_with_every_message_delivered_twice() {
    run("duplicate-delivery").await;
}

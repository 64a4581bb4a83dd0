//! The Helios FHIR Server as a real upstream: started fresh (in-memory SQLite) on a free
//! loopback port for each test, and loaded through its REST API with transaction Bundles of
//! `PUT`s. `scripts/stand-ins.sh` installs it (scripts/install-helios.sh) and names the binary
//! and its data folder in `FHIR_EXPORT_HFS_BIN` and `FHIR_EXPORT_HFS_DATA_DIR`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Resources per transaction Bundle when loading.
const LOAD_BATCH: usize = 500;

pub struct Helios {
    /// `http://127.0.0.1:PORT`, the FHIR base.
    pub base: String,
    pub http: reqwest::Client,
    child: Child,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Helios {
    /// A fresh, empty server; `None` (SKIPPED) when the stand-ins are not set up (a test run
    /// outside `scripts/test`). When they are, a server that does not start fails the test.
    pub async fn start() -> Option<Helios> {
        let (Ok(bin), Ok(data)) = (
            std::env::var("FHIR_EXPORT_HFS_BIN"),
            std::env::var("FHIR_EXPORT_HFS_DATA_DIR"),
        ) else {
            eprintln!("SKIPPED: Helios FHIR Server not installed (run scripts/test)");
            return None;
        };
        assert!(
            Path::new(&bin).is_file(),
            "FHIR_EXPORT_HFS_BIN={bin} does not exist: scripts/install-helios.sh failed?"
        );
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .env("HFS_SERVER_HOST", "127.0.0.1")
            .env("HFS_SERVER_PORT", port.to_string())
            .env("HFS_BASE_URL", &base)
            .env("HFS_DATABASE_URL", ":memory:")
            .env("HFS_DATA_DIR", &data)
            .env("HFS_SEED_CONFORMANCE", "false")
            .env("HFS_UI_ENABLED", "false")
            .env("HFS_NL_SEARCH_ENABLED", "false")
            .env("HFS_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start hfs");
        let helios = Helios {
            base,
            http: reqwest::Client::new(),
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = helios
                .http
                .get(format!("{}/health", helios.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Helios did not answer /health within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(helios)
    }

    /// `PUT`s `resources` in transaction Bundles; returns how many were stored.
    pub async fn put_all(&self, resources: &[Value]) -> usize {
        for batch in resources.chunks(LOAD_BATCH) {
            let entries: Vec<Value> = batch
                .iter()
                .map(|r| {
                    let url = format!(
                        "{}/{}",
                        r["resourceType"].as_str().expect("type"),
                        r["id"].as_str().expect("id")
                    );
                    json!({"resource": r, "request": {"method": "PUT", "url": url}})
                })
                .collect();
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let resp = self
                .http
                .post(&self.base)
                .header("Content-Type", "application/fhir+json")
                .json(&bundle)
                .send()
                .await
                .expect("transaction");
            let status = resp.status();
            assert!(
                status.is_success(),
                "transaction refused: {status} {}",
                resp.text().await.unwrap_or_default()
            );
        }
        resources.len()
    }

    /// Loads every `*.ndjson` file of `dir` (the generator's output, or `../shared/data`).
    pub async fn load_dir(&self, dir: &Path) -> usize {
        self.put_all(&read_dir_resources(dir)).await
    }

    /// `DELETE [type]/[id]`.
    pub async fn delete(&self, t: &str, id: &str) {
        let resp = self
            .http
            .delete(format!("{}/{t}/{id}", self.base))
            .send()
            .await
            .expect("delete");
        assert!(
            resp.status().is_success(),
            "delete {t}/{id}: {}",
            resp.status()
        );
    }

    /// The server's own `$export` at `path` (`/$export`, `/Patient/$export`, ...): its
    /// output files' resources by type.
    pub async fn own_export(&self, path: &str) -> std::collections::BTreeMap<String, Vec<Value>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .await
            .expect("kick-off");
        assert_eq!(resp.status(), 202, "Helios {path}");
        let status = resp.headers()["content-location"]
            .to_str()
            .expect("location")
            .to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let manifest: Value = loop {
            let r = self.http.get(&status).send().await.expect("status");
            if r.status() == 200 {
                break r.json().await.expect("manifest");
            }
            assert_eq!(r.status(), 202, "Helios {path} status");
            assert!(
                tokio::time::Instant::now() < deadline,
                "Helios {path} too slow"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut out: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for item in manifest["output"].as_array().expect("output") {
            let body = self
                .http
                .get(item["url"].as_str().expect("url"))
                .send()
                .await
                .expect("file")
                .text()
                .await
                .expect("body");
            for line in body.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line).expect("json");
                out.entry(v["resourceType"].as_str().expect("type").to_owned())
                    .or_default()
                    .push(v);
            }
        }
        out
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Every resource of the NDJSON files of `dir`, referenced types first (Patient,
/// Practitioner, Organization), so that a server checking references finds them.
pub fn read_dir_resources(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".ndjson") || name.ends_with(".ndjson.gz")
        })
        .collect();
    let rank = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        ["Organization", "Practitioner", "Patient"]
            .iter()
            .position(|t| name.starts_with(t))
            .map_or(3, |i| i)
    };
    files.sort_by_key(|p| (rank(p), p.clone()));
    let mut out = Vec::new();
    for f in files {
        let raw = std::fs::read(&f).expect("read");
        let text = if f.extension().is_some_and(|x| x == "gz") {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
                .expect("gunzip");
            out
        } else {
            String::from_utf8(raw).expect("utf8")
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).expect("json line"));
        }
    }
    out
}

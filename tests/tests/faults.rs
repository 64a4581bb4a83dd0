//! Faults, in one server process: damaged source files, an output store that fails one call
//! in ten, every message delivered twice, a full disk, a read-only output, expiry, and one
//! export not holding up another. (Crashes of the whole process are in
//! `cli/tests/crash.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fhir_export::serve::{ServeConfig, ServeError, Wrap};
use integration_tests::wrappers::{SlowSource, StoreWrapper, Wrapped};
use integration_tests::{Options, TestServer, counts, dataset, read_source};
use serde_json::Value;
use shared::model::JobId;
use shared::ports::{Encoding, ObjectError, ObjectStore, ObjectWriter, Refusal};

fn job_id(status_url: &str) -> JobId {
    JobId::parse(status_url.rsplit('/').next().unwrap()).unwrap()
}

/// Asserts that an export gave each resource of `source` (of the types in `want`) once.
fn assert_exactly_once(
    got: &BTreeMap<String, Vec<Value>>,
    source: &BTreeMap<String, Vec<Value>>,
    types: &[&str],
) {
    for t in types {
        let want: BTreeSet<&str> = source[*t]
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        let ids: Vec<&str> = got
            .get(*t)
            .map(|v| v.iter().map(|r| r["id"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(ids.len(), want.len(), "{t}: count");
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), want, "{t}: ids");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The ids of the whole lines a tolerant reader gets out of damaged gzip data.
fn readable_ids(damaged: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(damaged);
    let mut buf = [0u8; 65536];
    loop {
        match decoder.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    whole
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn damaged_gzip_files_are_reported_and_everything_readable_exported_at_once() {
    let (dir, _) = dataset(60);
    let source = read_source(dir.path());
    let obs = std::fs::read(dir.path().join("Observation.ndjson")).unwrap();
    let cond = std::fs::read(dir.path().join("Condition.ndjson")).unwrap();
    std::fs::remove_file(dir.path().join("Observation.ndjson")).unwrap();
    std::fs::remove_file(dir.path().join("Condition.ndjson")).unwrap();
    // Truncated, a bad checksum, and not gzip at all.
    let zipped = gzip(&obs);
    let truncated = zipped[..zipped.len() / 2].to_vec();
    std::fs::write(dir.path().join("Observation.ndjson.gz"), &truncated).unwrap();
    let mut bad_crc = gzip(&cond);
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0x55;
    std::fs::write(dir.path().join("Condition.ndjson.gz"), &bad_crc).unwrap();
    std::fs::write(
        dir.path().join("Immunization-extra.ndjson.gz"),
        b"{\"resourceType\":\"Immunization\",\"id\":\"plain-text\"}\n",
    )
    .unwrap();
    let t = TestServer::start(Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let status = t.start_export("/$export", "").await;
    let manifest = t.manifest(&status).await;
    // No retries: a retry cannot mend a file (they would take 1 + 2 + 4 + 8 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(t.job(&status).await.recoveries, 0);
    let got = t.download(&manifest, "output").await;
    // The other types whole; the readable part of the damaged ones.
    let others: Vec<&str> = source
        .keys()
        .map(String::as_str)
        .filter(|t| !["Observation", "Condition"].contains(t))
        .collect();
    assert_exactly_once(&got, &source, &others);
    let obs_ids: Vec<String> = got["Observation"]
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let readable = readable_ids(&truncated);
    assert!(!readable.is_empty() && readable.len() < source["Observation"].len());
    assert_eq!(
        obs_ids.iter().collect::<BTreeSet<_>>(),
        readable.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(obs_ids.len(), readable.len());
    // A bad checksum is found at the end: every line was read.
    assert_eq!(got["Condition"].len(), source["Condition"].len());
    // One error each, naming the file, the line, and the cause.
    let errors = t.download(&manifest, "error").await;
    let texts: Vec<String> = errors["OperationOutcome"]
        .iter()
        .map(|o| {
            assert_eq!(o["issue"][0]["severity"], "error");
            o["issue"][0]["diagnostics"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    let about = |file: &str| {
        texts
            .iter()
            .find(|t| t.starts_with(&format!("{file} line ")))
            .unwrap_or_else(|| panic!("nothing about {file}: {texts:#?}"))
    };
    let o = about("Observation.ndjson.gz");
    assert!(o.contains("truncated"), "{o}");
    assert!(
        o.contains(&format!("line {}:", readable.len() + 1)),
        "the line where it broke: {o}"
    );
    assert!(about("Condition.ndjson.gz").contains("corrupt"));
    assert!(about("Immunization-extra.ndjson.gz").contains("corrupt"));
    t.server.stop().await;
}

#[tokio::test]
async fn exports_complete_when_the_output_store_fails_one_call_in_ten() {
    let before = shared::adapters::faults::injected_failures();
    let t = TestServer::start(
        Options {
            patients: 80,
            ..Options::default()
        }
        .env("FHIR_EXPORT_FAULTS", "object-store-errors=0.1")
        .env("FHIR_EXPORT_CHUNK_BYTES", "20000")
        .env("FHIR_EXPORT_PACK_BYTES", "0"),
    )
    .await;
    let source = read_source(t.source_dir());
    let all: Vec<&str> = source.keys().map(String::as_str).collect();
    for (path, query, types) in [
        ("/$export", "", all.clone()),
        (
            "/$export",
            "_type=Observation,Patient",
            vec!["Observation", "Patient"],
        ),
        (
            "/$export",
            "includeAssociatedData=LatestProvenanceResources&_type=Patient,Provenance",
            vec!["Patient"],
        ),
    ] {
        let status = t.start_export(path, query).await;
        let manifest = t.manifest(&status).await;
        let got = t.download(&manifest, "output").await;
        assert_exactly_once(&got, &source, &types);
        assert_eq!(manifest["error"], serde_json::json!([]), "{query}");
    }
    let injected = shared::adapters::faults::injected_failures() - before;
    println!("store calls failed on purpose: {injected}");
    assert!(injected > 50, "only {injected} faults injected");
    t.server.stop().await;
}

#[tokio::test]
async fn exports_complete_with_every_message_delivered_twice() {
    let t = TestServer::start(
        Options {
            patients: 40,
            ..Options::default()
        }
        .env("FHIR_EXPORT_FAULTS", "duplicate-delivery")
        .env("FHIR_EXPORT_CHUNK_BYTES", "50000"),
    )
    .await;
    let source = read_source(t.source_dir());
    let all: Vec<&str> = source.keys().map(String::as_str).collect();
    let status = t.start_export("/$export", "").await;
    let got = t.download(&t.manifest(&status).await, "output").await;
    assert_exactly_once(&got, &source, &all);
    // Phases (Provenance chosen by association) and map/reduce (organized output).
    let status = t
        .start_export(
            "/Patient/$export",
            "includeAssociatedData=RelevantProvenanceResources&_type=Patient,Condition",
        )
        .await;
    let first = counts(&t.manifest(&status).await);
    let status = t
        .start_export(
            "/Patient/$export",
            "includeAssociatedData=RelevantProvenanceResources&_type=Patient,Condition",
        )
        .await;
    assert_eq!(
        counts(&t.manifest(&status).await),
        first,
        "same answer twice"
    );
    assert_eq!(first["Patient"], source["Patient"].len() as u64);
    let status = t
        .start_export(
            "/Patient/$export",
            "organizeOutputBy=Patient&_type=Patient,Observation",
        )
        .await;
    let manifest = t.manifest(&status).await;
    let lines = t.download_any(&manifest).await;
    let ids: HashSet<String> = lines
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ids.len(), lines.len(), "no resource twice");
    assert_eq!(
        lines.len(),
        source["Patient"].len() + source["Observation"].len()
    );
    t.server.stop().await;
}

/// The output store, refusing for good what it is asked to refuse.
struct Refusing {
    inner: Arc<dyn ObjectStore>,
    /// Writers' `finish` is refused (a disk that filled up).
    writes: Option<Refusal>,
    /// `put` is refused (a read-only output).
    puts: Option<Refusal>,
}

struct RefusingWriter {
    inner: Box<dyn ObjectWriter>,
    key: String,
    reason: Refusal,
}

fn refused(key: &str, reason: Refusal) -> ObjectError {
    ObjectError::Refused {
        key: key.to_owned(),
        reason,
        source: format!("{reason} (simulated)").into(),
    }
}

#[async_trait]
impl ObjectWriter for RefusingWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError> {
        self.inner.write(data).await
    }
    async fn finish(self: Box<Self>) -> Result<u64, ObjectError> {
        let _ = self.inner.abort().await;
        Err(refused(&self.key, self.reason))
    }
    async fn abort(self: Box<Self>) -> Result<(), ObjectError> {
        self.inner.abort().await
    }
}

#[async_trait]
impl StoreWrapper for Refusing {
    fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        match self.puts {
            Some(r) => Err(refused(key, r)),
            None => self.inner.put(key, data).await,
        }
    }
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        let inner = self.inner.encoded_writer(key, encoding).await?;
        Ok(match self.writes {
            Some(reason) => Box::new(RefusingWriter {
                inner,
                key: key.to_owned(),
                reason,
            }),
            None => inner,
        })
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_export_at_once_and_says_so() {
    let mut opts = Options {
        patients: 10,
        ..Options::default()
    };
    opts.wrap.output = Some(Wrap::new(|inner| {
        Arc::new(Wrapped(Refusing {
            inner,
            writes: Some(Refusal::StorageFull),
            puts: None,
        }))
    }));
    let t = TestServer::start(opts).await;
    let started = Instant::now();
    let status = t.start_export("/$export", "").await;
    let resp = t.wait(&status).await;
    assert_eq!(resp.status(), 500);
    // At once: not after five deliveries with back-off (1 + 2 + 4 + 8 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let oo: Value = resp.json().await.unwrap();
    let text = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("no space left"), "{text}");
    assert_eq!(t.job(&status).await.recoveries, 0);
    t.server.stop().await;
}

#[tokio::test]
async fn a_read_only_output_stops_the_server_at_start_with_the_reason() {
    let state = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(state.path());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = 0;
    config.wrap.output = Some(Wrap::new(|inner| {
        Arc::new(Wrapped(Refusing {
            inner,
            writes: Some(Refusal::ReadOnly),
            puts: Some(Refusal::ReadOnly),
        }))
    }));
    let Err(e) = fhir_export::serve::start(config).await else {
        panic!("the server started on an output it cannot write");
    };
    assert!(matches!(e, ServeError::OutputUnwritable { .. }), "{e}");
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[tokio::test]
async fn an_expired_export_leaves_nothing_in_the_output() {
    let t = TestServer::start(
        Options {
            patients: 10,
            ..Options::default()
        }
        .env("FHIR_EXPORT_RETENTION_SECS", "1"),
    )
    .await;
    let status = t.start_export("/Group/small-cohort/$export", "").await;
    let manifest = t.manifest(&status).await;
    assert!(!manifest["output"].as_array().unwrap().is_empty());
    let id = job_id(&status);
    let folder = t.output_dir().join(id.as_str());
    assert!(folder.exists());
    // The sweep runs every second here.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.http.get(&status).send().await.unwrap().status() != 404 {
        assert!(Instant::now() < deadline, "the export did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for left in [folder, t.output_dir().join(".staging").join(id.as_str())] {
        assert!(!left.exists(), "{left:?} outlived its export");
    }
    let entries: Vec<String> = std::fs::read_dir(t.output_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".tmp" && n != ".staging")
        .collect();
    assert!(entries.is_empty(), "left in the output: {entries:?}");
    t.server.stop().await;
}

#[tokio::test]
async fn a_small_export_is_not_held_up_by_a_large_one() {
    let mut opts = Options {
        patients: 100,
        workers: 1,
        ..Options::default()
    }
    // The large export in many chunks, each a few batches' time.
    .env("FHIR_EXPORT_CHUNK_BYTES", "30000")
    .env("FHIR_EXPORT_PACK_BYTES", "0");
    opts.wrap.source = Some(Wrap::new(|inner| {
        Arc::new(Wrapped(SlowSource {
            inner,
            delay: Duration::from_millis(5),
            batches: Default::default(),
        }))
    }));
    let t = TestServer::start(opts).await;
    let large = t.start_export("/$export", "").await;
    // The large export is under way: its chunks fill the queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = t.job(&large).await;
        if job.chunks_done >= 2 {
            assert!(job.chunks_total > 50, "{} chunks", job.chunks_total);
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let small = t.start_export("/$export", "_type=Organization").await;
    let manifest = t.manifest(&small).await;
    assert_eq!(counts(&manifest)["Organization"], 1);
    let job = t.job(&large).await;
    assert!(
        job.chunks_done < job.chunks_total,
        "the small export waited for the large one ({} of {} chunks done)",
        job.chunks_done,
        job.chunks_total
    );
    // and the large one is none the worse for it
    let got = t.download(&t.manifest(&large).await, "output").await;
    let source = read_source(t.source_dir());
    assert_exactly_once(
        &got,
        &source,
        &source.keys().map(String::as_str).collect::<Vec<_>>(),
    );
    t.server.stop().await;
}

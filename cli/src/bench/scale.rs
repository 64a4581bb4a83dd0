//! `fhir-export bench --scale N`: a system export of N resources planned for real, over a
//! source that only lists files with their sizes (no data is written): the chunks the plan
//! makes, the job-store items and work messages it writes and their largest sizes against
//! DynamoDB's 400 KB and SQS's 256 KB, the manifest's size and pages, the writes every chunk
//! makes to the job's partition (one partition key per job on DynamoDB: its limit is 1,000
//! writes/s), and wall-time estimates at 100, 500 and 1,000 workers from a per-chunk time
//! measured on this machine (one core, as a 1,769 MB Lambda has).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use shared::adapters::local_fs::LocalFsStore;
use shared::adapters::ndjson_source::NdjsonSource;
use shared::adapters::sqlite::{SqliteDb, SqliteJobStore, SqliteQueue};
use shared::http::{Caller, KickoffState, kickoff_router};
use shared::ports::{
    ByteStream, Delivery, JobStore, NoEvents, ObjectError, ObjectMeta, ObjectStore, ObjectWriter,
    PEEK_REUSE, QueueError, WorkQueue,
};
use shared::settings::Settings;
use shared::worker::{NoLease, WorkerDeps, handle_message};
use tower::ServiceExt;

use super::BenchError;

/// DynamoDB's item limit and SQS's message limit.
pub const DYNAMODB_ITEM_LIMIT: usize = 400 * 1024;
pub const SQS_MESSAGE_LIMIT: usize = 256 * 1024;
/// Writes per second one DynamoDB partition key takes.
pub const PARTITION_WRITES_PER_SEC: f64 = 1000.0;

/// A typical mix of a clinical source (Synthea-like): type, share of resources, mean bytes.
const MIX: &[(&str, f64, u64)] = &[
    ("Observation", 0.55, 1_300),
    ("Encounter", 0.08, 1_600),
    ("Procedure", 0.06, 1_100),
    ("DiagnosticReport", 0.06, 2_500),
    ("MedicationRequest", 0.05, 1_800),
    ("Claim", 0.05, 2_500),
    ("ExplanationOfBenefit", 0.05, 6_000),
    ("Condition", 0.04, 1_000),
    ("Immunization", 0.03, 900),
    ("Provenance", 0.02, 1_500),
    ("Patient", 0.01, 5_000),
];
/// Files of the synthetic source are at most this big.
const FILE_BYTES: u64 = 1 << 30;

/// A source store that lists files and holds no bytes.
struct Listing(Vec<ObjectMeta>);

fn listing_only(key: &str) -> ObjectError {
    ObjectError::backend(key, "a listing-only store for planning holds no bytes")
}

#[async_trait]
impl ObjectStore for Listing {
    async fn put(&self, key: &str, _: Bytes) -> Result<(), ObjectError> {
        Err(listing_only(key))
    }
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        Err(listing_only(key))
    }
    async fn read(&self, key: &str, _: u64, _: Option<u64>) -> Result<ByteStream, ObjectError> {
        Err(listing_only(key))
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        Ok(self.0.iter().find(|m| m.key == key).cloned())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        Ok(self
            .0
            .iter()
            .filter(|m| m.key.starts_with(prefix))
            .cloned()
            .collect())
    }
    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        Err(listing_only(key))
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        Err(listing_only(prefix))
    }
    async fn rename(&self, from: &str, _: &str) -> Result<(), ObjectError> {
        Err(listing_only(from))
    }
    fn describe(&self) -> String {
        format!("a listing of {} files", self.0.len())
    }
}

/// Counts what goes through a queue, and the largest body.
struct Counted {
    inner: Arc<dyn WorkQueue>,
    messages: AtomicU64,
    largest: AtomicUsize,
}

#[async_trait]
impl WorkQueue for Counted {
    async fn send(&self, group: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        self.messages
            .fetch_add(bodies.len() as u64, Ordering::Relaxed);
        for b in &bodies {
            self.largest.fetch_max(b.len(), Ordering::Relaxed);
        }
        self.inner.send(group, bodies).await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend(receipt, visibility).await
    }
}

/// What planning an export of `resources` resources makes.
#[derive(Debug, Clone)]
pub struct ScaleFigures {
    pub resources: u64,
    pub source_bytes: u64,
    pub source_files: usize,
    pub chunks: usize,
    /// The job item (its JSON document and key attributes), bytes.
    pub job_item_bytes: usize,
    /// The largest chunk item, with the result and published names a completed chunk adds
    /// (estimated from one file per type it reads), bytes.
    pub largest_chunk_item_bytes: usize,
    pub messages: u64,
    pub largest_message_bytes: usize,
    /// Files the manifest will list, its size and its pages.
    pub manifest_files: usize,
    pub manifest_bytes: usize,
    pub manifest_pages: usize,
    pub largest_page_bytes: usize,
    /// Writes to the job's partition key per completed chunk (DynamoDB adapter).
    pub partition_writes_per_chunk: f64,
    pub chunk_bytes: u64,
    /// Writes to the job's item per completed chunk: 1 when every chunk counts on it, 1/32
    /// when chunks count in groups (see `CountGroup`).
    pub job_item_writes_per_chunk: f64,
    /// Chunks in count groups, of all: a chunk of a group asks its group's item whether the
    /// job was stopped (after it published, and once a second while it runs), one outside
    /// any group the job's item. Every chunk's first look is at the job's item, eventually
    /// consistent and answered again by the process for `PEEK_REUSE`.
    pub grouped_share: f64,
    /// Chunks of the largest count group: a group item takes at most this many writes per
    /// chunk-time.
    pub largest_group: u32,
    /// Writes per chunk to the busiest file-number counter (`COUNTER#<type>`): only files the
    /// plan did not number take numbers from it.
    pub counter_writes_per_chunk: f64,
}

/// DynamoDB's per-item limits: 1,000 write units and 3,000 read units a second; a write unit
/// is 1 KB of the item, a (strongly consistent) read unit 4 KB.
pub const ITEM_WRITE_UNITS_PER_SEC: f64 = 1000.0;
pub const ITEM_READ_UNITS_PER_SEC: f64 = 3000.0;

/// Bytes a manifest entry takes (`{"type":...,"url":".../files/Observation-12345.ndjson","count":...}`).
const MANIFEST_ENTRY_BYTES: usize = 160;
/// A completed chunk's result and published names, per file, in its item.
const RESULT_BYTES_PER_FILE: usize = 420;
/// Key attributes and attribute names of an item.
const ITEM_OVERHEAD: usize = 200;

/// Plans a system export of `resources` synthetic resources with the real planner.
pub async fn plan_at_scale(
    resources: u64,
    dir: &std::path::Path,
) -> Result<ScaleFigures, BenchError> {
    let mut files = Vec::new();
    let mut source_bytes = 0;
    for (t, share, mean) in MIX {
        let bytes = ((resources as f64) * share) as u64 * mean;
        source_bytes += bytes;
        let n = bytes.div_ceil(FILE_BYTES).max(1);
        for i in 0..n {
            let size = (bytes - i * FILE_BYTES).min(FILE_BYTES);
            files.push(ObjectMeta {
                key: format!("{t}-{:05}.ndjson", i + 1),
                size,
            });
        }
    }
    let source_files = files.len();
    let source = Arc::new(NdjsonSource::new(Arc::new(Listing(files)), ""));
    let db = SqliteDb::open(&dir.join("scale.sqlite"))
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    let jobs: Arc<dyn JobStore> = Arc::new(SqliteJobStore::new(db.clone()));
    let queue = Arc::new(Counted {
        inner: Arc::new(SqliteQueue::new(db, "work", Duration::from_secs(300))),
        messages: AtomicU64::new(0),
        largest: AtomicUsize::new(0),
    });
    let settings = Arc::new(Settings::new("https://fhir.example.org/fhir"));
    let output = Arc::new(
        LocalFsStore::new(dir.join("out")).map_err(|e| BenchError::Protocol(e.to_string()))?,
    );
    let deps = WorkerDeps {
        jobs: jobs.clone(),
        queue: queue.clone(),
        output,
        source,
        settings: settings.clone(),
        events: Arc::new(NoEvents),
    };
    let router = kickoff_router(KickoffState::of_worker(&deps));
    let mut req = axum::http::Request::get("/$export")
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .body(axum::body::Body::empty())
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    req.extensions_mut().insert(Caller::anonymous());
    let resp = router
        .oneshot(req)
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    let location = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| BenchError::Protocol(format!("kick-off answered {}", resp.status())))?;
    let id = shared::model::JobId::parse(location.rsplit('/').next().unwrap_or_default())
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    // The plan message, handled as a worker would.
    let plan = queue
        .receive(1, Duration::from_secs(1))
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    for d in plan {
        handle_message(&deps, &d.body, &NoLease)
            .await
            .map_err(|e| BenchError::Protocol(shared::error_chain(&e)))?;
    }
    let job = jobs
        .get(&id)
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))?
        .ok_or_else(|| BenchError::Protocol("the job vanished".into()))?;
    let chunks = jobs
        .chunks(&id)
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    let job_item_bytes = serde_json::to_string(&job).map_or(0, |s| s.len()) + ITEM_OVERHEAD;
    let mut largest_chunk_item_bytes = 0;
    let mut manifest_files = 0;
    let mut page_sizes: Vec<usize> = Vec::new();
    let page_chunks = job.plan.page_chunks.max(1) as usize;
    for (i, c) in chunks.iter().enumerate() {
        let files = 1 + c.spec.packed.len();
        let spec = serde_json::to_string(&c.spec).map_or(0, |s| s.len());
        largest_chunk_item_bytes =
            largest_chunk_item_bytes.max(spec + files * RESULT_BYTES_PER_FILE + ITEM_OVERHEAD);
        manifest_files += files;
        let page = i / page_chunks;
        if page_sizes.len() <= page {
            page_sizes.push(0);
        }
        page_sizes[page] += files * MANIFEST_ENTRY_BYTES;
    }
    // Per chunk, under the job's partition key: its result, the count (on its group, and the
    // group's last on the job), a number from a counter for each file the plan did not
    // number, its published names, the rename mark, its usage record.
    let n = chunks.len().max(1) as f64;
    let groups: std::collections::BTreeSet<u32> = chunks
        .iter()
        .filter_map(|c| c.spec.group.map(|g| g.id))
        .collect();
    let ungrouped = chunks.iter().filter(|c| c.spec.group.is_none()).count();
    let largest_group = chunks
        .iter()
        .filter_map(|c| c.spec.group.map(|g| g.size))
        .max()
        .unwrap_or(0);
    let mut unnumbered: std::collections::BTreeMap<String, u64> = Default::default();
    for c in &chunks {
        for (i, (t, _)) in c.spec.reads().enumerate() {
            if c.spec.numbers.get(i).is_none() {
                *unnumbered.entry(t.to_string()).or_default() += 1;
            }
        }
    }
    let counter_writes = unnumbered.values().sum::<u64>() as f64;
    let group_writes = chunks.len() - ungrouped;
    let per_chunk = (chunks.len() * 4 + group_writes + groups.len() + ungrouped) as f64 / n
        + counter_writes / n;
    Ok(ScaleFigures {
        resources,
        source_bytes,
        source_files,
        chunks: chunks.len(),
        job_item_bytes,
        largest_chunk_item_bytes,
        messages: queue.messages.load(Ordering::Relaxed),
        largest_message_bytes: queue.largest.load(Ordering::Relaxed),
        manifest_files,
        manifest_bytes: page_sizes.iter().sum(),
        manifest_pages: page_sizes.len(),
        largest_page_bytes: page_sizes.iter().copied().max().unwrap_or(0),
        partition_writes_per_chunk: per_chunk,
        chunk_bytes: settings.chunk_bytes,
        job_item_writes_per_chunk: (groups.len() + ungrouped) as f64 / n,
        grouped_share: (chunks.len() - ungrouped) as f64 / n,
        largest_group,
        counter_writes_per_chunk: unnumbered.values().copied().max().unwrap_or(0) as f64 / n,
    })
}

impl ScaleFigures {
    /// Writes per second on the job's partition with `workers` chunks running at once, each
    /// taking `chunk_secs`.
    pub fn partition_writes_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        workers as f64 / chunk_secs.max(1e-9) * self.partition_writes_per_chunk
    }

    /// Chunks completed per second with `workers` at once, each taking `chunk_secs`.
    fn completions_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        workers.min(self.chunks as u64) as f64 / chunk_secs.max(1e-9)
    }

    /// Write units a second on the job's item (each write is billed on the whole item).
    pub fn job_item_write_units_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        self.completions_per_sec(workers, chunk_secs)
            * self.job_item_writes_per_chunk
            * self.job_item_bytes.div_ceil(1024) as f64
    }

    /// Read units a second on the job's item: the first looks (half a unit each, at most one
    /// per worker and `PEEK_REUSE`), and the stop checks of chunks outside any group.
    pub fn job_item_read_units_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        let completions = self.completions_per_sec(workers, chunk_secs);
        let peeks = completions.min(workers as f64 / PEEK_REUSE.as_secs_f64()) * 0.5;
        let checks = completions * (1.0 - self.grouped_share) * (1.0 + chunk_secs.floor());
        (peeks + checks) * self.job_item_bytes.div_ceil(4096) as f64
    }

    /// Reads a second on one group's item (a read unit each: the item is a few bytes): each
    /// of its chunks running at once asks after publishing and once a second while it runs.
    pub fn group_item_reads_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        self.group_item_writes_per_sec(workers, chunk_secs) * (1.0 + chunk_secs.floor())
    }

    /// Writes a second on one group's item: its chunks are at most `largest_group` at once,
    /// whatever the number of workers.
    pub fn group_item_writes_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        let at_once = workers.min(u64::from(self.largest_group)) as f64;
        at_once / chunk_secs.max(1e-9)
    }

    /// Writes a second on the busiest file-number counter.
    pub fn counter_writes_per_sec(&self, workers: u64, chunk_secs: f64) -> f64 {
        self.completions_per_sec(workers, chunk_secs) * self.counter_writes_per_chunk
    }

    /// Wall time of the chunks with `workers` running at once, each taking `chunk_secs`.
    pub fn wall_secs(&self, workers: u64, chunk_secs: f64) -> f64 {
        (self.chunks as f64 / workers.max(1) as f64).ceil() * chunk_secs
    }
}

/// Seconds one worker takes for a chunk of `chunk_bytes`, measured: a one-worker export of
/// generated data on this machine.
async fn measured_chunk_secs(dir: &std::path::Path, chunk_bytes: u64) -> Result<f64, BenchError> {
    let data = dir.join("scale-sample");
    if !data.join(".complete").exists() {
        crate::synth::generate(
            &crate::synth::GenOptions {
                patients: 2_000,
                ..Default::default()
            },
            &data,
        )?;
        std::fs::write(data.join(".complete"), "")?;
    }
    let bytes: u64 = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let state = tempfile_dir(dir, "scale-state")?;
    let mut config = crate::serve::ServeConfig::new(&state);
    config.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.source = Some(data.display().to_string());
    config.workers = 1;
    let server = crate::serve::start(config)
        .await
        .map_err(|e| BenchError::Protocol(shared::error_chain(&e)))?;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let resp = http
        .get(format!("{}/$export", server.base_url))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await?;
    let status_url = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    loop {
        let r = http.get(&status_url).send().await?;
        if r.status() == 200 {
            break;
        }
        if r.status() != 202 {
            return Err(BenchError::Protocol(format!("status {}", r.status())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    server.stop().await;
    let _ = std::fs::remove_dir_all(&state);
    Ok(secs / bytes.max(1) as f64 * chunk_bytes as f64)
}

fn tempfile_dir(dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf, BenchError> {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

pub async fn run(args: &super::BenchArgs, resources: u64) -> Result<(), BenchError> {
    let work = tempfile_dir(&args.dir, "scale-plan")?;
    let started = std::time::Instant::now();
    let f = plan_at_scale(resources, &work).await?;
    let planned_in = started.elapsed();
    let chunk_secs = measured_chunk_secs(&args.dir, f.chunk_bytes).await?;
    let kb = |b: usize| format!("{:.1} KB", b as f64 / 1024.0);
    println!(
        "planning a system export of {} resources ({:.1} GB in {} files), planned in {:.1} s",
        f.resources,
        f.source_bytes as f64 / 1e9,
        f.source_files,
        planned_in.as_secs_f64()
    );
    println!("chunks: {} of up to {} MiB", f.chunks, f.chunk_bytes >> 20);
    println!(
        "job item: {} ; largest chunk item: {} (DynamoDB limit {}; margin {:.0}x)",
        kb(f.job_item_bytes),
        kb(f.largest_chunk_item_bytes),
        kb(DYNAMODB_ITEM_LIMIT),
        DYNAMODB_ITEM_LIMIT as f64 / f.job_item_bytes.max(f.largest_chunk_item_bytes).max(1) as f64
    );
    println!(
        "messages sent by the plan: {} ; largest: {} bytes (SQS limit {})",
        f.messages,
        f.largest_message_bytes,
        kb(SQS_MESSAGE_LIMIT)
    );
    println!(
        "manifest: {} files, {:.1} MB in {} pages (largest {})",
        f.manifest_files,
        f.manifest_bytes as f64 / 1e6,
        f.manifest_pages,
        kb(f.largest_page_bytes)
    );
    println!(
        "per chunk: {:.2} s measured ({:.1} MB/s on one core); {:.1} writes to the job's partition",
        chunk_secs,
        f.chunk_bytes as f64 / chunk_secs / 1e6,
        f.partition_writes_per_chunk
    );
    println!(
        "per chunk: {:.3} writes on the job's item ({}); {:.0} % of chunks in groups of at most {} chunks; {:.3} writes on the busiest file counter",
        f.job_item_writes_per_chunk,
        kb(f.job_item_bytes),
        f.grouped_share * 100.0,
        f.largest_group,
        f.counter_writes_per_chunk
    );
    println!(
        "per item and second (DynamoDB: 1,000 write units, 3,000 read units), at the measured chunk time and at 0.5 s (S3-bound):"
    );
    println!(
        "workers | chunk s | chunks' wall time | partition writes/s | job item WCU/s | job item RCU/s | group item writes/s | group item reads/s | counter writes/s"
    );
    for t in [chunk_secs, 0.5] {
        for w in [100u64, 500, 1000] {
            println!(
                "{w:>7} | {t:>7.2} | {:>15.0} s | {:>18.0} | {:>14.0} | {:>14.0} | {:>19.0} | {:>18.0} | {:>16.0}",
                f.wall_secs(w, t),
                f.partition_writes_per_sec(w, t),
                f.job_item_write_units_per_sec(w, t),
                f.job_item_read_units_per_sec(w, t),
                f.group_item_writes_per_sec(w, t),
                f.group_item_reads_per_sec(w, t),
                f.counter_writes_per_sec(w, t),
            );
        }
    }
    Ok(())
}

//! `fhir-export bench`: export throughput and memory at several sizes, beside a raw copy of the
//! same source bytes measured in the same run.
//!
//! For each size the command generates a dataset (kept for the next run), copies its files as
//! they are (the baseline: the fastest an export could possibly write them), then runs the real
//! server as a child process (`fhir-export serve`) and times two system exports from kick-off
//! to manifest: pass-through (no per-resource filter) and filtered (`_typeFilter` on the large
//! types and `_elements` on all). Each server runs the export once before the run that is
//! timed, as a server that has been up for a while (or a warm Lambda) would. Peak RSS is the
//! server process's `VmHWM` over both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::synth::{GenOptions, generate};

#[cfg(feature = "azure")]
mod azure;
mod compression;
mod filters;
mod latency;
pub mod scale;
#[cfg(feature = "fhir-server")]
mod upstream;
#[cfg(feature = "aws")]
mod usage;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Dataset sizes, in resources (about 40 per generated patient).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<u64>,
    /// Where datasets and outputs live (datasets are reused between runs).
    #[arg(long, default_value = "fhir-export-bench")]
    pub dir: PathBuf,
    /// Worker tasks of the server, and threads of the raw copy.
    #[arg(long, default_value_t = 4)]
    pub workers: u16,
    /// Time each server's first export instead of its second (a cold process).
    #[arg(long)]
    pub cold: bool,
    /// Rounds per size (copy, export, filtered export); each figure is the median round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub rounds: u16,
    /// Measure compression instead: exports with files stored as they are and stored gzipped,
    /// the bytes stored, and the bytes sent to clients with and without gzip.
    #[arg(long)]
    pub compression: bool,
    /// Measure large `_typeFilter`s instead: 100,000 codes in one query, 5,000 queries,
    /// against the same export unfiltered.
    #[arg(long)]
    pub filters: bool,
    /// Measure how long a small export takes while a large one runs, against alone.
    #[arg(long)]
    pub latency: bool,
    /// Measure exports to Azure Blob Storage (Azurite at `AZURITE_BLOB_STORAGE_URL`) against
    /// a local folder and a raw upload of the same bytes (needs the `azure` feature).
    #[arg(long)]
    pub azure: bool,
    /// Measure exports from a FHIR server (its base URL; a Helios FHIR Server, say): the
    /// dataset is loaded into it, then our export through the upstream source (1, 2 and 4
    /// workers) is timed against one client paging every type, and against the server's own
    /// `$export` when it has one (needs the `fhir-server` feature).
    #[arg(long, value_name = "URL")]
    pub fhir_server: Option<String>,
    /// Plan a system export of this many synthetic resources (a listing with sizes, no data)
    /// and report its chunks, store items, messages, manifest, writes per partition and wall
    /// time at 100, 500 and 1,000 workers (`docs/cost.md`).
    #[arg(long, value_name = "RESOURCES")]
    pub scale: Option<u64>,
    /// Measure what exports use and cost: each size exported on the AWS adapters against
    /// moto (`AWS_ENDPOINT_URL`) and on the embedded defaults, their usage records priced as
    /// `fhir-export cost` prices them (needs the `aws` feature; `docs/cost.md`).
    #[arg(long)]
    pub usage: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("I/O")]
    Io(#[from] std::io::Error),
    #[error("HTTP")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct Measure {
    pub seconds: f64,
    pub peak_rss: u64,
    pub exported: u64,
}

#[derive(Debug, Clone)]
pub struct BenchRow {
    pub resources: u64,
    pub source_bytes: u64,
    /// The baseline: a user-space read/write copy of the source files.
    pub raw_copy_seconds: f64,
    /// For reference: a kernel-side copy (`copy_file_range`).
    pub kernel_copy_seconds: f64,
    pub pass_through: Measure,
    pub filtered: Measure,
}

/// The filtered export: filters on the three largest types, `_elements` on every type.
pub const FILTERED_QUERY: &str = "_typeFilter=Observation%3Fstatus%3Dfinal%26date%3Dge2005,Encounter%3Fclass%3DAMB%2CEMER,Condition%3Fclinical-status%3Dactive&_elements=status,subject,code,patient";

pub async fn run(args: BenchArgs) -> Result<Vec<BenchRow>, BenchError> {
    std::fs::create_dir_all(&args.dir)?;
    if args.compression {
        compression::run(&args).await?;
        return Ok(Vec::new());
    }
    if args.filters {
        filters::run(&args).await?;
        return Ok(Vec::new());
    }
    if args.latency {
        latency::run(&args).await?;
        return Ok(Vec::new());
    }
    if let Some(n) = args.scale {
        scale::run(&args, n).await?;
        return Ok(Vec::new());
    }
    if let Some(url) = &args.fhir_server {
        #[cfg(feature = "fhir-server")]
        {
            upstream::run(&args, url).await?;
            return Ok(Vec::new());
        }
        #[cfg(not(feature = "fhir-server"))]
        return Err(BenchError::Protocol(format!(
            "--fhir-server {url} needs a build with the `fhir-server` feature"
        )));
    }
    if args.usage {
        #[cfg(feature = "aws")]
        {
            usage::run(&args).await?;
            return Ok(Vec::new());
        }
        #[cfg(not(feature = "aws"))]
        return Err(BenchError::Protocol(
            "--usage needs a build with the `aws` feature".into(),
        ));
    }
    if args.azure {
        #[cfg(feature = "azure")]
        {
            azure::run(&args).await?;
            return Ok(Vec::new());
        }
        #[cfg(not(feature = "azure"))]
        return Err(BenchError::Protocol(
            "--azure needs a build with the `azure` feature".into(),
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cores} cores, {} ; workers {} ; timed export: each server's {}",
        std::env::consts::ARCH,
        args.workers,
        if args.cold {
            "first (cold)"
        } else {
            "second (warm)"
        }
    );
    let mut rows = Vec::new();
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, source_bytes) = dataset(&data, *size).await?;
        let copy_dir = args.dir.join("raw-copy");
        let threads = usize::from(args.workers);
        // Rounds interleaved so that the disk's write-back weather hits every measurement
        // alike; each figure is the median of its rounds.
        let mut raws = Vec::new();
        let mut kernels = Vec::new();
        let mut passes = Vec::new();
        let mut filters = Vec::new();
        for _ in 0..args.rounds {
            raws.push(raw_copy(&data, &copy_dir, threads, CopyMode::UserSpace).await?);
            kernels.push(raw_copy(&data, &copy_dir, threads, CopyMode::Kernel).await?);
            passes.push(export(&args, &data, "").await?);
            filters.push(export(&args, &data, FILTERED_QUERY).await?);
        }
        // Each round's copy and export ran back to back: their ratio shows the spread.
        let per_round: Vec<f64> = raws
            .iter()
            .zip(&passes)
            .map(|(raw, pass)| raw / pass.seconds)
            .collect();
        let raw = median(raws);
        let kernel = median(kernels);
        let pass = median_measure(passes);
        let filtered = median_measure(filters);
        let row = BenchRow {
            resources,
            source_bytes,
            raw_copy_seconds: raw,
            kernel_copy_seconds: kernel,
            pass_through: pass,
            filtered,
        };
        print_row(&row, cores.min(usize::from(args.workers)));
        let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_round.iter().copied().fold(0.0, f64::max);
        println!(
            "{:>9} pass-through vs raw copy, round by round: {lo:.2}x to {hi:.2}x",
            ""
        );
        rows.push(row);
    }
    if let [.., a, b] = rows.as_slice() {
        println!(
            "peak RSS growth {} -> {} resources: pass-through {:.2}x, filtered {:.2}x",
            a.resources,
            b.resources,
            b.pass_through.peak_rss as f64 / a.pass_through.peak_rss.max(1) as f64,
            b.filtered.peak_rss as f64 / a.filtered.peak_rss.max(1) as f64
        );
    }
    Ok(rows)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The run with the median time; peak RSS is the largest seen in any run.
fn median_measure(mut v: Vec<Measure>) -> Measure {
    let peak = v.iter().map(|m| m.peak_rss).max().unwrap_or(0);
    v.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut m = v.swap_remove(v.len() / 2);
    m.peak_rss = peak;
    m
}

pub(crate) fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn print_row(r: &BenchRow, cores: usize) {
    let raw_mbs = mib(r.source_bytes) / r.raw_copy_seconds;
    let pass_mbs = mib(r.source_bytes) / r.pass_through.seconds;
    let filt_rps = r.resources as f64 / r.filtered.seconds;
    println!(
        "{:>9} resources, {:>8.1} MiB | kernel copy {:>7.1} MiB/s | raw copy {:>7.1} MiB/s | pass-through {:>9.0} res/s {:>7.1} MiB/s = {:.2}x raw, peak RSS {:.1} MiB | filtered {:>9.0} res/s = {:>7.0} res/s/core (kept {}), peak RSS {:.1} MiB",
        r.resources,
        mib(r.source_bytes),
        mib(r.source_bytes) / r.kernel_copy_seconds,
        raw_mbs,
        r.resources as f64 / r.pass_through.seconds,
        pass_mbs,
        pass_mbs / raw_mbs,
        mib(r.pass_through.peak_rss),
        filt_rps,
        filt_rps / cores as f64,
        r.filtered.exported,
        mib(r.filtered.peak_rss),
    );
}

/// Generates (once) a dataset of about `size` resources; returns its resources and bytes.
pub(crate) async fn dataset(dir: &Path, size: u64) -> Result<(u64, u64), BenchError> {
    let marker = dir.join(".complete");
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Some((r, b)) = text.trim().split_once(' ')
        && let (Ok(r), Ok(b)) = (r.parse(), b.parse())
    {
        return Ok((r, b));
    }
    let opts = GenOptions {
        patients: (size / 40).max(2),
        ..GenOptions::default()
    };
    let d = dir.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || generate(&opts, &d))
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))??;
    let resources: u64 = summary.counts.values().sum();
    std::fs::write(&marker, format!("{resources} {}\n", summary.bytes))?;
    Ok((resources, summary.bytes))
}

/// How the baseline copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMode {
    /// `read` into a buffer and `write` it out: the bytes pass through the process once, as an
    /// export's must (it validates every line).
    UserSpace,
    /// `std::io::copy`, which Linux turns into `copy_file_range`: the kernel moves the bytes
    /// and the process never sees them. Shown for reference.
    Kernel,
}

/// Copies every file of `from` into `to` with `threads` threads; seconds taken.
async fn raw_copy(
    from: &Path,
    to: &Path,
    threads: usize,
    mode: CopyMode,
) -> Result<f64, BenchError> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)?;
    let files: Vec<PathBuf> = std::fs::read_dir(from)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads.max(1) {
        let mine: Vec<PathBuf> = files
            .iter()
            .skip(t)
            .step_by(threads.max(1))
            .cloned()
            .collect();
        let to = to.to_path_buf();
        handles.push(tokio::task::spawn_blocking(
            move || -> std::io::Result<()> {
                for f in mine {
                    let target = to.join(f.file_name().unwrap_or_default());
                    let mut r = std::fs::File::open(&f)?;
                    let mut w = std::fs::File::create(&target)?;
                    match mode {
                        CopyMode::Kernel => {
                            std::io::copy(&mut r, &mut w)?;
                        }
                        CopyMode::UserSpace => {
                            let mut buf = vec![0u8; 1024 * 1024];
                            loop {
                                let n = std::io::Read::read(&mut r, &mut buf)?;
                                if n == 0 {
                                    break;
                                }
                                std::io::Write::write_all(&mut w, &buf[..n])?;
                            }
                        }
                    }
                    w.sync_data()?;
                }
                Ok(())
            },
        ));
    }
    for h in handles {
        h.await.map_err(|e| BenchError::Protocol(e.to_string()))??;
    }
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(to)?;
    Ok(secs)
}

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A `fhir-export serve` child process on a fresh state folder.
pub(crate) struct Server {
    child: tokio::process::Child,
    pid: u32,
    pub base: String,
    state: PathBuf,
    pub http: reqwest::Client,
}

impl Server {
    /// Starts the server on `data`, with `env` added to its environment.
    pub(crate) async fn start(
        args: &BenchArgs,
        data: &Path,
        env: &[(&str, &str)],
    ) -> Result<Server, BenchError> {
        Self::start_with_output(args, data, env, None).await
    }

    /// As `start`, writing exports to `output` (a store URL) instead of the state folder.
    pub(crate) async fn start_with_output(
        args: &BenchArgs,
        data: &Path,
        env: &[(&str, &str)],
        output: Option<&str>,
    ) -> Result<Server, BenchError> {
        Self::start_on(args, data.as_os_str(), args.workers, env, output).await
    }

    /// A server on `source` (a folder or a source URL) with `workers` workers.
    pub(crate) async fn start_on(
        args: &BenchArgs,
        source: &std::ffi::OsStr,
        workers: u16,
        env: &[(&str, &str)],
        output: Option<&str>,
    ) -> Result<Server, BenchError> {
        let state = args.dir.join("state");
        let _ = std::fs::remove_dir_all(&state);
        let exe = std::env::current_exe()?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--source")
            .arg(source)
            .arg("--state")
            .arg(&state);
        if let Some(url) = output {
            command.args(["--output", url]);
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| BenchError::Protocol("no stderr".into()))?;
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let Some(line) = lines.next_line().await? else {
                return Err(BenchError::Protocol(
                    "server exited before it was ready".into(),
                ));
            };
            if let Some(rest) = line.split("FHIR base ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            pid,
            base,
            state,
            http: reqwest::Client::new(),
        })
    }

    /// One export: seconds from kick-off to manifest, and the manifest.
    pub(crate) async fn export(&self, query: &str) -> Result<(f64, serde_json::Value), BenchError> {
        let url = if query.is_empty() {
            format!("{}/$export", self.base)
        } else {
            format!("{}/$export?{query}", self.base)
        };
        run_once(&self.http, &url).await
    }

    pub(crate) fn peak_rss(&self) -> u64 {
        peak_rss(self.pid)
    }

    /// Where the server writes its exports.
    pub(crate) fn output_dir(&self) -> PathBuf {
        self.state.join("output")
    }

    pub(crate) async fn stop(mut self) -> Result<(), BenchError> {
        self.child.kill().await?;
        let _ = std::fs::remove_dir_all(&self.state);
        Ok(())
    }
}

/// Runs one export on a fresh server process; time from kick-off to manifest.
async fn export(args: &BenchArgs, data: &Path, query: &str) -> Result<Measure, BenchError> {
    let server = Server::start(args, data, &[]).await?;
    // A new process's first export also pays for its start (the blocking pool's threads,
    // allocator arenas, the database's first statements): 10-20 ms at 100k resources.
    if !args.cold {
        server.export(query).await?;
    }
    let (seconds, manifest) = server.export(query).await?;
    let peak_rss = server.peak_rss();
    let exported = exported(&manifest);
    server.stop().await?;
    Ok(Measure {
        seconds,
        peak_rss,
        exported,
    })
}

/// One export on a running server: seconds from kick-off to manifest, and the manifest.
async fn run_once(
    http: &reqwest::Client,
    url: &str,
) -> Result<(f64, serde_json::Value), BenchError> {
    run_request(http, http.get(url), Duration::from_millis(1)).await
}

/// The resources a manifest lists, over all its output files.
pub(crate) fn exported(manifest: &serde_json::Value) -> u64 {
    manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["count"].as_u64())
        .sum()
}

/// Sends a kick-off (a GET or a POST) with the Bulk Data headers; its status URL.
pub(crate) async fn kick_off(kickoff: reqwest::RequestBuilder) -> Result<String, BenchError> {
    let resp = kickoff
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await?;
    if resp.status() != 202 {
        return Err(BenchError::Protocol(format!(
            "kick-off answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        )));
    }
    Ok(resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

/// One export kicked off by `kickoff` (a GET or a POST), its status polled every `poll`:
/// seconds from kick-off to manifest.
pub(crate) async fn run_request(
    http: &reqwest::Client,
    kickoff: reqwest::RequestBuilder,
    poll: Duration,
) -> Result<(f64, serde_json::Value), BenchError> {
    let started = Instant::now();
    let status = kick_off(kickoff).await?;
    let manifest: serde_json::Value = loop {
        let resp = http.get(&status).send().await?;
        match resp.status().as_u16() {
            // Polled often so that the time measured is the export's, not the poll interval's.
            202 => tokio::time::sleep(poll).await,
            200 => break resp.json().await?,
            s => return Err(BenchError::Protocol(format!("status answered {s}"))),
        }
    };
    Ok((started.elapsed().as_secs_f64(), manifest))
}

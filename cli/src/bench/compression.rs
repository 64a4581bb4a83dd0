//! `fhir-export bench --compression`: what gzip saves and what it costs.
//!
//! For each size, servers with files stored as they are (`identity`) and stored gzipped
//! (`FHIR_EXPORT_OUTPUT_ENCODING=gzip`) each run a pass-through system export (timed, as in
//! the main bench), then every file of the manifest is downloaded twice through the files
//! route: without `Accept-Encoding` and with `Accept-Encoding: gzip`. Reported: export
//! throughput and its ratio to the identity export of the same round, the bytes stored, the
//! bytes sent each way, and the download times.

use std::path::Path;
use std::time::Instant;

use super::{BenchArgs, BenchError, Server, dataset, median, mib};

/// One server's figures for one round.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    export_seconds: f64,
    stored_bytes: u64,
    sent_plain: u64,
    plain_seconds: f64,
    sent_gzip: u64,
    gzip_seconds: f64,
}

const ENCODINGS: [&str; 2] = ["identity", "gzip"];

pub(super) async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    println!(
        "compression: exports stored as they are vs stored gzipped; downloads without and with Accept-Encoding: gzip"
    );
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, source_bytes) = dataset(&data, *size).await?;
        let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
        let mut ratios = Vec::new();
        for _ in 0..args.rounds {
            let mut this = [Round::default(); 2];
            for (i, encoding) in ENCODINGS.iter().enumerate() {
                this[i] = round(args, &data, encoding).await?;
            }
            ratios.push(this[0].export_seconds / this[1].export_seconds);
            for (i, r) in this.into_iter().enumerate() {
                rounds[i].push(r);
            }
        }
        println!(
            "{resources} resources, {:.1} MiB of NDJSON, {} rounds (medians):",
            mib(source_bytes),
            args.rounds
        );
        for (i, encoding) in ENCODINGS.iter().enumerate() {
            let m = |f: fn(&Round) -> f64| median(rounds[i].iter().map(f).collect());
            let export = m(|r| r.export_seconds);
            let stored = m(|r| r.stored_bytes as f64);
            let plain = m(|r| r.sent_plain as f64);
            let gzip = m(|r| r.sent_gzip as f64);
            println!(
                "  stored {encoding:>8}: export {:>7.1} MiB/s | stored {:>8.1} MiB ({:.2}x the NDJSON) | sent plain {:>8.1} MiB in {:.3} s | sent gzip {:>8.1} MiB ({:.2}x) in {:.3} s",
                mib(source_bytes) / export,
                stored / 1_048_576.0,
                stored / source_bytes as f64,
                plain / 1_048_576.0,
                m(|r| r.plain_seconds),
                gzip / 1_048_576.0,
                gzip / source_bytes as f64,
                m(|r| r.gzip_seconds),
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "  gzip-stored export throughput vs identity, same round: median {:.2}x ({:.2}x to {:.2}x)",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    Ok(())
}

async fn round(args: &BenchArgs, data: &Path, encoding: &str) -> Result<Round, BenchError> {
    let server = Server::start(args, data, &[("FHIR_EXPORT_OUTPUT_ENCODING", encoding)]).await?;
    if !args.cold {
        server.export("").await?;
    }
    let (export_seconds, manifest) = server.export("").await?;
    let urls: Vec<String> = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["url"].as_str().map(str::to_owned))
        .collect();
    let job = urls
        .first()
        .and_then(|u| u.split("/_export/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let stored_bytes = folder_bytes(&server.output_dir().join(&job))?;
    // Bodies counted as they come off the wire: no decompression on the client side.
    let raw = reqwest::Client::builder().no_gzip().build()?;
    let (sent_plain, plain_seconds) = download(&raw, &urls, None).await?;
    let (sent_gzip, gzip_seconds) = download(&raw, &urls, Some("gzip")).await?;
    server.stop().await?;
    Ok(Round {
        export_seconds,
        stored_bytes,
        sent_plain,
        plain_seconds,
        sent_gzip,
        gzip_seconds,
    })
}

/// Downloads every URL one after the other; bytes received and seconds taken.
async fn download(
    http: &reqwest::Client,
    urls: &[String],
    accept_encoding: Option<&str>,
) -> Result<(u64, f64), BenchError> {
    let started = Instant::now();
    let mut bytes = 0u64;
    for url in urls {
        let mut req = http.get(url);
        if let Some(e) = accept_encoding {
            req = req.header("Accept-Encoding", e);
        }
        let resp = req.send().await?;
        if resp.status() != 200 {
            return Err(BenchError::Protocol(format!(
                "{url} answered {}",
                resp.status()
            )));
        }
        bytes += resp.bytes().await?.len() as u64;
    }
    Ok((bytes, started.elapsed().as_secs_f64()))
}

/// Bytes of every file below `dir`.
fn folder_bytes(dir: &Path) -> Result<u64, BenchError> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

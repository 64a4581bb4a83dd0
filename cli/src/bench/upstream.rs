//! `fhir-export bench --fhir-server URL`: exports through the upstream FHIR server source
//! against the upstream's own paging rate, measured in the same round.
//!
//! The baseline is one client paging every type of the dataset from start to end
//! (`GET [type]?_count=1000`, then `next` links), one type after the other, reading every
//! body: what the server gives a plain reader. Our export then reads the same resources
//! through the upstream source (planning with `_summary=count` windows, one chunk per worker
//! at a time) and writes them to a local folder; it is timed from kick-off to manifest with
//! 1, 2 and 4 workers. The server's own `$export`, when it answers one, is timed from
//! kick-off to manifest too.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{BenchArgs, BenchError, Server, dataset, exported, median};

const LOAD_BATCH: usize = 1000;
const PAGE: u32 = 1000;

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Protocol(e.to_string())
}

pub(super) async fn run(args: &BenchArgs, base: &str) -> Result<(), BenchError> {
    let base = base.trim_end_matches('/');
    let http = reqwest::Client::new();
    println!(
        "fhir-server: exports through the upstream source from {base} vs one client paging it; rounds {}",
        args.rounds
    );
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, _) = dataset(&data, *size).await?;
        let types = load(&http, base, &data, resources).await?;
        let mut paging = Vec::new();
        let mut ours: [Vec<f64>; 3] = Default::default();
        let mut own = Vec::new();
        for _ in 0..args.rounds {
            let (seconds, n) = page_all(&http, base, &types).await?;
            if n != resources {
                return Err(BenchError::Protocol(format!(
                    "paging read {n} resources, the server holds {resources}"
                )));
            }
            paging.push(seconds);
            for (i, workers) in [1u16, 2, 4].into_iter().enumerate() {
                let server = Server::start_on(
                    args,
                    std::ffi::OsStr::new(base),
                    workers,
                    &[("FHIR_EXPORT_UPSTREAM_CONCURRENCY", "8")],
                    None,
                )
                .await?;
                if !args.cold {
                    server.export("").await?;
                }
                let (seconds, manifest) = server.export("").await?;
                server.stop().await?;
                if exported(&manifest) != resources {
                    return Err(BenchError::Protocol(format!(
                        "the export wrote {} resources, the server holds {resources}",
                        exported(&manifest)
                    )));
                }
                ours[i].push(seconds);
            }
            if let Some(seconds) = own_export(&http, base).await? {
                own.push(seconds);
            }
        }
        let page = median(paging.clone());
        println!("{resources} resources ({} types), medians:", types.len());
        println!(
            "  one client paging    {page:>7.3} s  {:>8.0} resources/s",
            resources as f64 / page
        );
        for (i, workers) in [1, 2, 4].into_iter().enumerate() {
            let t = median(ours[i].clone());
            println!(
                "  export, {workers} worker{}    {t:>7.3} s  {:>8.0} resources/s  {:.2}x the paging rate",
                if workers == 1 { " " } else { "s" },
                resources as f64 / t,
                page / t
            );
        }
        if own.is_empty() {
            println!("  the server's own $export: not offered");
        } else {
            let t = median(own);
            println!(
                "  the server's $export {t:>7.3} s  {:>8.0} resources/s  {:.2}x the paging rate",
                resources as f64 / t,
                page / t
            );
        }
    }
    Ok(())
}

/// Loads the dataset unless the server holds it already; the types it has.
async fn load(
    http: &reqwest::Client,
    base: &str,
    data: &Path,
    resources: u64,
) -> Result<Vec<String>, BenchError> {
    let mut files: Vec<_> = std::fs::read_dir(data)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    let mut types: Vec<String> = files
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .split(['-', '.'])
                .next()
                .map(str::to_owned)
        })
        .collect();
    types.sort();
    types.dedup();
    let mut held = 0;
    for t in &types {
        held += count(http, base, t).await?;
    }
    if held == resources {
        return Ok(types);
    }
    if held != 0 {
        return Err(BenchError::Protocol(format!(
            "{base} holds {held} resources, not the {resources} of this dataset: start it empty"
        )));
    }
    let started = Instant::now();
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    for f in &files {
        for line in std::fs::read_to_string(f)?.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Value = serde_json::from_str(line).map_err(failed)?;
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            batch.push(json!({"resource": r, "request": {"method": "PUT", "url": url}}));
            if batch.len() == LOAD_BATCH {
                put(http, base, std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        put(http, base, batch).await?;
    }
    println!(
        "  loaded {resources} resources in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(types)
}

async fn put(http: &reqwest::Client, base: &str, entries: Vec<Value>) -> Result<(), BenchError> {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let resp = http
        .post(base)
        .header("Content-Type", "application/fhir+json")
        .json(&bundle)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(BenchError::Protocol(format!(
            "loading: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        )));
    }
    Ok(())
}

async fn count(http: &reqwest::Client, base: &str, t: &str) -> Result<u64, BenchError> {
    let v: Value = http
        .get(format!("{base}/{t}?_summary=count"))
        .header("Accept", "application/fhir+json")
        .send()
        .await?
        .json()
        .await?;
    Ok(v["total"].as_u64().unwrap_or(0))
}

/// Every type paged to its end by one client; seconds and resources read.
async fn page_all(
    http: &reqwest::Client,
    base: &str,
    types: &[String],
) -> Result<(f64, u64), BenchError> {
    let started = Instant::now();
    let mut n = 0u64;
    for t in types {
        let mut url = Some(format!("{base}/{t}?_count={PAGE}&_sort=_lastUpdated"));
        while let Some(u) = url.take() {
            let body = http
                .get(&u)
                .header("Accept", "application/fhir+json")
                .send()
                .await?
                .bytes()
                .await?;
            let page: Value = serde_json::from_slice(&body).map_err(failed)?;
            n += page["entry"].as_array().map_or(0, |e| e.len() as u64);
            url = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned);
        }
    }
    Ok((started.elapsed().as_secs_f64(), n))
}

/// The server's own system `$export`, kick-off to manifest; `None` when it offers none.
async fn own_export(http: &reqwest::Client, base: &str) -> Result<Option<f64>, BenchError> {
    let started = Instant::now();
    let resp = http
        .get(format!("{base}/$export"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await?;
    if resp.status() != 202 {
        return Ok(None);
    }
    let Some(status) = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    loop {
        let r = http
            .get(&status)
            .header("Accept", "application/json")
            .send()
            .await?;
        match r.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(20)).await,
            200 => return Ok(Some(started.elapsed().as_secs_f64())),
            s => {
                return Err(BenchError::Protocol(format!(
                    "the server's own $export answered {s}"
                )));
            }
        }
    }
}

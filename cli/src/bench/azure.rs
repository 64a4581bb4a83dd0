//! `fhir-export bench --azure`: exports to Azure Blob Storage (Azurite) against the same
//! export to a local folder and against a raw upload of the source's bytes to Azurite, in
//! the same round.
//!
//! The raw upload is the ceiling: every source file sent as one `Put Blob` by as many tasks
//! as the server has workers, with the bytes read beforehand. The export reads, parses and
//! re-serialises every resource, stages chunk files as blocks and publishes them with a copy,
//! so it can only approach it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use shared::adapters::azure::settings::emulator_variables;
use shared::adapters::azure::{AzureLocation, AzureSettings, AzureStore};
use shared::ports::ObjectStore;

use super::{BenchArgs, BenchError, Server, dataset, median, mib};

#[derive(Debug, Clone, Copy, Default)]
struct Round {
    raw_upload: f64,
    to_azure: f64,
    to_folder: f64,
}

fn store(url: &str, location: &str) -> Result<AzureStore, BenchError> {
    let location =
        AzureLocation::parse(location).map_err(|e| BenchError::Protocol(e.to_string()))?;
    AzureStore::open(location, &AzureSettings::emulator(url))
        .map_err(|e| BenchError::Protocol(e.to_string()))
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Protocol(e.to_string())
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let url = std::env::var("AZURITE_BLOB_STORAGE_URL").map_err(|_| {
        BenchError::Protocol(
            "--azure needs Azurite: set AZURITE_BLOB_STORAGE_URL (see scripts/stand-ins.sh)".into(),
        )
    })?;
    println!(
        "azure: export to Azurite ({url}) vs the same export to a local folder vs a raw upload of the source files; {} workers",
        args.workers
    );
    let account = store(&url, "az://")?;
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, source_bytes) = dataset(&data, *size).await?;
        let mut rounds = Vec::new();
        for n in 0..args.rounds {
            let container = format!("bench-{}-{n}", std::process::id());
            account.create_container(&container).await.map_err(failed)?;
            let raw_upload = upload(&url, &container, &data, usize::from(args.workers)).await?;
            let to_azure = export(
                args,
                &data,
                &url,
                Some(&format!("az://{container}/exports")),
            )
            .await?;
            let to_folder = export(args, &data, &url, None).await?;
            account.delete_container(&container).await.map_err(failed)?;
            rounds.push(Round {
                raw_upload,
                to_azure,
                to_folder,
            });
        }
        let m = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let mibs = mib(source_bytes);
        println!(
            "{resources} resources, {mibs:.1} MiB of NDJSON, {} rounds (medians):",
            args.rounds
        );
        println!(
            "  raw upload to Azurite  {:>7.3} s  {:>7.1} MiB/s",
            m(|r| r.raw_upload),
            mibs / m(|r| r.raw_upload)
        );
        println!(
            "  export to Azurite      {:>7.3} s  {:>7.1} MiB/s  {:.2}x the raw upload (per round {})",
            m(|r| r.to_azure),
            mibs / m(|r| r.to_azure),
            m(|r| r.raw_upload / r.to_azure),
            spread(&rounds, |r| r.raw_upload / r.to_azure)
        );
        println!(
            "  export to a folder     {:>7.3} s  {:>7.1} MiB/s  Azurite export {:.2}x of it (per round {})",
            m(|r| r.to_folder),
            mibs / m(|r| r.to_folder),
            m(|r| r.to_folder / r.to_azure),
            spread(&rounds, |r| r.to_folder / r.to_azure)
        );
    }
    Ok(())
}

fn spread(rounds: &[Round], f: fn(&Round) -> f64) -> String {
    let mut v: Vec<f64> = rounds.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{lo:.2}x to {hi:.2}x"),
        _ => "-".into(),
    }
}

/// Every source file uploaded as one blob, `tasks` at once; seconds from the first byte sent.
async fn upload(url: &str, container: &str, data: &Path, tasks: usize) -> Result<f64, BenchError> {
    let store = Arc::new(store(url, &format!("az://{container}/raw"))?);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(data)? {
        let path = entry?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            files.push((name, Bytes::from(std::fs::read(&path)?)));
        }
    }
    let started = Instant::now();
    futures::stream::iter(files)
        .map(|(name, bytes)| {
            let store = store.clone();
            async move { store.put(&name, bytes).await.map_err(failed) }
        })
        .buffer_unordered(tasks.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// One timed export (after a warm-up one unless `--cold`) to `output`, or to the state folder.
async fn export(
    args: &BenchArgs,
    data: &Path,
    azurite: &str,
    output: Option<&str>,
) -> Result<f64, BenchError> {
    let vars = emulator_variables(azurite);
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with_output(args, data, &env, output).await?;
    if !args.cold {
        server.export("").await?;
    }
    let (seconds, _) = server.export("").await?;
    server.stop().await?;
    Ok(seconds)
}

//! `fhir-export bench --usage`: what a system export of each size uses, from its usage
//! record, and what that costs on Lambda (`fhir-export cost`'s price table). Each size runs
//! twice in the same round:
//!
//! - on the AWS adapters against moto server (`AWS_ENDPOINT_URL`; DynamoDB, SQS, S3 for the
//!   source and the output): the requests per service and the DynamoDB units are the ones an
//!   AWS deployment makes. Moto is a Python process on the same two cores, so the wall time
//!   of this run is not Lambda's.
//! - on the embedded defaults (SQLite, a local folder), on the same machine: the wall and CPU
//!   time of the same work without a store in the way.
//!
//! The Lambda compute of the cost is shown both ways: moto's wall time (high) and the local
//! one (low); on Lambda a chunk's time lies between, bounded by S3's throughput.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use shared::adapters::aws::s3::{S3Location, S3Store};
use shared::adapters::aws::sdk_config;
use shared::ports::ObjectStore;
use shared::usage::{self, Usage};

use super::{BenchArgs, BenchError, Server, dataset};
use crate::cost::{Model, US_EAST_1, estimate};

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Protocol(e.to_string())
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        return Err(BenchError::Protocol(
            "--usage needs moto: set AWS_ENDPOINT_URL (see scripts/stand-ins.sh)".into(),
        ));
    }
    let aws = sdk_config().await;
    let model = Model::default();
    println!(
        "usage: a system export per size and output encoding, on moto (AWS adapters, {} workers) and on the embedded defaults (1 worker); priced as `fhir-export cost` prices it (arm64, worker {} MB, us-east-1), egress = one download of every file",
        args.workers, model.worker_memory_mb
    );
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, source_bytes) = dataset(&data, *size).await?;
        for encoding in ["identity", "gzip"] {
            let env = [("FHIR_EXPORT_OUTPUT_ENCODING", encoding)];
            let (local, peak_rss) = local_usage(args, &data, &env).await?;
            let on_moto = moto_usage(args, &aws, &data, *size, &env).await?;
            // The record of moto's run, with the local run's time: the cheap end.
            let fast = Usage {
                wall_ms: local.wall_ms,
                cpu_ms: local.cpu_ms,
                max_wall_ms: local.max_wall_ms,
                max_cpu_ms: local.max_cpu_ms,
                ..on_moto.clone()
            };
            let with_egress = Model {
                egress_gb: on_moto.bytes_written as f64 / f64::from(1u32 << 30),
                ..model.clone()
            };
            let low = estimate(&fast, &with_egress, &US_EAST_1);
            let high = estimate(&on_moto, &with_egress, &US_EAST_1);
            let per_million = |usd: f64| usd * 1e6 / resources.max(1) as f64;
            let chunks = local.chunks.max(1) as f64;
            println!(
                "\n{resources} resources ({:.1} MB of NDJSON), output {encoding}: {:.1} MB written",
                source_bytes as f64 / 1e6,
                on_moto.bytes_written as f64 / 1e6
            );
            println!(
                "  worker: {} messages, {} chunks; local: wall {:.2} s, CPU {:.2} s ({:.3} s CPU a chunk, largest {:.3} s), peak RSS {:.1} MiB; moto: wall {:.2} s",
                on_moto.messages,
                on_moto.chunks,
                local.wall_ms as f64 / 1e3,
                local.cpu_ms as f64 / 1e3,
                local.cpu_ms as f64 / 1e3 / chunks,
                local.max_cpu_ms as f64 / 1e3,
                peak_rss as f64 / f64::from(1u32 << 20),
                on_moto.wall_ms as f64 / 1e3,
            );
            println!(
                "  requests: S3 {}, SQS {}, DynamoDB {} ({:.0} WRU, {:.1} RRU): {}",
                on_moto.requests_to(usage::S3),
                on_moto.requests_to(usage::SQS),
                on_moto.requests_to(usage::DYNAMODB),
                on_moto.dynamodb_write_units,
                on_moto.dynamodb_read_units,
                serde_json::to_string(&on_moto.requests).unwrap_or_default()
            );
            for (s_low, s_high) in low.services.iter().zip(&high.services) {
                println!(
                    "    {:<24} ${:.6} (moto's wall time: ${:.6})",
                    s_low.service, s_low.cost_usd, s_high.cost_usd
                );
            }
            println!(
                "  per export ${:.6} (${:.6}); per million resources ${:.6} (${:.6}); egress ${:.4} per million resources",
                low.total_usd,
                high.total_usd,
                per_million(low.total_usd),
                per_million(high.total_usd),
                per_million(low.egress.cost_usd),
            );
        }
    }
    Ok(())
}

/// The usage record of one export on the embedded defaults, one worker, and the server's
/// peak resident memory.
async fn local_usage(
    args: &BenchArgs,
    data: &Path,
    env: &[(&str, &str)],
) -> Result<(Usage, u64), BenchError> {
    let server = Server::start_on(args, data.as_os_str(), 1, env, None).await?;
    let usage = settled_usage(&server).await;
    let rss = server.peak_rss();
    server.stop().await?;
    Ok((usage?, rss))
}

/// The usage record of one export on the AWS adapters against moto.
async fn moto_usage(
    args: &BenchArgs,
    aws: &aws_config::SdkConfig,
    data: &Path,
    size: u64,
    env: &[(&str, &str)],
) -> Result<Usage, BenchError> {
    let run = format!("usage-{size}-{}-{}", std::process::id(), uuid_like());
    let (source_bucket, output_bucket) = (format!("{run}-src"), format!("{run}-out"));
    let source = S3Store::new(
        aws,
        S3Location::parse(&format!("s3://{source_bucket}/")).map_err(failed)?,
    );
    for bucket in [&source_bucket, &output_bucket] {
        source
            .client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(failed)?;
    }
    for entry in std::fs::read_dir(data)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".ndjson") {
            source
                .put(&name, Bytes::from(std::fs::read(&path)?))
                .await
                .map_err(failed)?;
        }
    }
    let stores = [
        ("FHIR_EXPORT_JOB_STORE", format!("dynamodb://{run}")),
        ("FHIR_EXPORT_QUEUE", format!("sqs://{run}")),
    ];
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.extend(stores.iter().map(|(k, v)| (*k, v.as_str())));
    let server = Server::start_on(
        args,
        std::ffi::OsStr::new(&format!("s3://{source_bucket}/")),
        args.workers,
        &env,
        Some(&format!("s3://{output_bucket}/exports/")),
    )
    .await?;
    let usage = settled_usage(&server).await;
    server.stop().await?;
    usage
}

/// A short name part unique to this moment (buckets and tables of one run).
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}")
}

/// Runs an export and reads its usage once every message has been recorded (the last ones
/// are recorded a moment after the manifest is ready).
async fn settled_usage(server: &Server) -> Result<Usage, BenchError> {
    let status = super::kick_off(server.http.get(format!("{}/$export", server.base))).await?;
    let read = || async {
        let resp = server.http.get(&status).send().await?;
        match resp.status().as_u16() {
            202 => Ok(None),
            200 => {
                let m: serde_json::Value = resp.json().await?;
                serde_json::from_value::<Usage>(m["extension"]["usage"].clone())
                    .map(Some)
                    .map_err(failed)
            }
            s => Err(BenchError::Protocol(format!("status answered {s}"))),
        }
    };
    // Polled gently: every poll is a read of the job store, moto's too.
    let mut last = loop {
        if let Some(u) = read().await? {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read().await?.unwrap_or_default();
        if now.messages == last.messages {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

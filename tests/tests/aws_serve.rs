//! `fhir-export serve` on the AWS adapters (`--source s3://`, `--output s3://`,
//! `--job-store dynamodb://`, `--queue sqs://`) against moto: the whole AWS stack exercised on
//! one machine, through the local server's worker pool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use fhir_export::serve::{ServeConfig, start};
use integration_tests::aws::new_bucket;
use integration_tests::{content_location, counts, dataset, read_source, unique};
use shared::adapters::aws::s3::{S3Location, S3Store};
use shared::adapters::aws::sdk_config;
use shared::ports::ObjectStore;

#[tokio::test]
async fn serve_runs_an_export_on_dynamodb_sqs_and_s3() {
    let Some((bucket, source)) = new_bucket("serve", "source/").await else {
        return;
    };
    let aws = sdk_config().await;
    let (dir, _) = dataset(8);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".ndjson") {
            source
                .put(&name, Bytes::from(std::fs::read(&path).unwrap()))
                .await
                .unwrap();
        }
    }
    let state = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(state.path());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.source = Some(format!("s3://{bucket}/source"));
    config.output = Some(format!("s3://{bucket}/exports"));
    config.job_store = Some(format!("dynamodb://{}", unique("jobs")));
    config.queue = Some(format!("sqs://{}", unique("work")));
    config.workers = 2;
    let server = start(config).await.unwrap();
    assert!(server.output_dir.is_none() && server.source_dir.is_none());

    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/$export", server.base_url))
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status = content_location(resp.headers());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let manifest: serde_json::Value = loop {
        let resp = http.get(&status).send().await.unwrap();
        if resp.status() == 200 {
            break resp.json().await.unwrap();
        }
        assert_eq!(resp.status(), 202);
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let want: std::collections::BTreeMap<String, u64> = read_source(dir.path())
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    assert_eq!(counts(&manifest), want);
    // The files are in the bucket, under a folder of their own.
    let id = status.rsplit('/').next().unwrap();
    let out = S3Store::new(
        &aws,
        S3Location::parse(&format!("s3://{bucket}/exports/")).unwrap(),
    );
    let objects = out.list(&format!("{id}/")).await.unwrap();
    assert_eq!(objects.len(), manifest["output"].as_array().unwrap().len());
    // and the local server streams them (its file access is `served`)
    let first = manifest["output"][0]["url"].as_str().unwrap();
    let body = http.get(first).send().await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.headers()["content-type"], "application/fhir+ndjson");
    server.stop().await;
}

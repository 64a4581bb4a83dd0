//! The usage record on the local server: the completed export's status carries it, its
//! chunks and resources agree with the manifest, and downloads add the bytes they sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use integration_tests::{Options, TestServer};
use serde_json::Value;
use shared::usage::Usage;

fn usage_of(manifest: &Value) -> Usage {
    serde_json::from_value(manifest["extension"]["usage"].clone()).expect("usage in extension")
}

#[tokio::test]
async fn the_status_carries_the_usage_and_downloads_add_what_they_sent() {
    let server = TestServer::start(Options {
        patients: 40,
        env: vec![("FHIR_EXPORT_CHUNK_BYTES".into(), "150000".into())],
        ..Options::default()
    })
    .await;
    let status = server.start_export("/$export", "").await;
    let manifest = server.manifest(&status).await;
    let usage = usage_of(&manifest);
    let files = manifest["output"].as_array().unwrap();
    let exported: u64 = files.iter().map(|f| f["count"].as_u64().unwrap()).sum();
    assert_eq!(usage.resources, exported, "{usage:?}");
    assert!(usage.chunks >= 3, "small chunks: {usage:?}");
    // plan, the chunks (each at least once), and finalize or notify.
    assert!(usage.messages > usage.chunks, "{usage:?}");
    assert!(usage.wall_ms > 0 && usage.wall_ms >= usage.max_wall_ms);
    // The local stores are not billed services: no requests are counted.
    assert!(usage.requests.is_empty(), "{:?}", usage.requests);
    let on_disk: u64 = files
        .iter()
        .map(|f| {
            let name = f["url"].as_str().unwrap().rsplit('/').next().unwrap();
            let path = std::fs::read_dir(server.output_dir())
                .unwrap()
                .flatten()
                .map(|e| e.path().join(name))
                .find(|p| p.exists())
                .expect("the file is in the export's folder");
            std::fs::metadata(path).unwrap().len()
        })
        .sum();
    assert_eq!(usage.bytes_written, on_disk);
    assert_eq!((usage.downloads, usage.bytes_sent), (0, 0));

    // Every file downloaded once, as stored (no gzip): the bytes sent are the files' sizes.
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    for f in files {
        let body = plain
            .get(f["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(!body.is_empty());
    }
    // Recorded as each body ends, a moment after the client has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let u = usage_of(&server.manifest(&status).await);
        if u.downloads == files.len() as u64 || tokio::time::Instant::now() > deadline {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.downloads, files.len() as u64);
    assert_eq!(after.bytes_sent, on_disk);
    assert_eq!(
        after.messages, usage.messages,
        "reading the status adds nothing"
    );
}

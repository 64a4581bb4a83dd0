//! Compressed downloads: `Accept-Encoding: gzip` is honoured by the files route (files stored
//! as they are are compressed on the way out), `Content-Length` and ranges stay right when a
//! file is sent as it is, and files stored compressed (`FHIR_EXPORT_OUTPUT_ENCODING=gzip`)
//! are sent as stored, decompressed for a client that does not accept gzip, and served by S3
//! with `Content-Encoding: gzip` on their signed URLs. The manifest is the same either way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read;

use integration_tests::aws::new_bucket;
use integration_tests::{Options, TestServer, counts, file_names};
use serde_json::Value;

/// A client that sends what it is told and leaves bodies as they come.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().build().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

/// Every output file's content as the server sends it to a client that accepts nothing but
/// the file as it is, by name; checks the `Content-Length` of each.
async fn plain_files(t: &TestServer, manifest: &Value) -> BTreeMap<String, Vec<u8>> {
    let http = raw_client();
    let mut out = BTreeMap::new();
    for item in manifest["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        let (status, headers, body) = get(&http, url, &[]).await;
        assert_eq!(status, 200, "{url}");
        assert!(headers.get("content-encoding").is_none(), "{url}");
        if let Some(len) = headers.get("content-length") {
            assert_eq!(len.to_str().unwrap(), body.len().to_string(), "{url}");
        }
        let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
        assert_eq!(lines, item["count"].as_u64().unwrap(), "{url}");
        out.insert(url.rsplit('/').next().unwrap().to_owned(), body);
    }
    let _ = t;
    out
}

#[tokio::test]
async fn downloads_are_gzipped_for_clients_that_accept_it_and_ranges_stay_exact() {
    let t = TestServer::start(Options {
        patients: 40,
        ..Options::default()
    })
    .await;
    let status = t
        .start_export("/$export", "_type=Patient,Observation")
        .await;
    let manifest = t.manifest(&status).await;
    let plain = plain_files(&t, &manifest).await;
    let http = raw_client();
    let (name, body) = plain
        .iter()
        .find(|(n, _)| n.starts_with("Observation"))
        .unwrap();
    let url = format!("{}/files/{name}", status);

    // gzip on the way out: smaller, labelled, and the same lines.
    let (code, headers, zipped) = get(&http, &url, &[("Accept-Encoding", "gzip, deflate")]).await;
    assert_eq!(code, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["content-type"], "application/fhir+ndjson");
    assert!(
        headers["vary"]
            .to_str()
            .unwrap()
            .contains("accept-encoding")
    );
    assert_eq!(gunzip(&zipped), *body);
    assert!(
        zipped.len() * 4 < body.len(),
        "{} compressed of {}",
        zipped.len(),
        body.len()
    );
    // A client that refuses gzip gets the file as it is.
    let (_, headers, same) = get(&http, &url, &[("Accept-Encoding", "gzip;q=0")]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(same, *body);

    // Ranges of the file as it is, with or without gzip accepted: a range is of those bytes.
    for accept in ["identity", "gzip"] {
        let (code, headers, part) = get(
            &http,
            &url,
            &[("Range", "bytes=100-1099"), ("Accept-Encoding", accept)],
        )
        .await;
        assert_eq!(code, 206, "{accept}");
        assert!(headers.get("content-encoding").is_none(), "{accept}");
        assert_eq!(headers["content-length"], "1000");
        assert_eq!(
            headers["content-range"],
            format!("bytes 100-1099/{}", body.len()).as_str()
        );
        assert_eq!(part, body[100..1100]);
    }
    let (code, _, tail) = get(&http, &url, &[("Range", "bytes=-10")]).await;
    assert_eq!(code, 206);
    assert_eq!(tail, body[body.len() - 10..]);
    let (code, headers, oo) =
        get(&http, &url, &[("Range", &format!("bytes={}-", body.len()))]).await;
    assert_eq!(code, 416);
    assert_eq!(
        headers["content-range"],
        format!("bytes */{}", body.len()).as_str()
    );
    let oo: Value = serde_json::from_slice(&oo).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    t.server.stop().await;
}

#[tokio::test]
async fn files_stored_gzipped_give_the_same_export() {
    let (dir, _) = integration_tests::dataset(40);
    let plain_server = TestServer::start(Options {
        source: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let zipped_server = TestServer::start(
        Options {
            source: Some(dir.path().to_path_buf()),
            ..Options::default()
        }
        .env("FHIR_EXPORT_OUTPUT_ENCODING", "gzip"),
    )
    .await;
    let query = "_type=Patient,Observation,Condition";
    let plain_status = plain_server.start_export("/$export", query).await;
    let plain_manifest = plain_server.manifest(&plain_status).await;
    let zipped_status = zipped_server.start_export("/$export", query).await;
    let zipped_manifest = zipped_server.manifest(&zipped_status).await;
    assert_eq!(counts(&plain_manifest), counts(&zipped_manifest));
    let names = file_names;
    assert_eq!(names(&plain_manifest), names(&zipped_manifest));

    // Stored compressed, under the same names.
    let job = zipped_status.rsplit('/').next().unwrap();
    let plain_job = plain_status.rsplit('/').next().unwrap();
    let mut stored_total = 0;
    let mut plain_total = 0;
    for name in names(&zipped_manifest) {
        let stored = std::fs::read(zipped_server.output_dir().join(job).join(&name)).unwrap();
        assert_eq!(&stored[..2], &[0x1f, 0x8b], "{name} is not stored as gzip");
        let plain = std::fs::read(plain_server.output_dir().join(plain_job).join(&name)).unwrap();
        assert_eq!(gunzip(&stored), plain, "{name}");
        stored_total += stored.len();
        plain_total += plain.len();
    }
    assert!(
        stored_total * 4 < plain_total,
        "{stored_total} of {plain_total}"
    );

    let http = raw_client();
    let plain = plain_files(&zipped_server, &zipped_manifest).await;
    let reference = plain_files(&plain_server, &plain_manifest).await;
    assert_eq!(plain, reference, "decompressed for a client without gzip");
    for name in names(&zipped_manifest) {
        let url = format!("{zipped_status}/files/{name}");
        let stored = std::fs::read(zipped_server.output_dir().join(job).join(&name)).unwrap();
        // As stored, with its length, to a client that accepts gzip.
        let (code, headers, body) = get(&http, &url, &[("Accept-Encoding", "gzip")]).await;
        assert_eq!(code, 200);
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["content-length"], stored.len().to_string().as_str());
        assert_eq!(body, stored);
        // A range of the stored bytes.
        let (code, headers, part) = get(
            &http,
            &url,
            &[("Accept-Encoding", "gzip"), ("Range", "bytes=0-9")],
        )
        .await;
        assert_eq!(code, 206);
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(part, stored[..10]);
    }
    // The project's own client reads them through (it accepts gzip).
    assert_eq!(
        plain_server.download(&plain_manifest, "output").await,
        zipped_server.download(&zipped_manifest, "output").await
    );
    plain_server.server.stop().await;
    zipped_server.server.stop().await;
}

#[tokio::test]
async fn signed_urls_of_gzipped_files_on_s3_are_labelled_gzip() {
    let Some((bucket, _)) = new_bucket("gzip", "exports/").await else {
        return;
    };
    let t = TestServer::start(
        Options {
            patients: 20,
            output: Some(format!("s3://{bucket}/exports")),
            ..Options::default()
        }
        .env("FHIR_EXPORT_OUTPUT_ENCODING", "gzip")
        .env("FHIR_EXPORT_FILE_ACCESS", "signed"),
    )
    .await;
    let status = t
        .start_export("/$export", "_type=Patient,Observation")
        .await;
    let manifest = t.manifest(&status).await;
    assert_eq!(manifest["requiresAccessToken"], false);
    let http = raw_client();
    let mut seen = 0;
    for item in manifest["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        let (code, headers, body) = get(&http, url, &[("Accept-Encoding", "gzip")]).await;
        assert_eq!(code, 200, "{url}");
        assert_eq!(headers["content-encoding"], "gzip", "{url}");
        let text = String::from_utf8(gunzip(&body)).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            item["count"].as_u64().unwrap(),
            "{url}"
        );
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["resourceType"], item["type"]);
        }
        seen += 1;
    }
    assert!(seen >= 2);
    t.server.stop().await;
}

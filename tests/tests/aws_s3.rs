//! The S3 object store against moto server: the behaviour suite every object store passes (at
//! the bucket root and under a key prefix), multipart writes, aborted and dropped writers,
//! ranges, presigned URLs, and the NDJSON source reading from S3. Each test has its own bucket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use integration_tests::aws::new_bucket;
use integration_tests::{moto, unique};
use shared::adapters::aws::s3::{S3Location, S3Store};
use shared::adapters::aws::sdk_config;
use shared::adapters::ndjson_source::NdjsonSource;
use shared::model::ResourceType;
use shared::ports::{ObjectError, ObjectStore, ReadCriteria, RecordBatch, ResourceSource};
use shared::testkit;

const MIB: usize = 1024 * 1024;

/// A store on a new bucket, under `prefix`; `None` when moto is not running.
async fn store(prefix: &str) -> Option<S3Store> {
    new_bucket("fhir-s3", prefix).await.map(|(_, store)| store)
}

async fn read_all(store: &S3Store, key: &str, start: u64, end: Option<u64>) -> Vec<u8> {
    shared::testkit::object_store::read_all(store, key, start, end).await
}

/// Multipart uploads still open in the store's bucket.
async fn open_uploads(store: &S3Store) -> usize {
    store
        .client()
        .list_multipart_uploads()
        .bucket(&store.location().bucket)
        .send()
        .await
        .expect("list multipart uploads")
        .uploads()
        .len()
}

/// Bytes that differ at every offset of a part, so a misplaced or repeated piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

#[tokio::test]
async fn contract_at_the_bucket_root() {
    let Some(store) = store("").await else { return };
    assert_eq!(
        store.describe(),
        format!("s3://{}", store.location().bucket)
    );
    testkit::object_store::run(Arc::new(store), "contract/").await;
}

#[tokio::test]
async fn contract_under_a_prefix() {
    let Some(store) = store("some/prefix/").await else {
        return;
    };
    let bucket = store.location().bucket.clone();
    assert_eq!(store.describe(), format!("s3://{bucket}/some/prefix"));
    let store = Arc::new(store);
    testkit::object_store::run(store.clone(), "contract/").await;

    // Port keys are relative: the objects really sit under the prefix, and what lies beside
    // it is neither listed nor deleted.
    store
        .put("x/y.ndjson", Bytes::from_static(b"y"))
        .await
        .unwrap();
    store
        .client()
        .put_object()
        .bucket(&bucket)
        .key("some/other.ndjson")
        .body(Bytes::from_static(b"outside").into())
        .send()
        .await
        .unwrap();
    let raw: Vec<String> = store
        .client()
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert_eq!(raw, vec!["some/other.ndjson", "some/prefix/x/y.ndjson"]);
    let listed: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, vec!["x/y.ndjson"]);
    assert_eq!(store.delete_prefix("").await.unwrap(), 1);
    assert!(
        store
            .client()
            .head_object()
            .bucket(&bucket)
            .key("some/other.ndjson")
            .send()
            .await
            .is_ok(),
        "an object outside the prefix was deleted"
    );
}

#[tokio::test]
async fn multipart_write_reads_back_byte_exact() {
    let Some(store) = store("").await else { return };
    let total = 20 * MIB + 12_345;
    let data = pattern(total);
    let mut w = store.writer("big/Patient.ndjson").await.unwrap();
    // Odd piece sizes, so parts are cut inside pieces and pieces span parts.
    let sizes = [1, 4093, 1_000_003, 3 * MIB + 7, 777, 5 * MIB - 1];
    let mut off = 0;
    for n in sizes.iter().cycle() {
        if off == total {
            break;
        }
        let end = (off + n).min(total);
        w.write(Bytes::copy_from_slice(&data[off..end]))
            .await
            .unwrap();
        off = end;
    }
    assert_eq!(open_uploads(&store).await, 1, "a multipart upload is open");
    assert!(
        store.head("big/Patient.ndjson").await.unwrap().is_none(),
        "visible before finish"
    );
    assert_eq!(w.finish().await.unwrap(), total as u64);
    assert_eq!(open_uploads(&store).await, 0);
    assert_eq!(
        store
            .head("big/Patient.ndjson")
            .await
            .unwrap()
            .map(|m| m.size),
        Some(total as u64)
    );
    let back = read_all(&store, "big/Patient.ndjson", 0, None).await;
    assert!(
        back == data,
        "multipart object differs from what was written"
    );
    // A range across the first part boundary.
    let (s, e) = (8 * MIB - 10, 8 * MIB + 10);
    assert_eq!(
        read_all(&store, "big/Patient.ndjson", s as u64, Some(e as u64)).await,
        data[s..e]
    );

    // Exactly one part: still a multipart upload, completed with that part.
    let mut w = store.writer("big/one-part").await.unwrap();
    w.write(Bytes::from(pattern(8 * MIB))).await.unwrap();
    assert_eq!(w.finish().await.unwrap(), (8 * MIB) as u64);
    assert_eq!(
        read_all(&store, "big/one-part", 0, None).await,
        pattern(8 * MIB)
    );

    // Smaller than a part: one PutObject, no multipart upload ever opened.
    let mut w = store.writer("small").await.unwrap();
    w.write(Bytes::from_static(b"abc")).await.unwrap();
    w.write(Bytes::from_static(b"def")).await.unwrap();
    assert_eq!(open_uploads(&store).await, 0);
    assert_eq!(w.finish().await.unwrap(), 6);
    assert_eq!(read_all(&store, "small", 0, None).await, b"abcdef");

    // An empty writer makes an empty object.
    let w = store.writer("empty").await.unwrap();
    assert_eq!(w.finish().await.unwrap(), 0);
    assert_eq!(store.head("empty").await.unwrap().map(|m| m.size), Some(0));
    assert!(read_all(&store, "empty", 0, None).await.is_empty());
}

#[tokio::test]
async fn aborted_and_dropped_writers_leave_nothing() {
    let Some(store) = store("out/").await else {
        return;
    };
    let part_and_a_bit = Bytes::from(pattern(9 * MIB));

    let mut w = store.writer("aborted.ndjson").await.unwrap();
    w.write(part_and_a_bit.clone()).await.unwrap();
    assert_eq!(open_uploads(&store).await, 1);
    w.abort().await.unwrap();
    assert_eq!(open_uploads(&store).await, 0, "abort left an upload");
    assert!(store.head("aborted.ndjson").await.unwrap().is_none());

    let mut w = store.writer("dropped.ndjson").await.unwrap();
    w.write(part_and_a_bit).await.unwrap();
    assert_eq!(open_uploads(&store).await, 1);
    drop(w);
    // The abort runs on a task the drop spawned.
    let mut left = 1;
    for _ in 0..50 {
        left = open_uploads(&store).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "a dropped writer left its upload");
    assert!(store.head("dropped.ndjson").await.unwrap().is_none());
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn ranges() {
    let Some(store) = store("").await else { return };
    store
        .put("r/digits", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(read_all(&store, "r/digits", 3, Some(7)).await, b"3456");
    assert_eq!(read_all(&store, "r/digits", 0, Some(1)).await, b"0");
    assert_eq!(read_all(&store, "r/digits", 9, None).await, b"9");
    assert_eq!(read_all(&store, "r/digits", 7, Some(100)).await, b"789");
    // At or past the end, and empty ranges: nothing, not an error.
    assert!(read_all(&store, "r/digits", 10, None).await.is_empty());
    assert!(read_all(&store, "r/digits", 25, Some(30)).await.is_empty());
    assert!(read_all(&store, "r/digits", 4, Some(4)).await.is_empty());
    // A missing object is NotFound whatever the range.
    for (start, end) in [(0, None), (5, None), (2, Some(4)), (3, Some(3))] {
        match store.read("r/missing", start, end).await {
            Err(ObjectError::NotFound(k)) => assert_eq!(k, "r/missing"),
            Err(e) => panic!("{start}..{end:?}: want NotFound, got {e}"),
            Ok(_) => panic!("{start}..{end:?}: read of a missing object succeeded"),
        }
    }
}

#[tokio::test]
async fn keys_that_need_encoding() {
    let Some(store) = store("p q/").await else {
        return;
    };
    let from = "dir with space/a+b=c&d?é%.ndjson";
    let to = "moved/ü~x!.ndjson";
    store.put(from, Bytes::from_static(b"odd")).await.unwrap();
    let listed: Vec<String> = store
        .list("dir with space/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, vec![from]);
    store.rename(from, to).await.unwrap();
    assert!(store.head(from).await.unwrap().is_none());
    assert_eq!(read_all(&store, to, 0, None).await, b"odd");
    // Renaming onto itself is a no-op, not S3's "copy onto itself" error.
    store.rename(to, to).await.unwrap();
    assert_eq!(read_all(&store, to, 0, None).await, b"odd");
    assert!(matches!(
        store.rename("nothing", "nothing").await,
        Err(ObjectError::NotFound(_))
    ));
}

#[tokio::test]
async fn presigned_get_url() {
    let Some(store) = store("signed/").await else {
        return;
    };
    let data = Bytes::from(pattern(100_000));
    let key = "exp/Patient 1+x.ndjson";
    store.put(key, data.clone()).await.unwrap();
    let signer = store.signer().expect("S3 signs URLs");
    let url = signer
        .signed_get_url(key, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=600"), "{url}");
    // moto checks neither the signature nor the expiry: this proves the URL addresses the
    // object (path style, encoded key), not that S3 would accept its signature.
    let resp = reqwest::get(&url).await.unwrap();
    assert!(resp.status().is_success(), "{}: {url}", resp.status());
    assert_eq!(resp.bytes().await.unwrap(), data);
    // S3 caps presigned URLs at 7 days.
    assert!(matches!(
        signer
            .signed_get_url(key, Duration::from_secs(8 * 24 * 3600))
            .await,
        Err(ObjectError::Backend { .. })
    ));
}

#[tokio::test]
async fn ndjson_source_reads_every_line_once() {
    use std::io::Write;

    let Some(store) = store("data/").await else {
        return;
    };
    let text = shared::testkit::ragged_patient_lines(200);
    store
        .put("src/Patient.ndjson", Bytes::from(text))
        .await
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..30 {
        writeln!(gz, "{{\"resourceType\":\"Observation\",\"id\":\"o{i}\"}}").unwrap();
    }
    store
        .put(
            "src/more/Observation.ndjson.gz",
            Bytes::from(gz.finish().unwrap()),
        )
        .await
        .unwrap();
    store
        .put("src/README.md", Bytes::from_static(b"not data"))
        .await
        .unwrap();

    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let source = NdjsonSource::new(store, "src");
    let observation = ResourceType::parse("Observation").unwrap();
    assert_eq!(
        source.types().await.unwrap(),
        vec![observation, ResourceType::PATIENT]
    );
    for chunk_bytes in [1u64, 7, 50, 333, 1000, 100_000] {
        let types = [ResourceType::PATIENT, observation];
        let pieces = source
            .plan(&ReadCriteria::everything(
                &types,
                chunk_bytes,
                chrono::Utc::now(),
            ))
            .await
            .unwrap()
            .pieces;
        let mut patients = Vec::new();
        let mut observations = Vec::new();
        for piece in &pieces {
            let mut reader = source.open(&piece.read).await.unwrap();
            let mut batch = RecordBatch::default();
            while reader.next_batch(&mut batch).await.unwrap() {
                for (line, _) in batch.iter() {
                    let line = String::from_utf8(line.to_vec()).unwrap();
                    assert!(!line.ends_with('\r'), "{chunk_bytes}: {line}");
                    if piece.resource_type == ResourceType::PATIENT {
                        patients.push(line);
                    } else {
                        observations.push(line);
                    }
                }
            }
        }
        assert_eq!(patients.len(), 200, "chunk_bytes {chunk_bytes}");
        for (i, l) in patients.iter().enumerate() {
            assert!(l.contains(&format!("\"p{i}\"")), "{chunk_bytes}: {l}");
        }
        assert_eq!(observations.len(), 30, "chunk_bytes {chunk_bytes}");
        for (i, l) in observations.iter().enumerate() {
            assert!(l.contains(&format!("\"o{i}\"")), "{chunk_bytes}: {l}");
        }
    }
}

#[tokio::test]
async fn a_missing_bucket_is_a_backend_error_not_a_missing_object() {
    if moto().await.is_none() {
        return;
    }
    let location = S3Location::parse(&format!("s3://{}", unique("fhir-s3-none"))).unwrap();
    let store = S3Store::new(&sdk_config().await, location);
    for result in [
        store.read("a", 0, None).await.map(|_| ()),
        store.put("a", Bytes::from_static(b"a")).await,
        store.list("").await.map(|_| ()),
    ] {
        match result {
            Err(e @ ObjectError::Backend { .. }) => {
                assert!(std::error::Error::source(&e).is_some(), "source kept: {e}");
            }
            other => panic!("want Backend, got {other:?}"),
        }
    }
}

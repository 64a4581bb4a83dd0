//! The Azure object store against Azurite: the behaviour suite every object store passes (in
//! a container, under a prefix, and at the account root), block uploads, ranges, SAS links
//! fetched with a plain HTTP client, and the failures that must come out in words.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use integration_tests::azure::{
    account_store, assert_access, azurite, container_exists, container_name, container_sas,
    new_container, sas_settings, tamper_sig,
};
use shared::adapters::azure::{AzureLocation, AzureStore};
use shared::layout;
use shared::model::JobId;
use shared::ports::{AccessProblem, Encoding, ObjectStore};
use shared::testkit;

const MIB: usize = 1024 * 1024;

async fn read_all(store: &AzureStore, key: &str, start: u64, end: Option<u64>) -> Vec<u8> {
    testkit::object_store::read_all(store, key, start, end).await
}

/// The keys listed under a prefix.
async fn keys(store: &AzureStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// Bytes that differ at every offset of a block, so a misplaced or repeated piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn container_not_found(p: &AccessProblem) -> bool {
    matches!(p, AccessProblem::ContainerNotFound)
}

/// A store on an existing container, with the settings given.
fn store_on(container: &str, settings: &shared::adapters::azure::AzureSettings) -> AzureStore {
    AzureStore::open(
        AzureLocation::parse(&format!("az://{container}")).unwrap(),
        settings,
    )
    .unwrap()
}

/// Writes `data` through `w` in pieces of odd sizes, so that blocks are cut inside pieces
/// and pieces span blocks.
async fn write_in_pieces(w: &mut Box<dyn shared::ports::ObjectWriter>, data: &[u8]) {
    let sizes = [1, 4093, 1_000_003, 3 * MIB + 7, 777, 5 * MIB - 1];
    let mut off = 0;
    for n in sizes.iter().cycle() {
        if off == data.len() {
            break;
        }
        let end = (off + n).min(data.len());
        w.write(Bytes::copy_from_slice(&data[off..end]))
            .await
            .unwrap();
        off = end;
    }
}

/// A client that keeps `Content-Encoding` (and the bytes) as the server sends them.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().build().unwrap()
}

#[tokio::test]
async fn contract_in_a_container() {
    let Some((name, store)) = new_container("contract", "").await else {
        return;
    };
    assert!(store.describe().contains(&name), "{}", store.describe());
    testkit::object_store::run(Arc::new(store), "contract/").await;
}

#[tokio::test]
async fn contract_under_a_prefix() {
    let Some((_, store)) = new_container("prefixed", "some/prefix/").await else {
        return;
    };
    testkit::object_store::run(Arc::new(store), "contract/").await;
}

#[tokio::test]
async fn contract_at_the_account_root() {
    let Some(url) = azurite().await else { return };
    let Some((name, _)) = new_container("contract-root", "").await else {
        return;
    };
    let store = account_store(&url);
    testkit::object_store::run(Arc::new(store), &format!("{name}/contract/")).await;
    // A user's container stays when the suite has emptied it.
    assert!(container_exists(&url, &name).await);
}

#[tokio::test]
async fn an_account_root_export_gets_a_container_that_goes_with_its_last_files() {
    let Some(url) = azurite().await else { return };
    let store = account_store(&url);
    let job = JobId::new();
    let container = layout::new_container(Utc::now(), &job);
    assert!(layout::is_new_container(&container), "{container}");
    let prefix = layout::export_prefix(Some(&container), &job);
    let [folder, staging] = layout::export_prefixes(&prefix);
    let file = format!("{folder}Patient-1.ndjson");
    let staged = format!("{staging}000001.a.Observation-1.ndjson");

    // Not there until the export is prepared.
    assert!(!container_exists(&url, &container).await);
    assert_access(
        store.put(&file, Bytes::from_static(b"early\n")).await,
        &container,
        container_not_found,
    );
    assert!(
        !container_exists(&url, &container).await,
        "a put created it"
    );

    store.prepare_export(&prefix, true).await.unwrap();
    assert!(container_exists(&url, &container).await);
    // The probe is gone again.
    assert!(keys(&store, &format!("{container}/")).await.is_empty());
    // Prepared twice (a plan delivered again): fine.
    store.prepare_export(&prefix, true).await.unwrap();

    store
        .put(&file, Bytes::from_static(b"{\"id\":\"p1\"}\n"))
        .await
        .unwrap();
    store
        .put(&staged, Bytes::from_static(b"{\"id\":\"o1\"}\n"))
        .await
        .unwrap();
    assert_eq!(
        keys(&store, &format!("{container}/")).await,
        vec![staged.clone(), file.clone()]
    );
    assert_eq!(keys(&store, &folder).await, vec![file.clone()]);
    assert_eq!(read_all(&store, &file, 0, None).await, b"{\"id\":\"p1\"}\n");

    // The export's folder goes; its staging file still holds the container.
    assert_eq!(store.delete_prefix(&folder).await.unwrap(), 1);
    assert!(container_exists(&url, &container).await);
    assert_eq!(keys(&store, &staging).await, vec![staged.clone()]);
    // The last file goes: so does the container.
    assert_eq!(store.delete_prefix(&staging).await.unwrap(), 1);
    assert!(
        !container_exists(&url, &container).await,
        "the export's container is left"
    );
    assert_access(store.list(&folder).await, &container, container_not_found);
    assert_access(
        store.put(&file, Bytes::from_static(b"late\n")).await,
        &container,
        container_not_found,
    );
    // Deleting what is gone finds nothing.
    for p in [&folder, &staging] {
        assert_eq!(store.delete_prefix(p).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_container_the_store_did_not_make_is_never_deleted_nor_created() {
    let Some(url) = azurite().await else { return };
    let Some((mine, _)) = new_container("mine", "").await else {
        return;
    };
    let store = account_store(&url);
    let job = JobId::new();
    let prefix = layout::export_prefix(Some(&mine), &job);
    // `new_container` is only about containers of the generated pattern.
    store.prepare_export(&prefix, true).await.unwrap();
    let [folder, staging] = layout::export_prefixes(&prefix);
    store
        .put(
            &format!("{folder}Patient-1.ndjson"),
            Bytes::from_static(b"p\n"),
        )
        .await
        .unwrap();
    store
        .put(&format!("{staging}members.json"), Bytes::from_static(b"[]"))
        .await
        .unwrap();
    assert_eq!(store.delete_prefix(&folder).await.unwrap(), 1);
    assert_eq!(store.delete_prefix(&staging).await.unwrap(), 1);
    assert!(
        container_exists(&url, &mine).await,
        "a user's container was deleted when emptied"
    );
    assert!(keys(&store, &format!("{mine}/")).await.is_empty());

    // A user's container that does not exist is not made for an export.
    let missing = container_name("missing");
    let prefix = layout::export_prefix(Some(&missing), &job);
    assert_access(
        store.prepare_export(&prefix, true).await,
        &missing,
        container_not_found,
    );
    assert!(!container_exists(&url, &missing).await);
}

#[tokio::test]
async fn a_missing_container_is_an_access_fault_in_words() {
    let Some(url) = azurite().await else { return };
    let missing = container_name("nowhere");
    let rooted = store_on(&missing, &integration_tests::azure::emulator(&url));
    let text = assert_access(
        rooted
            .put("job/Patient-1.ndjson", Bytes::from_static(b"x"))
            .await,
        &missing,
        container_not_found,
    );
    assert!(text.contains("does not exist"), "{text}");
    assert_access(rooted.list("job/").await, &missing, container_not_found);
    assert_access(
        rooted
            .read("job/Patient-1.ndjson", 0, None)
            .await
            .map(|_| ()),
        &missing,
        container_not_found,
    );
    let writer = async {
        let mut w = rooted.writer("job/Observation-1.ndjson").await?;
        w.write(Bytes::from_static(b"o\n")).await?;
        w.finish().await
    };
    assert_access(writer.await, &missing, container_not_found);
    // The same at the account root, where a key's first folder is its container.
    let root = account_store(&url);
    assert_access(
        root.put(&format!("{missing}/job/x.ndjson"), Bytes::from_static(b"x"))
            .await,
        &missing,
        container_not_found,
    );
    assert!(!container_exists(&url, &missing).await);
}

#[tokio::test]
async fn a_read_only_sas_reads_but_cannot_take_an_export_nor_sign() {
    let Some(url) = azurite().await else { return };
    let Some((name, admin)) = new_container("readonly", "").await else {
        return;
    };
    let data = Bytes::from_static(b"{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n");
    admin
        .put("data/Patient.ndjson", data.clone())
        .await
        .unwrap();
    let sas = container_sas(&name, "rl", Utc::now() + chrono::Duration::hours(1));
    let store = store_on(&name, &sas_settings(&url, &sas));
    assert_eq!(read_all(&store, "data/Patient.ndjson", 0, None).await, data);
    assert_eq!(keys(&store, "").await, vec!["data/Patient.ndjson"]);

    let job = JobId::new();
    let text = assert_access(
        store.prepare_export(job.as_str(), false).await,
        &name,
        |p| {
            matches!(
                p,
                AccessProblem::Forbidden {
                    operation: "write blobs",
                    ..
                }
            )
        },
    );
    assert!(text.contains("Storage Blob Data Contributor"), "{text}");
    assert!(store.signer().is_none(), "a SAS token cannot sign");
    // Nothing was written.
    assert_eq!(keys(&admin, "").await, vec!["data/Patient.ndjson"]);
}

#[tokio::test]
async fn a_tampered_sas_is_a_rejected_credential() {
    let Some(url) = azurite().await else { return };
    let Some((name, admin)) = new_container("tampered", "").await else {
        return;
    };
    admin
        .put("data/Patient.ndjson", Bytes::from_static(b"p\n"))
        .await
        .unwrap();
    let sas = container_sas(&name, "racwdl", Utc::now() + chrono::Duration::hours(1));
    // The untampered token works, so what fails below is the signature alone.
    let good = store_on(&name, &sas_settings(&url, &sas));
    assert_eq!(keys(&good, "").await, vec!["data/Patient.ndjson"]);
    let store = store_on(&name, &sas_settings(&url, &tamper_sig(&sas)));
    let rejected = |p: &AccessProblem| matches!(p, AccessProblem::CredentialRejected);
    let text = assert_access(
        store.read("data/Patient.ndjson", 0, None).await.map(|_| ()),
        &name,
        rejected,
    );
    assert!(text.contains("rejects the credential"), "{text}");
    assert_access(store.list("data/").await, &name, rejected);
    assert_access(
        store.prepare_export(JobId::new().as_str(), false).await,
        &name,
        rejected,
    );
}

#[tokio::test]
async fn sas_links_fetch_their_blob_and_nothing_else() {
    let Some(url) = azurite().await else { return };
    let Some((name, store)) = new_container("links", "exports/").await else {
        return;
    };
    let data = Bytes::from(pattern(100_000));
    let key = "job/Patient-1.ndjson";
    store.put(key, data.clone()).await.unwrap();
    store
        .put("job/Other.ndjson", Bytes::from_static(b"other"))
        .await
        .unwrap();
    let signed = store
        .signer()
        .expect("the emulator key signs")
        .signed_get_url(key, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(
        signed.starts_with(&format!("{url}/devstoreaccount1/{name}/exports/job/")),
        "{signed}"
    );
    assert!(signed.contains("sig="), "{signed}");
    let http = raw_client();
    let resp = http.get(&signed).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{signed}");
    assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
    assert_eq!(resp.bytes().await.unwrap(), data);

    let forged = tamper_sig(&signed);
    assert_ne!(forged, signed);
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
    // Another blob with the same signature: refused.
    let (path, query) = signed.split_once('?').unwrap();
    let (dir, _) = path.rsplit_once('/').unwrap();
    let other = format!("{dir}/Other.ndjson?{query}");
    assert_eq!(http.get(&other).send().await.unwrap().status(), 403);
    // Read only: the link cannot overwrite its blob.
    let put = http
        .put(&signed)
        .header("x-ms-blob-type", "BlockBlob")
        .body("overwritten")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    assert_eq!(read_all(&store, key, 0, None).await, data);
}

#[tokio::test]
async fn a_sas_link_expires() {
    let Some((_, store)) = new_container("expiry", "").await else {
        return;
    };
    let key = "job/Patient-1.ndjson";
    store
        .put(key, Bytes::from_static(b"{\"id\":\"p\"}\n"))
        .await
        .unwrap();
    let signed_at = Instant::now();
    let signed = store
        .signer()
        .expect("the emulator key signs")
        .signed_get_url(key, Duration::from_secs(2))
        .await
        .unwrap();
    let http = raw_client();
    let first = http.get(&signed).send().await.unwrap().status();
    // `se` is in whole seconds: the link lives one to two seconds.
    if signed_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(first, 200, "a fresh link is refused");
    }
    let deadline = signed_at + Duration::from_secs(20);
    loop {
        let status = http.get(&signed).send().await.unwrap().status();
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "the link still works {:?} after it was signed for 2 s",
            signed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        signed_at.elapsed() >= Duration::from_millis(900),
        "expired after {:?}",
        signed_at.elapsed()
    );
}

#[tokio::test]
async fn a_multi_block_writer_reads_back_byte_exact() {
    let Some((_, store)) = new_container("blocks", "out/").await else {
        return;
    };
    let total = 20 * MIB + 12_345;
    let data = pattern(total);
    let key = "big/Patient-1.ndjson";
    let mut w = store.writer(key).await.unwrap();
    write_in_pieces(&mut w, &data).await;
    assert!(
        store.head(key).await.unwrap().is_none(),
        "visible before finish"
    );
    assert!(
        keys(&store, "big/").await.is_empty(),
        "listed before finish"
    );
    assert_eq!(w.finish().await.unwrap(), total as u64);
    assert_eq!(
        store.head(key).await.unwrap().map(|m| m.size),
        Some(total as u64)
    );
    let listed = store.list("big/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].key.as_str(), listed[0].size),
        (key, total as u64)
    );
    let back = read_all(&store, key, 0, None).await;
    assert!(back == data, "the blob differs from what was written");
    // Ranges across the first and second block boundaries.
    for b in [8 * MIB, 16 * MIB] {
        let (s, e) = (b - 10, b + 10);
        assert_eq!(
            read_all(&store, key, s as u64, Some(e as u64)).await,
            data[s..e]
        );
    }

    // Exactly one block.
    let mut w = store.writer("big/one-block").await.unwrap();
    w.write(Bytes::from(pattern(8 * MIB))).await.unwrap();
    assert_eq!(w.finish().await.unwrap(), (8 * MIB) as u64);
    assert!(read_all(&store, "big/one-block", 0, None).await == pattern(8 * MIB));

    // Smaller than a block, in pieces; and empty.
    let mut w = store.writer("small").await.unwrap();
    w.write(Bytes::from_static(b"abc")).await.unwrap();
    w.write(Bytes::from_static(b"def")).await.unwrap();
    assert_eq!(w.finish().await.unwrap(), 6);
    assert_eq!(read_all(&store, "small", 0, None).await, b"abcdef");
    let w = store.writer("empty").await.unwrap();
    assert_eq!(w.finish().await.unwrap(), 0);
    assert_eq!(store.head("empty").await.unwrap().map(|m| m.size), Some(0));
}

#[tokio::test]
async fn aborted_and_dropped_multi_block_writers_leave_nothing() {
    let Some((_, store)) = new_container("aborted", "out/").await else {
        return;
    };
    let data = pattern(20 * MIB + 5);

    let mut w = store.writer("job/aborted.ndjson").await.unwrap();
    write_in_pieces(&mut w, &data).await;
    w.abort().await.unwrap();
    assert!(store.head("job/aborted.ndjson").await.unwrap().is_none());
    assert!(keys(&store, "job/").await.is_empty());

    let mut w = store.writer("job/dropped.ndjson").await.unwrap();
    write_in_pieces(&mut w, &data).await;
    drop(w);
    assert!(store.head("job/dropped.ndjson").await.unwrap().is_none());
    assert!(keys(&store, "").await.is_empty());

    // The blocks an aborted writer staged do not leak into a later blob of the same name.
    let mut w = store.writer("job/aborted.ndjson").await.unwrap();
    w.write(Bytes::from(pattern(9 * MIB))).await.unwrap();
    w.write(Bytes::from_static(b"tail")).await.unwrap();
    assert_eq!(w.finish().await.unwrap(), (9 * MIB + 4) as u64);
    let mut want = pattern(9 * MIB);
    want.extend_from_slice(b"tail");
    assert!(read_all(&store, "job/aborted.ndjson", 0, None).await == want);
    assert_eq!(keys(&store, "").await, vec!["job/aborted.ndjson"]);
}

#[tokio::test]
async fn a_gzip_encoded_blob_is_served_with_its_encoding() {
    use std::io::{Read, Write};

    let Some((_, store)) = new_container("gzip", "").await else {
        return;
    };
    let text = "{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n".repeat(200);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let big = pattern(9 * MIB);
    for (key, bytes) in [
        ("job/Patient-1.ndjson", gz.as_slice()),
        // More than a block: the block list commit carries the labels too.
        ("job/Observation-1.ndjson", big.as_slice()),
    ] {
        let mut w = store.encoded_writer(key, Encoding::Gzip).await.unwrap();
        w.write(Bytes::copy_from_slice(bytes)).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), bytes.len() as u64);
        let signed = store
            .signer()
            .unwrap()
            .signed_get_url(key, Duration::from_secs(600))
            .await
            .unwrap();
        let resp = raw_client().get(&signed).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{key}");
        assert_eq!(resp.headers()["content-encoding"], "gzip", "{key}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/fhir+ndjson",
            "{key}"
        );
        assert!(
            resp.bytes().await.unwrap() == bytes,
            "{key}: stored as written"
        );
        // The port reads the bytes as stored.
        assert!(read_all(&store, key, 0, None).await == bytes, "{key}");
    }
    // A client that decodes gets the text.
    let signed = store
        .signer()
        .unwrap()
        .signed_get_url("job/Patient-1.ndjson", Duration::from_secs(600))
        .await
        .unwrap();
    let raw = raw_client()
        .get(&signed)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(raw.as_ref())
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, text);
    let auto = reqwest::get(&signed).await.unwrap().text().await.unwrap();
    assert_eq!(auto, text);
    // An identity writer's blob has no encoding.
    store
        .put("job/plain.ndjson", Bytes::from_static(b"x\n"))
        .await
        .unwrap();
    let signed = store
        .signer()
        .unwrap()
        .signed_get_url("job/plain.ndjson", Duration::from_secs(600))
        .await
        .unwrap();
    let resp = raw_client().get(&signed).send().await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
}

//! A cancelled export leaves nothing in the output store, whenever the cancel lands: right
//! after kick-off, in the middle of the export, and while a chunk moves its files into the
//! export's folder; on the local folder and on S3 (moto). Nothing means no file, no staging
//! folder, no temporary file and no unfinished multipart upload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fhir_export::serve::Wrap;
use integration_tests::aws::new_bucket;
use integration_tests::wrappers::{SlowSource, StoreWrapper, Wrapped};
use integration_tests::{Options, TestServer, files_under};
use shared::adapters::aws::s3::S3Store;
use shared::model::JobId;
use shared::ports::{ObjectError, ObjectStore};
use shared::worker::{NoLease, handle_message};

/// Where the exports go.
enum Output {
    Local,
    /// A bucket of the test's own; exports under `exports/`.
    S3 {
        bucket: String,
        store: S3Store,
    },
}

impl Output {
    /// The local folder, or a new bucket on moto (`None` when moto is not running: the test
    /// is then skipped, and says so).
    async fn new(s3: bool) -> Option<Output> {
        if !s3 {
            return Some(Output::Local);
        }
        let (bucket, store) = new_bucket("cancel", "exports/").await?;
        Some(Output::S3 { bucket, store })
    }

    fn url(&self) -> Option<String> {
        match self {
            Output::Local => None,
            Output::S3 { bucket, .. } => Some(format!("s3://{bucket}/exports")),
        }
    }

    async fn server(&self, opts: Options) -> TestServer {
        TestServer::start(Options {
            output: self.url(),
            ..opts
        })
        .await
    }

    /// Asserts that nothing of export `id` is left in the store.
    async fn assert_nothing_left(&self, t: &TestServer, id: &JobId) {
        match self {
            Output::Local => {
                let root = t.output_dir();
                for folder in [
                    root.join(id.as_str()),
                    root.join(".staging").join(id.as_str()),
                ] {
                    assert!(
                        !folder.exists(),
                        "{folder:?} is left: {:?}",
                        files_under(&folder)
                    );
                }
                // Temp files, not the lock files that say whose temp folder is whose.
                let temp: Vec<String> = files_under(&root.join(".tmp"))
                    .into_iter()
                    .filter(|f| !f.ends_with(".lock"))
                    .collect();
                assert!(temp.is_empty(), "temporary files are left: {temp:?}");
            }
            Output::S3 { bucket, store } => {
                for prefix in [format!("{id}/"), format!(".staging/{id}/")] {
                    let objects = store.list(&prefix).await.unwrap();
                    assert!(objects.is_empty(), "objects are left: {objects:?}");
                }
                let uploads = store
                    .client()
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap();
                let open: Vec<_> = uploads
                    .uploads()
                    .iter()
                    .filter_map(|u| u.key())
                    .filter(|k| k.contains(id.as_str()))
                    .collect();
                assert!(open.is_empty(), "unfinished uploads are left: {open:?}");
            }
        }
    }
}

fn job_id(status_url: &str) -> JobId {
    JobId::parse(status_url.rsplit('/').next().unwrap()).unwrap()
}

async fn cancel(t: &TestServer, url: &str) {
    let resp = t.http.delete(url).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let resp = t.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 404, "a cancelled export is gone");
}

async fn cancel_right_after_kickoff(s3: bool) {
    let Some(out) = Output::new(s3).await else {
        return;
    };
    let t = out
        .server(Options {
            patients: 20,
            ..Options::default()
        })
        .await;
    // A Group export: its plan writes the member list into the export's folder.
    for path in ["/$export", "/Group/small-cohort/$export"] {
        let url = t.start_export(path, "").await;
        cancel(&t, &url).await;
        t.settle().await;
        out.assert_nothing_left(&t, &job_id(&url)).await;
    }
    t.server.stop().await;
}

#[tokio::test]
async fn cancel_right_after_kickoff_leaves_nothing_on_a_local_folder() {
    cancel_right_after_kickoff(false).await;
}

#[tokio::test]
async fn cancel_right_after_kickoff_leaves_nothing_on_s3() {
    cancel_right_after_kickoff(true).await;
}

async fn cancel_mid_export(s3: bool) {
    let Some(out) = Output::new(s3).await else {
        return;
    };
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    let mut opts = Options {
        workers: 1,
        patients: 300,
        ..Options::default()
    }
    // Observation (5.8 MB) in two chunks of about six 512 KiB batches each, a tenth of a
    // second per batch: the cancel has several tenths to land before the first chunk could
    // end, however loaded the machine.
    .env("FHIR_EXPORT_CHUNK_BYTES", "3000000");
    opts.wrap.source = Some(Wrap::new(move |inner| {
        Arc::new(Wrapped(SlowSource {
            inner,
            delay: Duration::from_millis(100),
            batches: counted.clone(),
        }))
    }));
    let t = out.server(opts).await;
    let url = t.start_export("/$export", "_type=Observation").await;
    let id = job_id(&url);
    // In the middle of the first chunk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while batches.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no chunk started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cancel(&t, &url).await;
    let at_cancel = batches.load(Ordering::SeqCst);
    t.settle().await;
    let job = t.server.deps.jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(job.chunks_done, 0, "a chunk finished after the cancel");
    // The chunk in flight stops at the batch after the cancel; no other chunk starts.
    let read_after = batches.load(Ordering::SeqCst) - at_cancel;
    assert!(
        read_after <= 1,
        "{read_after} batches read after the cancel"
    );
    out.assert_nothing_left(&t, &id).await;
    t.server.stop().await;
}

#[tokio::test]
async fn cancel_mid_export_leaves_nothing_on_a_local_folder() {
    cancel_mid_export(false).await;
}

#[tokio::test]
async fn cancel_mid_export_leaves_nothing_on_s3() {
    cancel_mid_export(true).await;
}

/// The output store of the server, except that its second rename cancels the export (over
/// HTTP, as a client would) before it moves anything: the cancel lands while a chunk moves
/// its files into the export's folder, between two of them.
struct CancelBetweenRenames {
    inner: Arc<dyn ObjectStore>,
    renames: AtomicUsize,
    status_url: String,
    http: reqwest::Client,
}

#[async_trait]
impl StoreWrapper for CancelBetweenRenames {
    fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        if self.renames.fetch_add(1, Ordering::SeqCst) == 1 {
            let resp = self.http.delete(&self.status_url).send().await.unwrap();
            assert_eq!(resp.status(), 202);
        }
        self.inner.rename(from, to).await
    }
}

async fn cancel_while_a_chunk_publishes(s3: bool) {
    let Some(out) = Output::new(s3).await else {
        return;
    };
    let t = out
        .server(
            Options {
                workers: 0,
                patients: 8,
                ..Options::default()
            }
            .env("FHIR_EXPORT_MAX_FILE_BYTES", "3000"),
        )
        .await;
    let url = t.start_export("/$export", "_type=Patient").await;
    t.handle_next(1).await; // the plan
    let mut deps = t.server.deps.clone();
    let chunk = deps
        .queue
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .pop()
        .expect("the chunk message");
    deps.output = Arc::new(Wrapped(CancelBetweenRenames {
        inner: deps.output.clone(),
        renames: AtomicUsize::new(0),
        status_url: url.clone(),
        http: t.http.clone(),
    }));
    handle_message(&deps, &chunk.body, &NoLease)
        .await
        .expect("a cancelled export is not the chunk's failure");
    deps.queue.delete(&chunk.receipt).await.unwrap();
    assert_eq!(t.http.get(&url).send().await.unwrap().status(), 404);
    out.assert_nothing_left(&t, &job_id(&url)).await;
    t.server.stop().await;
}

#[tokio::test]
async fn cancel_while_a_chunk_publishes_leaves_nothing_on_a_local_folder() {
    cancel_while_a_chunk_publishes(false).await;
}

#[tokio::test]
async fn cancel_while_a_chunk_publishes_leaves_nothing_on_s3() {
    cancel_while_a_chunk_publishes(true).await;
}

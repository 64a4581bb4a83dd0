//! Ports that defer to the server's own, for tests to change one or two of their calls: a
//! source slowed down and counting its batches, an object store with a call replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use shared::job::ReadSpec;
use shared::model::{LogicalId, ResourceType};
use shared::ports::{
    ByteStream, Encoding, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, Origin, ReadCriteria,
    RecordBatch, RecordReader, ResourceSource, SignedUrls, SourceError, SourcePlan,
};

/// A source that defers to another but where it says otherwise: implement `inner` (and
/// `open` to change the readers); [`Wrapped`] makes it a `ResourceSource` that forwards
/// every other call, so a new port method cannot be forgotten by one wrapper.
#[async_trait]
pub trait SourceWrapper: Send + Sync {
    fn inner(&self) -> &Arc<dyn ResourceSource>;

    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
        self.inner().open(read).await
    }
}

#[async_trait]
impl<W: SourceWrapper> ResourceSource for Wrapped<W> {
    async fn plan(&self, criteria: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
        self.0.inner().plan(criteria).await
    }
    async fn patients(
        &self,
        transaction_time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Vec<String>>, SourceError> {
        self.0.inner().patients(transaction_time).await
    }
    async fn plan_deletions(&self, criteria: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
        self.0.inner().plan_deletions(criteria).await
    }
    async fn types(&self) -> Result<Vec<ResourceType>, SourceError> {
        self.0.inner().types().await
    }
    async fn missing_types(
        &self,
        missing: &[ResourceType],
        strict: bool,
    ) -> Result<Vec<String>, SourceError> {
        self.0.inner().missing_types(missing, strict).await
    }
    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
        self.0.open(read).await
    }
    async fn read(&self, t: ResourceType, id: &LogicalId) -> Result<Option<Value>, SourceError> {
        self.0.inner().read(t, id).await
    }
    async fn existing(
        &self,
        t: ResourceType,
        ids: &[LogicalId],
    ) -> Result<HashSet<LogicalId>, SourceError> {
        self.0.inner().existing(t, ids).await
    }
    fn describe(&self) -> String {
        self.0.inner().describe()
    }
}

/// A source whose readers wait `delay` before each batch, so that a chunk takes many
/// batches' time, and count the batches they hand out.
pub struct SlowSource {
    pub inner: Arc<dyn ResourceSource>,
    pub delay: Duration,
    pub batches: Arc<AtomicUsize>,
}

struct SlowReader {
    inner: Box<dyn RecordReader>,
    delay: Duration,
    batches: Arc<AtomicUsize>,
}

#[async_trait]
impl RecordReader for SlowReader {
    async fn next_batch(&mut self, batch: &mut RecordBatch) -> Result<bool, SourceError> {
        tokio::time::sleep(self.delay).await;
        let more = self.inner.next_batch(batch).await?;
        if more {
            self.batches.fetch_add(1, Ordering::SeqCst);
        }
        Ok(more)
    }
    async fn describe(&mut self, origin: Origin) -> String {
        self.inner.describe(origin).await
    }
}

#[async_trait]
impl SourceWrapper for SlowSource {
    fn inner(&self) -> &Arc<dyn ResourceSource> {
        &self.inner
    }
    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
        Ok(Box::new(SlowReader {
            inner: self.inner.open(read).await?,
            delay: self.delay,
            batches: self.batches.clone(),
        }))
    }
}

/// An object store that defers every call to `inner()` unless a test overrides it.
#[async_trait]
pub trait StoreWrapper: Send + Sync + 'static {
    fn inner(&self) -> &Arc<dyn ObjectStore>;

    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        self.inner().put(key, data).await
    }
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.inner().encoded_writer(key, encoding).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        self.inner().rename(from, to).await
    }
}

/// The `ObjectStore` of a [`StoreWrapper`], the `ResourceSource` of a [`SourceWrapper`].
pub struct Wrapped<W>(pub W);

#[async_trait]
impl<W: StoreWrapper> ObjectStore for Wrapped<W> {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        self.0.put(key, data).await
    }
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.0.encoded_writer(key, Encoding::Identity).await
    }
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.0.encoded_writer(key, encoding).await
    }
    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError> {
        self.0.inner().read(key, start, end).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        self.0.inner().head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.0.inner().list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.0.inner().delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        self.0.inner().delete_prefix(prefix).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        self.0.rename(from, to).await
    }
    fn describe(&self) -> String {
        self.0.inner().describe()
    }
    async fn clean_abandoned(&self) -> Result<u64, ObjectError> {
        self.0.inner().clean_abandoned().await
    }
    async fn prepare_export(&self, prefix: &str, new_container: bool) -> Result<(), ObjectError> {
        self.0.inner().prepare_export(prefix, new_container).await
    }
    fn signer(&self) -> Option<&dyn SignedUrls> {
        self.0.inner().signer()
    }
}

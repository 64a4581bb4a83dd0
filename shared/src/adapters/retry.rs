//! Retries of an object store's calls that failed transiently.
//!
//! A chunk makes dozens of store calls; were each hiccup to fail the whole chunk, its
//! message would be spent on redeliveries (five, then the export fails) for a network blip.
//! So every idempotent call (all of [`ObjectStore`]'s: a rename that went through before its
//! answer was lost reports `NotFound`, which publishing treats as done) is tried again on a
//! transient error ([`ObjectError::is_transient`]): four tries, 25, 100 and 400 ms apart.
//! Refusals, missing objects and bad keys are answered at once. A streaming write cannot be
//! replayed: its failure fails the attempt, and the queue retries that.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::ports::{
    ByteStream, Encoding, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, SignedUrls,
};

const DELAYS: [Duration; 3] = [
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_millis(400),
];

pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
}

/// `store`, with its transient failures retried.
pub fn retrying(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(RetryingStore { inner: store })
}

async fn retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, ObjectError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ObjectError>>,
{
    let mut delays = DELAYS.iter();
    loop {
        match call().await {
            Err(e) if e.is_transient() => match delays.next() {
                Some(d) => {
                    tracing::debug!(call = what, error = %crate::error_chain(&e), "store call failed; trying again");
                    tokio::time::sleep(*d).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        retry("put", || self.inner.put(key, data.clone())).await
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        retry("writer", || self.inner.writer(key)).await
    }

    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        retry("writer", || self.inner.encoded_writer(key, encoding)).await
    }

    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError> {
        retry("read", || self.inner.read(key, start, end)).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        retry("head", || self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        retry("list", || self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        retry("delete", || self.inner.delete(key)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        retry("delete_prefix", || self.inner.delete_prefix(prefix)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        retry("rename", || self.inner.rename(from, to)).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn clean_abandoned(&self) -> Result<u64, ObjectError> {
        retry("clean_abandoned", || self.inner.clean_abandoned()).await
    }

    fn signer(&self) -> Option<&dyn SignedUrls> {
        self.inner.signer()
    }
}

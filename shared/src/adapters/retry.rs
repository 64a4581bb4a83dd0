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
use futures::future::BoxFuture;

use crate::ports::{
    ByteStream, Encoding, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, SignedUrls,
};

const DELAYS: [Duration; 3] = [
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_millis(400),
];

/// What a [`Guarded`] store does around every call of the store it wraps: retry it here,
/// fail it on purpose in [`super::faults`].
pub trait CallPolicy: Send + Sync + 'static {
    /// Runs `call` as the policy sees fit (again, or not at all); `what` names the call and
    /// `key` the object or prefix it is about.
    fn around<'a, T, F, Fut>(
        &'a self,
        what: &'static str,
        key: &'a str,
        call: F,
    ) -> BoxFuture<'a, Result<T, ObjectError>>
    where
        T: Send + 'a,
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, ObjectError>> + Send + 'a;
}

/// A store whose every call goes through a [`CallPolicy`]; the rest (`describe`, signing)
/// is the wrapped store's.
pub struct Guarded<P> {
    inner: Arc<dyn ObjectStore>,
    policy: P,
}

impl<P: CallPolicy> Guarded<P> {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: P) -> Self {
        Guarded { inner, policy }
    }
}

/// Retries a call that failed transiently, as the module says.
pub struct Retry;

impl CallPolicy for Retry {
    fn around<'a, T, F, Fut>(
        &'a self,
        what: &'static str,
        _key: &'a str,
        mut call: F,
    ) -> BoxFuture<'a, Result<T, ObjectError>>
    where
        T: Send + 'a,
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, ObjectError>> + Send + 'a,
    {
        Box::pin(async move {
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
        })
    }
}

/// `store`, with its transient failures retried.
pub fn retrying(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(Guarded::new(store, Retry))
}

#[async_trait]
impl<P: CallPolicy> ObjectStore for Guarded<P> {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        self.policy
            .around("put", key, || self.inner.put(key, data.clone()))
            .await
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.policy
            .around("writer", key, || self.inner.writer(key))
            .await
    }

    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.policy
            .around("writer", key, || self.inner.encoded_writer(key, encoding))
            .await
    }

    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError> {
        self.policy
            .around("read", key, || self.inner.read(key, start, end))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        self.policy
            .around("head", key, || self.inner.head(key))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.policy
            .around("list", prefix, || self.inner.list(prefix))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.policy
            .around("delete", key, || self.inner.delete(key))
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        self.policy
            .around("delete_prefix", prefix, || self.inner.delete_prefix(prefix))
            .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        self.policy
            .around("rename", from, || self.inner.rename(from, to))
            .await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn clean_abandoned(&self) -> Result<u64, ObjectError> {
        self.policy
            .around("clean_abandoned", "", || self.inner.clean_abandoned())
            .await
    }

    async fn prepare_export(&self, prefix: &str, new_container: bool) -> Result<(), ObjectError> {
        self.policy
            .around("prepare_export", prefix, || {
                self.inner.prepare_export(prefix, new_container)
            })
            .await
    }

    fn signer(&self) -> Option<&dyn SignedUrls> {
        self.inner.signer()
    }
}

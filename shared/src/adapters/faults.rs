//! Fault injection (`FHIR_EXPORT_FAULTS`), for seeing a deployment through what its backends
//! do now and then: messages delivered twice, store calls that fail. Off unless asked for;
//! the local server applies it (`docs/configuration.md`), and the tests use it to show that
//! exports still come out whole.
//!
//! - `duplicate-delivery`: every message sent to the work queue is sent twice, so that both
//!   copies are worked on, often at the same time.
//! - `object-store-errors=P`: each call to the output store fails with probability `P`
//!   (0 to 1) before it reaches the store, with a transient error; the caller's retries
//!   ([`super::retry`]) and the queue's redeliveries have to make up for it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::retry::{CallPolicy, Guarded};
use crate::ports::{Delivery, ObjectError, ObjectStore, QueueError, WorkQueue};

/// What `FHIR_EXPORT_FAULTS` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    pub duplicate_delivery: bool,
    /// Probability that one output store call fails.
    pub object_store_errors: f64,
}

impl Faults {
    /// Parses `duplicate-delivery,object-store-errors=0.1` (either, both, or empty).
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                None if item == "duplicate-delivery" => faults.duplicate_delivery = true,
                Some(("object-store-errors", p)) => {
                    let p: f64 = p
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{p}` is not a probability"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!("`{p}` is not a probability between 0 and 1"));
                    }
                    faults.object_store_errors = p;
                }
                _ => {
                    return Err(format!(
                        "unknown fault `{item}` (duplicate-delivery, object-store-errors=P)"
                    ));
                }
            }
        }
        Ok(faults)
    }

    pub fn is_none(&self) -> bool {
        *self == Faults::default()
    }

    pub fn queue(&self, queue: Arc<dyn WorkQueue>) -> Arc<dyn WorkQueue> {
        if self.duplicate_delivery {
            Arc::new(DuplicatingQueue { inner: queue })
        } else {
            queue
        }
    }

    pub fn store(&self, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        self.store_seeded(store, seed())
    }

    /// [`Faults::store`] with the failures drawn from `seed`: the same calls fail every run.
    pub fn store_seeded(&self, store: Arc<dyn ObjectStore>, seed: u64) -> Arc<dyn ObjectStore> {
        if self.object_store_errors > 0.0 {
            Arc::new(Guarded::new(
                store,
                Flaky {
                    rate: self.object_store_errors,
                    state: AtomicU64::new(seed | 1),
                },
            ))
        } else {
            store
        }
    }
}

/// Store calls failed on purpose so far, in this process (for tests and logs).
static INJECTED: AtomicU64 = AtomicU64::new(0);

pub fn injected_failures() -> u64 {
    INJECTED.load(Ordering::Relaxed)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ u64::from(std::process::id())) | 1
}

/// Sends every message twice.
pub struct DuplicatingQueue {
    inner: Arc<dyn WorkQueue>,
}

#[async_trait]
impl WorkQueue for DuplicatingQueue {
    async fn send(&self, group: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        let twice: Vec<String> = bodies.iter().flat_map(|b| [b.clone(), b.clone()]).collect();
        self.inner.send(group, twice).await
    }
    async fn receive(
        &self,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }
    async fn extend(
        &self,
        receipt: &str,
        visibility: std::time::Duration,
    ) -> Result<(), QueueError> {
        self.inner.extend(receipt, visibility).await
    }
}

/// Fails a store call now and then, before it reaches the store.
struct Flaky {
    rate: f64,
    /// xorshift64 state: good enough to scatter failures, and no dependency.
    state: AtomicU64,
}

impl Flaky {
    fn roll(&self, call: &str, key: &str) -> Result<(), ObjectError> {
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        if (x >> 11) as f64 / (1u64 << 53) as f64 <= self.rate {
            INJECTED.fetch_add(1, Ordering::Relaxed);
            Err(ObjectError::backend(
                key,
                format!("injected fault: `{call}` failed (FHIR_EXPORT_FAULTS)"),
            ))
        } else {
            Ok(())
        }
    }
}

impl CallPolicy for Flaky {
    fn around<'a, T, F, Fut>(
        &'a self,
        what: &'static str,
        key: &'a str,
        mut call: F,
    ) -> BoxFuture<'a, Result<T, ObjectError>>
    where
        T: Send + 'a,
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, ObjectError>> + Send + 'a,
    {
        let rolled = self.roll(what, key);
        Box::pin(async move {
            rolled?;
            call().await
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn specs() {
        assert!(Faults::parse("").expect("empty").is_none());
        let f = Faults::parse("duplicate-delivery, object-store-errors=0.1").expect("both");
        assert!(f.duplicate_delivery);
        assert!((f.object_store_errors - 0.1).abs() < 1e-9);
        assert!(Faults::parse("object-store-errors=2").is_err());
        assert!(Faults::parse("chaos").is_err());
    }

    #[tokio::test]
    async fn a_flaky_store_fails_about_as_often_as_asked_and_retries_make_up_for_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let local: Arc<dyn ObjectStore> =
            Arc::new(crate::adapters::local_fs::LocalFsStore::new(dir.path()).expect("store"));
        // Seeded: the same calls fail on every run of the test.
        let flaky = Faults::parse("object-store-errors=0.1")
            .expect("spec")
            .store_seeded(local, 0x5eed);
        let mut failures = 0;
        for _ in 0..2000 {
            if flaky.head("x").await.is_err() {
                failures += 1;
            }
        }
        // About one in ten, as asked.
        assert!((150..250).contains(&failures), "{failures} of 2000");
        let sturdy = crate::adapters::retry::retrying(flaky);
        for i in 0..200 {
            sturdy
                .put(&format!("k{i}"), Bytes::from_static(b"x"))
                .await
                .expect("retried through");
        }
        assert_eq!(sturdy.list("").await.expect("list").len(), 200);
    }
}

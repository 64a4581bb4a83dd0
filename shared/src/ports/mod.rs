//! Ports: the small object-safe traits the domain talks to. Adapters implement them; the
//! processes hold them as `Arc<dyn Port>`.
//!
//! Each port documents which error variant an adapter must return for which situation, so the
//! domain can act on it (a version conflict is retried or lost gracefully, a missing object is
//! a 404), and every other failure is `Backend` with its source kept.

mod events;
mod job_store;
mod object_store;
mod queue;
mod source;

pub use events::{
    AllSinks, EVENT_SOURCE, Event, EventError, EventSink, ExportEvent, NoEvents, TypeTotals,
};
pub use job_store::{ChunkCompletion, JobStore, Naming, PEEK_REUSE, StoreError};
pub use object_store::{
    AccessFault, AccessProblem, ByteStream, Encoding, ObjectError, ObjectMeta, ObjectStore,
    ObjectWriter, Refusal, SignedUrls, validate_key, write_probe,
};
pub use queue::{Delivery, QueueError, WorkQueue};
pub use source::{
    Applied, Fault, Origin, ReadCriteria, RecordBatch, RecordReader, ResourceSource, Run,
    SourceError, SourcePlan,
};

/// Boxed error source of a `Backend` variant.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

//! NDJSON: reading the head of a resource line, and writing rolled-over part files.

pub mod gzip;
pub mod head;
pub mod partial;
pub mod scan;
pub mod writer;

pub use head::{LineError, LineHead, read_head};
pub use writer::PartWriter;

//! What an export used: the worker's time and the requests it made to each billed service,
//! recorded per message and summed when the export completes. `fhir-export cost` turns a
//! record into money; `docs/cost.md` explains each field and what it leaves out.
//!
//! Requests are counted where they leave the process (an SDK interceptor, see
//! [`scope`]), attributed to the export whose message is being handled through a task-local
//! [`Meter`]. Time is the handling's wall time and the process's CPU time over it: exact on
//! Lambda, where a process handles one message at a time; on a local server that runs
//! several workers at once, CPU time is the whole process's and is over-counted.

mod meter;
#[cfg(any(
    feature = "dynamodb",
    feature = "sqs",
    feature = "s3",
    feature = "eventbridge"
))]
pub mod scope;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use meter::{Meter, cpu_time};

/// Services whose requests are counted, as named in [`Usage::requests`].
pub const S3: &str = "s3";
pub const SQS: &str = "sqs";
pub const DYNAMODB: &str = "dynamodb";
pub const EVENTBRIDGE: &str = "eventbridge";

/// The usage of an export, or of one message of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Worker messages handled (plan, every chunk attempt, finalize): on Lambda, one
    /// invocation and one SQS delivery each.
    pub messages: u64,
    /// Chunk attempts among them, and the resources they exported.
    pub chunks: u64,
    pub resources: u64,
    /// Wall time of the handling, summed over messages, and the longest one.
    pub wall_ms: u64,
    pub max_wall_ms: u64,
    /// Process CPU time (user + system) over the handling, summed, and the largest.
    pub cpu_ms: u64,
    pub max_cpu_ms: u64,
    /// Requests by service ([`S3`], [`SQS`], [`DYNAMODB`], [`EVENTBRIDGE`]) and operation
    /// (`PutObject`, `UpdateItem`, ...), each attempt counted: a retried request is billed
    /// twice.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// DynamoDB capacity, from the size of each request's items (see [`scope`]).
    pub dynamodb_read_units: f64,
    pub dynamodb_write_units: f64,
    /// Bytes of output files written (staged, then moved under their published names).
    pub bytes_written: u64,
    /// Bytes downloaded from S3 (`GetObject`: the source, and the worker's own intermediate
    /// files) and uploaded to it (`PutObject`, `UploadPart`).
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    /// Bytes of output files sent to clients through the server (not through pre-signed
    /// URLs), and the downloads.
    pub bytes_sent: u64,
    pub downloads: u64,
}

impl Usage {
    /// Adds `other` into `self`; maxima stay maxima.
    pub fn add(&mut self, other: &Usage) {
        self.messages += other.messages;
        self.chunks += other.chunks;
        self.resources += other.resources;
        self.wall_ms += other.wall_ms;
        self.max_wall_ms = self.max_wall_ms.max(other.max_wall_ms);
        self.cpu_ms += other.cpu_ms;
        self.max_cpu_ms = self.max_cpu_ms.max(other.max_cpu_ms);
        for (service, ops) in &other.requests {
            let mine = self.requests.entry(service.clone()).or_default();
            for (op, n) in ops {
                *mine.entry(op.clone()).or_default() += n;
            }
        }
        self.dynamodb_read_units += other.dynamodb_read_units;
        self.dynamodb_write_units += other.dynamodb_write_units;
        self.bytes_written += other.bytes_written;
        self.bytes_downloaded += other.bytes_downloaded;
        self.bytes_uploaded += other.bytes_uploaded;
        self.bytes_sent += other.bytes_sent;
        self.downloads += other.downloads;
    }

    /// Counts one request.
    pub fn count(&mut self, service: &str, operation: &str, n: u64) {
        *self
            .requests
            .entry(service.to_owned())
            .or_default()
            .entry(operation.to_owned())
            .or_default() += n;
    }

    /// Requests made to `service`, all operations.
    pub fn requests_to(&self, service: &str) -> u64 {
        self.requests
            .get(service)
            .map(|ops| ops.values().sum())
            .unwrap_or(0)
    }

    /// Requests of one operation.
    pub fn requests_of(&self, service: &str, operation: &str) -> u64 {
        self.requests
            .get(service)
            .and_then(|ops| ops.get(operation))
            .copied()
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_sums_counts_and_keeps_maxima() {
        let mut a = Usage {
            messages: 1,
            wall_ms: 10,
            max_wall_ms: 10,
            cpu_ms: 4,
            max_cpu_ms: 4,
            ..Usage::default()
        };
        a.count(S3, "PutObject", 2);
        let mut b = Usage {
            messages: 2,
            wall_ms: 30,
            max_wall_ms: 25,
            cpu_ms: 3,
            max_cpu_ms: 2,
            dynamodb_write_units: 1.5,
            ..Usage::default()
        };
        b.count(S3, "PutObject", 1);
        b.count(SQS, "SendMessage", 1);
        a.add(&b);
        assert_eq!(a.messages, 3);
        assert_eq!(a.wall_ms, 40);
        assert_eq!(a.max_wall_ms, 25);
        assert_eq!(a.max_cpu_ms, 4);
        assert_eq!(a.requests_of(S3, "PutObject"), 3);
        assert_eq!(a.requests_to(SQS), 1);
        assert_eq!(a.dynamodb_write_units, 1.5);
        let back: Usage =
            serde_json::from_str(&serde_json::to_string(&a).expect("json")).expect("parse");
        assert_eq!(back, a);
    }
}

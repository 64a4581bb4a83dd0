//! Adapters that ship with the domain crate. Cloud adapters live behind cargo features so
//! that each function links only what it uses.

#[cfg(any(feature = "dynamodb", feature = "sqs", feature = "s3"))]
pub mod aws;
pub mod azure;
pub mod events;
pub mod faults;
#[cfg(feature = "fhir-server")]
pub mod fhir_server;
pub mod local_fs;
pub mod ndjson_source;
pub mod retry;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod target;

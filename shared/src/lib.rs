//! The domain crate of the FHIR Bulk Data `$export` service.
//!
//! Everything that is not a process entry point lives here: request parsing ([`request`]),
//! the job state machine ([`job`]), NDJSON writing ([`ndjson`]), the manifest
//! ([`manifest`]), the HTTP handlers ([`http`]), the worker ([`worker`]), the ports
//! ([`ports`]) and the adapters ([`adapters`]). See `docs/architecture.md`.

pub mod adapters;
pub mod auth;
pub mod buffers;
pub mod compartment;
pub mod config;
pub mod elements;
pub mod fhir_defs;
pub mod group;
pub mod http;
pub mod job;
#[cfg(feature = "jose")]
pub mod jose;
pub mod layout;
pub mod manifest;
pub mod model;
pub mod ndjson;
pub mod outcome;
pub mod ports;
pub mod request;
pub mod schedule;
pub mod search;
pub mod settings;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod usage;
pub mod worker;

/// An error and its sources, `a: b: c`, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

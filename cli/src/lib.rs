//! The `fhir-export` command's library: the local server, the data generator, the client and
//! the benchmark, so that tests drive exactly what the binary runs.

pub mod auth;
pub mod bench;
pub mod client;
pub mod cost;
pub mod demo;
pub mod events;
pub mod listener;
pub mod schedules;
pub mod serve;
pub mod synth;
pub mod telemetry;

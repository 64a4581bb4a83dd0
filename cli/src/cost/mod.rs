//! `fhir-export cost`: what an export cost on AWS, from its usage record.
//!
//! The record ([`shared::usage::Usage`]) counts the worker's messages, time and requests and
//! the downloads through the server. The command prices them with the table of
//! [`prices`], adds what the record does not see but every export does (the kick-off, the
//! status polls, the event source mapping's receives and deletes) from flags, and prints a
//! table per service, or the same lines as JSON. Data transfer out is shown apart from the
//! total. `docs/cost.md` explains each line.

pub mod prices;
pub mod table;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use shared::usage::Usage;

pub use prices::{PRICES_DATE, Prices, Rate, US_EAST_1};
pub use table::{Arch, Estimate, Line, Model, estimate, render};

#[derive(clap::Args, Debug, Clone)]
pub struct CostArgs {
    /// The usage record, as JSON: a bare usage object, an export's completion event or log
    /// line (its `usage` member), or a status response's manifest (`extension.usage`). `-` or
    /// nothing reads standard input; several JSON documents (an events log) are summed.
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
    /// AWS region whose prices apply (only us-east-1 has a price table).
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Architecture of the Lambda functions.
    #[arg(long, value_enum, default_value_t = Arch::Arm64)]
    pub arch: Arch,
    /// Memory of the worker function, MB (the template's `WorkerMemorySize` default).
    #[arg(long, value_name = "MB", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(128..=10240))]
    pub worker_memory_mb: u32,
    /// Memory of the kick-off and status functions, MB.
    #[arg(long, value_name = "MB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(128..=10240))]
    pub api_memory_mb: u32,
    /// Status requests the client made until the manifest (each one API invocation, one HTTP
    /// API request and one DynamoDB read).
    #[arg(long, default_value_t = 10)]
    pub polls: u32,
    /// Billed duration of each kick-off, status or download invocation, ms.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub api_ms: u32,
    /// Hours the output files stay in S3 (storage is prorated over a 730-hour month); the
    /// template keeps them 48.
    #[arg(long, value_name = "HOURS", default_value_t = 48.0)]
    pub keep_hours: f64,
    /// Data transfer out to the internet that the record does not see, GB: downloads through
    /// pre-signed S3 URLs (about the output's size per download).
    #[arg(long, value_name = "GB", default_value_t = 0.0)]
    pub egress_gb: f64,
    /// Print the estimate as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("cannot read {input}")]
    Read {
        input: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{input} is not JSON (document {document})")]
    Json {
        input: String,
        document: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{input}: the usage record is malformed")]
    BadUsage {
        input: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{input}: no usage record found (expected a usage object, a `usage` member, or a manifest's `extension.usage`)"
    )]
    NoUsage { input: String },
    #[error("no price table for region {region}: supported regions are {supported}")]
    UnsupportedRegion { region: String, supported: String },
    #[error("--{flag} must be a number >= 0, not {value}")]
    Negative { flag: &'static str, value: f64 },
    #[error("cannot print the estimate")]
    Output(#[source] std::io::Error),
    #[error("cannot serialize the estimate")]
    Serialize(#[source] serde_json::Error),
}

/// Runs the command: reads the record, prices it, prints the table or JSON to stdout.
pub fn run(args: &CostArgs) -> Result<(), CostError> {
    let prices = prices::for_region(&args.region).ok_or_else(|| CostError::UnsupportedRegion {
        region: args.region.clone(),
        supported: prices::SUPPORTED_REGIONS.join(", "),
    })?;
    for (flag, value) in [
        ("keep-hours", args.keep_hours),
        ("egress-gb", args.egress_gb),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(CostError::Negative { flag, value });
        }
    }
    let (input, text) = read_input(args.file.as_deref())?;
    let (usage, records) = usage_from_json(&text, &input)?;
    let model = Model {
        arch: args.arch,
        worker_memory_mb: args.worker_memory_mb,
        api_memory_mb: args.api_memory_mb,
        api_ms: args.api_ms,
        polls: args.polls,
        keep_hours: args.keep_hours,
        egress_gb: args.egress_gb,
    };
    let estimate = table::estimate_records(&usage, records, &model, prices);
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&estimate).map_err(CostError::Serialize)?;
        s.push('\n');
        s
    } else {
        render(&estimate)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CostError::Output)
}

/// The input's name for messages, and its text.
fn read_input(file: Option<&Path>) -> Result<(String, String), CostError> {
    match file {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => {
            let input = p.display().to_string();
            match std::fs::read_to_string(p) {
                Ok(text) => Ok((input, text)),
                Err(source) => Err(CostError::Read { input, source }),
            }
        }
    }
}

fn read_stdin() -> Result<(String, String), CostError> {
    let input = "standard input".to_owned();
    let mut text = String::new();
    match std::io::stdin().read_to_string(&mut text) {
        Ok(_) => Ok((input, text)),
        Err(source) => Err(CostError::Read { input, source }),
    }
}

/// The usage record(s) of `text`, summed, and how many there were. Each JSON document is a
/// bare usage object, or holds one as a `usage` member, at any depth (a completion event, a
/// log line, a manifest's `extension`), the shallowest first; documents without one are
/// skipped, and none at all is an error.
pub fn usage_from_json(text: &str, input: &str) -> Result<(Usage, usize), CostError> {
    let mut total = Usage::default();
    let mut records = 0;
    let documents = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, document) in documents.enumerate() {
        let document = document.map_err(|source| CostError::Json {
            input: input.to_owned(),
            document: i + 1,
            source,
        })?;
        let Some(found) = find_usage(&document) else {
            continue;
        };
        let usage: Usage =
            serde_json::from_value(found.clone()).map_err(|source| CostError::BadUsage {
                input: input.to_owned(),
                source,
            })?;
        total.add(&usage);
        records += 1;
    }
    if records == 0 {
        return Err(CostError::NoUsage {
            input: input.to_owned(),
        });
    }
    Ok((total, records))
}

/// The shallowest `usage` object member of `document` (breadth first), else `document` if it
/// is itself a usage object.
fn find_usage(document: &Value) -> Option<&Value> {
    let mut level = vec![document];
    while !level.is_empty() {
        let mut next = Vec::new();
        for value in level {
            match value {
                Value::Object(map) => {
                    if let Some(usage @ Value::Object(_)) = map.get("usage") {
                        return Some(usage);
                    }
                    next.extend(map.values());
                }
                Value::Array(items) => next.extend(items.iter()),
                _ => {}
            }
        }
        level = next;
    }
    // A bare record has one of the members of a usage object (as serialized: no list to keep
    // in step with the record).
    let fields = match serde_json::to_value(Usage::default()) {
        Ok(Value::Object(fields)) => fields,
        _ => return None,
    };
    match document {
        Value::Object(map) if map.keys().any(|k| fields.contains_key(k)) => Some(document),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_record_a_usage_member_and_a_manifest_extension_are_all_found() {
        let bare = r#"{"messages": 3, "resources": 10}"#;
        let event =
            r#"{"type": "completed", "job": "j1", "usage": {"messages": 3, "resources": 10}}"#;
        let manifest = r#"{"transactionTime": "2026-01-01T00:00:00Z", "output": [{"type": "Patient", "url": "x"}],
            "extension": {"usage": {"messages": 3, "resources": 10}}}"#;
        let log_line = r#"{"level": "INFO", "fields": {"message": "export completed", "usage": {"messages": 3, "resources": 10}}}"#;
        for text in [bare, event, manifest, log_line] {
            let (usage, records) = usage_from_json(text, "t").unwrap();
            assert_eq!(
                (usage.messages, usage.resources, records),
                (3, 10, 1),
                "{text}"
            );
        }
    }

    #[test]
    fn several_documents_are_summed_and_those_without_usage_skipped() {
        let text = "{\"usage\": {\"messages\": 2, \"resources\": 5}}\n{\"type\": \"failed\"}\n{\"usage\": {\"messages\": 1, \"resources\": 7}}\n";
        let (usage, records) = usage_from_json(text, "t").unwrap();
        assert_eq!((usage.messages, usage.resources, records), (3, 12, 2));
    }

    #[test]
    fn no_usage_bad_json_and_a_malformed_record_are_errors() {
        assert!(matches!(
            usage_from_json(r#"{"output": []}"#, "t"),
            Err(CostError::NoUsage { .. })
        ));
        assert!(matches!(
            usage_from_json("", "t"),
            Err(CostError::NoUsage { .. })
        ));
        assert!(matches!(
            usage_from_json("{\"messages\": ", "t"),
            Err(CostError::Json { .. })
        ));
        assert!(matches!(
            usage_from_json(r#"{"usage": {"messages": "many"}}"#, "t"),
            Err(CostError::BadUsage { .. })
        ));
    }
}

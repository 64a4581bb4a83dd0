//! Logging: `RUST_LOG` filters (default `info`, `warn` for the demo's own output to stand out),
//! `FHIR_EXPORT_LOG_FORMAT=json` for JSON lines. `FHIR_EXPORT_AUDIT_LOG=FILE` also appends the
//! audit events (target `audit`: kick-off, status, cancel, file, token) to FILE as JSON lines,
//! whatever `RUST_LOG` says.

use std::sync::Mutex;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `default_level` applies when `RUST_LOG` is not set.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("FHIR_EXPORT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let console = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let console = if json {
        console.json().with_filter(filter).boxed()
    } else {
        console.compact().with_filter(filter).boxed()
    };
    let audit = std::env::var("FHIR_EXPORT_AUDIT_LOG")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .and_then(|path| {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.trim())
            {
                Ok(file) => Some(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_ansi(false)
                        .with_writer(Mutex::new(file))
                        .with_filter(Targets::new().with_target("audit", tracing::Level::INFO))
                        .boxed(),
                ),
                Err(e) => {
                    eprintln!("fhir-export: FHIR_EXPORT_AUDIT_LOG {path} cannot be opened: {e}");
                    None
                }
            }
        });
    let _ = tracing_subscriber::registry()
        .with(console)
        .with(audit)
        .try_init();
}

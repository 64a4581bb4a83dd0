//! Logging: `RUST_LOG` filters (default `info`, `warn` for the demo's own output to stand out), `FHIR_EXPORT_LOG_FORMAT=json` for JSON lines.

use tracing_subscriber::EnvFilter;

/// `default_level` applies when `RUST_LOG` is not set.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("FHIR_EXPORT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
}

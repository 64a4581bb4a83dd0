//! What the four Lambda functions share: typed configuration from the environment, JSON logs,
//! and the host around an axum router (the FHIR base path, the caller's identity taken from the
//! API Gateway JWT authorizer, `OperationOutcome` fallbacks).
//!
//! Environment (see `docs/configuration.md`): `FHIR_EXPORT_PUBLIC_URL` (required),
//! `FHIR_EXPORT_BASE_PATH` (default `/fhir`), `FHIR_EXPORT_TABLE`, `FHIR_EXPORT_QUEUE_URL`,
//! `FHIR_EXPORT_DEAD_LETTER_QUEUE_ARN`, `FHIR_EXPORT_OUTPUT`, `FHIR_EXPORT_SOURCE`,
//! `FHIR_EXPORT_AZURE_SECRET` (feature `azure`: the Azure credential, see [`azure_secret`]),
//! `FHIR_EXPORT_UPSTREAM_SECRET` (feature `fhir-server`: the upstream FHIR server's
//! credential, see [`secret`]),
//! and the tuning variables of `shared::config`. Unlike the local server, files default to
//! `redirect` access: API Gateway cannot stream large bodies through a function.

#[cfg(feature = "azure")]
pub mod azure_secret;
#[cfg(feature = "http")]
mod host;
#[cfg(feature = "secrets")]
pub mod secret;

#[cfg(feature = "http")]
pub use host::{caller_of, host};
use std::sync::Arc;

use shared::adapters::aws::dynamodb::DynamoJobStore;
use shared::adapters::target::{SourceUrl, StoreSettings, StoreUrl, open_source, open_store_with};
use shared::config::{ConfigError, Env};
use shared::ports::{JobStore, ObjectStore, ResourceSource};
use shared::settings::{FileAccess, Settings};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The job table every function reads (`FHIR_EXPORT_TABLE`).
pub fn job_store<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    aws: &aws_config::SdkConfig,
) -> Result<Arc<dyn JobStore>, ConfigError> {
    Ok(Arc::new(DynamoJobStore::new(
        aws,
        &env.require("FHIR_EXPORT_TABLE")?,
    )))
}

/// The idle pause (template `PauseWhenIdle`), when `FHIR_EXPORT_WORK_QUEUE_ARN` names the work
/// queue: the mapping from it to the worker (`FHIR_EXPORT_WORKER_FUNCTION`, or this function
/// when it is the worker), paused after `FHIR_EXPORT_IDLE_QUIET_SECS` (default 600) without
/// new work.
#[cfg(feature = "idle")]
pub fn idle_switch<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    aws: &aws_config::SdkConfig,
) -> Result<Option<shared::adapters::aws::idle::IdleSwitch>, ConfigError> {
    let Some(queue_arn) = env.get("FHIR_EXPORT_WORK_QUEUE_ARN") else {
        return Ok(None);
    };
    let function = match env.get("FHIR_EXPORT_WORKER_FUNCTION") {
        Some(f) => f,
        None => env.require("AWS_LAMBDA_FUNCTION_NAME")?,
    };
    let quiet = env
        .secs("FHIR_EXPORT_IDLE_QUIET_SECS")?
        .unwrap_or(std::time::Duration::from_secs(600));
    // A producer that resumed a moment ago does not resume again for a minute: a shorter
    // quiet period could pause the worker under its next kick-off.
    let reuse = shared::adapters::aws::idle::RESUME_REUSE;
    if quiet < reuse {
        return Err(ConfigError::Invalid {
            name: "FHIR_EXPORT_IDLE_QUIET_SECS",
            value: quiet.as_secs().to_string(),
            reason: format!("must be at least {} seconds", reuse.as_secs()),
        });
    }
    Ok(Some(shared::adapters::aws::idle::IdleSwitch::new(
        aws,
        DynamoJobStore::new(aws, &env.require("FHIR_EXPORT_TABLE")?),
        &function,
        &queue_arn,
        quiet,
    )))
}

/// The idle pause's activity mark alone (the cancel function, whose announcement is work on
/// an export that is still active), when `FHIR_EXPORT_WORK_QUEUE_ARN` says the pause is on.
#[cfg(feature = "idle")]
pub fn activity_mark<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    aws: &aws_config::SdkConfig,
) -> Result<Option<shared::adapters::aws::idle::ActivityMark>, ConfigError> {
    if env.get("FHIR_EXPORT_WORK_QUEUE_ARN").is_none() {
        return Ok(None);
    }
    Ok(Some(shared::adapters::aws::idle::ActivityMark::new(
        DynamoJobStore::new(aws, &env.require("FHIR_EXPORT_TABLE")?),
    )))
}

/// The store named by an environment variable (`FHIR_EXPORT_OUTPUT`, `FHIR_EXPORT_SOURCE`).
pub async fn store<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
) -> Result<Arc<dyn ObjectStore>, Error> {
    let url = env.require(name)?;
    let settings = store_settings(env, &url).await?;
    Ok(open_store_with(&url, &settings).await?)
}

/// The resource source named by `FHIR_EXPORT_SOURCE`.
pub async fn source<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Arc<dyn ResourceSource>, Error> {
    let url = env.require("FHIR_EXPORT_SOURCE")?;
    let settings = store_settings(env, &url).await?;
    Ok(open_source(&SourceUrl::parse(&url)?, &settings).await?)
}

/// The variable naming the upstream FHIR server's secret.
#[cfg(feature = "fhir-server")]
pub const UPSTREAM_SECRET: &str = "FHIR_EXPORT_UPSTREAM_SECRET";

/// The upstream's secret: a JSON object of `FHIR_EXPORT_UPSTREAM_*` variables (a token, or a
/// SMART client id and private key), which override the environment's.
#[cfg(feature = "fhir-server")]
pub const UPSTREAM_KIND: secret::SecretKind = secret::SecretKind {
    variable: UPSTREAM_SECRET,
    names: shared::adapters::fhir_server::VARIABLES,
    family: "FHIR_EXPORT_UPSTREAM_*",
};

/// The settings a store URL is opened with, from `env`. The Azure credential's secret is read
/// only for an Azure URL: an S3 or local store must not depend on Secrets Manager (nor need
/// the permission to read the secret).
async fn store_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    url: &str,
) -> Result<StoreSettings, Error> {
    #[cfg(feature = "fhir-server")]
    if let Ok(SourceUrl::FhirServer(_)) = SourceUrl::parse(url)
        && let Some(id) = env.get(UPSTREAM_SECRET)
    {
        let pairs = secret::cached_pairs(id.trim(), UPSTREAM_KIND).await?;
        let overlay: std::collections::HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect();
        return Ok(StoreSettings::try_from_lookup(|k| {
            overlay.get(k).cloned().or_else(|| env.lookup(k))
        })?);
    }
    let settings = StoreSettings::try_from_lookup(|k| env.lookup(k))?;
    #[cfg(feature = "azure")]
    if let Ok(StoreUrl::Azure(_)) = StoreUrl::parse(url) {
        return Ok(StoreSettings {
            azure: azure_secret::azure_settings(env).await?,
            ..settings
        });
    }
    #[cfg(not(feature = "azure"))]
    let _ = url;
    Ok(settings)
}

/// What the status and cancel functions are built from: their configuration, the job table
/// and the output store, all from the process environment.
pub async fn jobs_and_output_from_env()
-> Result<(FunctionConfig, Arc<dyn JobStore>, Arc<dyn ObjectStore>), Error> {
    let env = Env::process();
    let config = FunctionConfig::from(&env)?;
    let aws = shared::adapters::aws::sdk_config().await;
    let jobs = job_store(&env, &aws)?;
    let output = store(&env, "FHIR_EXPORT_OUTPUT").await?;
    Ok((config, jobs, output))
}

/// Configuration every function reads.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub settings: Settings,
    /// Where the routers are mounted (`/fhir`).
    pub base_path: String,
    /// The token issuer the API Gateway JWT authorizer trusts (`FHIR_EXPORT_AUTH_ISSUER`).
    pub jwt_issuer: Option<String>,
    /// Its token endpoint (`FHIR_EXPORT_AUTH_TOKEN_URL`): when set, the kick-off function
    /// serves `.well-known/smart-configuration` naming it.
    pub token_endpoint: Option<String>,
}

impl FunctionConfig {
    pub fn from_env() -> Result<FunctionConfig, ConfigError> {
        Self::from(&Env::process())
    }

    pub fn from<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<FunctionConfig, ConfigError> {
        let public = env.require("FHIR_EXPORT_PUBLIC_URL")?;
        let base_path = env
            .get("FHIR_EXPORT_BASE_PATH")
            .unwrap_or_else(|| "/fhir".into());
        if !base_path.starts_with('/') || base_path.ends_with('/') {
            return Err(ConfigError::Invalid {
                name: "FHIR_EXPORT_BASE_PATH",
                value: base_path,
                reason: "must start with / and not end with /".into(),
            });
        }
        let mut settings = env.settings(&format!("{}{base_path}", public.trim_end_matches('/')))?;
        if env.get("FHIR_EXPORT_FILE_ACCESS").is_none() {
            settings.file_access = FileAccess::Redirect;
        }
        settings.authenticated = true;
        // Only the URL's form matters here (an Azure account root), so every function reads
        // it the same way whatever adapters it links.
        settings.container_per_export = match env.get("FHIR_EXPORT_OUTPUT") {
            Some(url) => StoreUrl::parse(&url)
                .map_err(|e| ConfigError::Invalid {
                    name: "FHIR_EXPORT_OUTPUT",
                    value: url.clone(),
                    reason: e.to_string(),
                })?
                .container_per_export(),
            None => false,
        };
        Ok(FunctionConfig {
            settings,
            base_path,
            jwt_issuer: env.get("FHIR_EXPORT_AUTH_ISSUER").filter(|v| !v.is_empty()),
            token_endpoint: env
                .get("FHIR_EXPORT_AUTH_TOKEN_URL")
                .filter(|v| !v.is_empty()),
        })
    }
}

/// JSON log lines (CloudWatch), filtered by `RUST_LOG` (default `info`); the audit events
/// (target `audit`) are kept whatever the level (`docs/security.md`).
///
/// `RUST_LOG` takes `target=level` directives (`warn`, `shared::worker=debug,info`): a
/// `Targets` filter, without `EnvFilter`'s span and field matching, which would link the regex
/// engine into every function (`docs/benchmarks.md`, binary size).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::fmt()
        .json()
        .without_time() // CloudWatch stamps every line
        .with_current_span(false)
        .finish()
        .with(filter)
        .try_init();
}

/// The filter of `RUST_LOG` (`info` when unset, empty or not understood), with the audit
/// events kept at `info`.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::filter::Targets {
    let filter = rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing_subscriber::filter::LevelFilter::INFO)
        });
    filter.with_target("audit", tracing_subscriber::filter::LevelFilter::INFO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn log_filter_from_rust_log() {
        use tracing_subscriber::filter::LevelFilter;
        let f = log_filter(None);
        assert!(f.would_enable("shared::worker", &tracing::Level::INFO));
        assert!(!f.would_enable("shared::worker", &tracing::Level::DEBUG));
        let f = log_filter(Some("warn,shared::worker=debug"));
        assert!(f.would_enable("shared::worker", &tracing::Level::DEBUG));
        assert!(!f.would_enable("aws_config", &tracing::Level::INFO));
        // Audit events are kept whatever the level.
        assert!(f.would_enable("audit", &tracing::Level::INFO));
        assert!(log_filter(Some("error")).would_enable("audit", &tracing::Level::INFO));
        assert_eq!(
            log_filter(Some("")).default_level(),
            Some(LevelFilter::INFO)
        );
    }

    #[cfg(feature = "idle")]
    #[test]
    fn idle_pause_from_env() {
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let switch = |vars: &[(&'static str, &'static str)]| {
            let vars: HashMap<&str, &str> = vars.iter().copied().collect();
            idle_switch(&Env::new(|k| vars.get(k).map(|v| (*v).to_owned())), &aws)
        };
        let on = [
            ("FHIR_EXPORT_WORK_QUEUE_ARN", "arn:aws:sqs:us-east-1:1:work"),
            ("FHIR_EXPORT_WORKER_FUNCTION", "worker"),
            ("FHIR_EXPORT_TABLE", "jobs"),
        ];
        assert!(switch(&on[1..]).expect("off").is_none());
        assert!(switch(&on).expect("on").is_some());
        // The worker names itself.
        let worker = [on[0], on[2], ("AWS_LAMBDA_FUNCTION_NAME", "stack-worker")];
        assert!(switch(&worker).expect("worker").is_some());
        assert_eq!(
            switch(&[on[0], on[2]]).err(),
            Some(ConfigError::Missing {
                name: "AWS_LAMBDA_FUNCTION_NAME"
            })
        );
        let short = [on[0], on[1], on[2], ("FHIR_EXPORT_IDLE_QUIET_SECS", "30")];
        match switch(&short) {
            Err(ConfigError::Invalid { name, reason, .. }) => {
                assert_eq!(name, "FHIR_EXPORT_IDLE_QUIET_SECS");
                assert!(reason.contains("at least 60"), "{reason}");
            }
            other => panic!("{:?}", other.map(|s| s.is_some())),
        }
    }

    #[test]
    fn config_from_env() {
        let vars: HashMap<&str, &str> =
            [("FHIR_EXPORT_PUBLIC_URL", "https://api.example.org/")].into();
        let env = Env::new(|k| vars.get(k).map(|v| (*v).to_owned()));
        let c = FunctionConfig::from(&env).expect("config");
        assert_eq!(c.settings.public_base_url, "https://api.example.org/fhir");
        assert_eq!(c.settings.file_access, FileAccess::Redirect);
        assert!(c.settings.requires_access_token());
        let empty = Env::new(|_| None);
        assert_eq!(
            FunctionConfig::from(&empty).expect_err("missing"),
            ConfigError::Missing {
                name: "FHIR_EXPORT_PUBLIC_URL"
            }
        );
    }
}

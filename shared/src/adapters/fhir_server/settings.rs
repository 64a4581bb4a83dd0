//! How the upstream source pages, paces and retries: `FHIR_EXPORT_UPSTREAM_*` variables
//! (`docs/configuration.md`).

use std::time::Duration;

/// The variables read, for documentation and the functions' secret.
pub const VARIABLES: &[&str] = &[
    "FHIR_EXPORT_UPSTREAM_PAGE_SIZE",
    "FHIR_EXPORT_UPSTREAM_CONCURRENCY",
    "FHIR_EXPORT_UPSTREAM_RATE",
    "FHIR_EXPORT_UPSTREAM_TIMEOUT_SECS",
    "FHIR_EXPORT_UPSTREAM_MAX_ATTEMPTS",
    "FHIR_EXPORT_UPSTREAM_BACKOFF_MS",
    "FHIR_EXPORT_UPSTREAM_MAX_BACKOFF_SECS",
    "FHIR_EXPORT_UPSTREAM_PATIENTS_PER_CHUNK",
    "FHIR_EXPORT_UPSTREAM_RESOURCE_BYTES",
    "FHIR_EXPORT_UPSTREAM_TOKEN",
    "FHIR_EXPORT_UPSTREAM_CLIENT_ID",
    "FHIR_EXPORT_UPSTREAM_PRIVATE_KEY",
    "FHIR_EXPORT_UPSTREAM_PRIVATE_KEY_FILE",
    "FHIR_EXPORT_UPSTREAM_KEY_ID",
    "FHIR_EXPORT_UPSTREAM_TOKEN_URL",
    "FHIR_EXPORT_UPSTREAM_SCOPE",
];

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `_count` of every search page.
    pub page_size: u32,
    /// Requests in flight at once, per process.
    pub concurrency: usize,
    /// Requests started per second, per process; `None`: as fast as answers come.
    pub requests_per_second: Option<f64>,
    pub timeout: Duration,
    /// Tries per request (the first included) before a failure is the chunk's.
    pub max_attempts: u32,
    /// The first retry's delay; each further one doubles it.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Patients whose compartments one chunk searches at once.
    pub patients_per_chunk: usize,
    /// A resource's size as planning guesses it (a count is all a server tells).
    pub resource_bytes: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            page_size: 1000,
            concurrency: 4,
            requests_per_second: None,
            timeout: Duration::from_secs(60),
            max_attempts: 6,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            patients_per_chunk: 200,
            resource_bytes: 1024,
        }
    }
}

impl UpstreamSettings {
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        fn num<T: std::str::FromStr>(
            lookup: &impl Fn(&str) -> Option<String>,
            name: &str,
            default: T,
            ok: impl Fn(&T) -> bool,
        ) -> Result<T, String> {
            match lookup(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<T>()
                    .ok()
                    .filter(|n| ok(n))
                    .ok_or_else(|| format!("{name}=`{v}` is not a valid value")),
            }
        }
        let d = UpstreamSettings::default();
        let rate: f64 = num(lookup, "FHIR_EXPORT_UPSTREAM_RATE", 0.0, |r| *r >= 0.0)?;
        Ok(UpstreamSettings {
            page_size: num(lookup, "FHIR_EXPORT_UPSTREAM_PAGE_SIZE", d.page_size, |n| {
                *n > 0
            })?,
            concurrency: num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_CONCURRENCY",
                d.concurrency,
                |n| *n > 0,
            )?,
            requests_per_second: (rate > 0.0).then_some(rate),
            timeout: Duration::from_secs(num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_TIMEOUT_SECS",
                60u64,
                |n| *n > 0,
            )?),
            max_attempts: num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_MAX_ATTEMPTS",
                d.max_attempts,
                |n| *n > 0,
            )?,
            backoff: Duration::from_millis(num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_BACKOFF_MS",
                500u64,
                |_| true,
            )?),
            max_backoff: Duration::from_secs(num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_MAX_BACKOFF_SECS",
                30u64,
                |_| true,
            )?),
            patients_per_chunk: num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_PATIENTS_PER_CHUNK",
                d.patients_per_chunk,
                |n| *n > 0,
            )?,
            resource_bytes: num(
                lookup,
                "FHIR_EXPORT_UPSTREAM_RESOURCE_BYTES",
                d.resource_bytes,
                |n| *n > 0,
            )?,
        })
    }

    /// The delay before retry `attempt` (from 1): doubling from `backoff`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse_nonsense() {
        let s = UpstreamSettings::from_lookup(&|k| match k {
            "FHIR_EXPORT_UPSTREAM_RATE" => Some("20".into()),
            "FHIR_EXPORT_UPSTREAM_PAGE_SIZE" => Some("250".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(s.page_size, 250);
        assert_eq!(s.requests_per_second, Some(20.0));
        let bad = UpstreamSettings::from_lookup(&|k| {
            (k == "FHIR_EXPORT_UPSTREAM_CONCURRENCY").then(|| "0".into())
        });
        assert!(
            bad.unwrap_err()
                .contains("FHIR_EXPORT_UPSTREAM_CONCURRENCY")
        );
        assert_eq!(s.backoff(1), Duration::from_millis(500));
        assert_eq!(s.backoff(3), Duration::from_secs(2));
        assert_eq!(s.backoff(30), Duration::from_secs(30));
    }
}

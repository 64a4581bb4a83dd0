//! Typed configuration from environment variables. A missing or malformed variable is named
//! in the error; nothing panics. Every variable is documented in `docs/configuration.md`.

use std::time::Duration;

use crate::settings::{FileAccess, Settings};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is required")]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Reads variables through a lookup function, so tests need not touch the process
/// environment.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        Env {
            lookup: |k| std::env::var(k).ok(),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Self {
        Env { lookup }
    }

    pub fn get(&self, name: &'static str) -> Option<String> {
        self.lookup(name)
    }

    /// As `get`, for a name known only at run time (a family of variables such as `AZURE_*`).
    pub fn lookup(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn require(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing { name })
    }

    pub fn parse<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    value: v.clone(),
                    reason: e.to_string(),
                }),
        }
    }

    pub fn secs(&self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        Ok(self.parse::<u64>(name)?.map(Duration::from_secs))
    }

    pub fn flag(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        match self
            .get(name)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => Ok(None),
            Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
            Some("0" | "false" | "no" | "off") => Ok(Some(false)),
            Some(other) => Err(ConfigError::Invalid {
                name,
                value: other.to_owned(),
                reason: "expected true or false".into(),
            }),
        }
    }

    /// The tuning settings, on top of a public base URL the host decided.
    pub fn settings(&self, public_base_url: &str) -> Result<Settings, ConfigError> {
        let mut s = Settings::new(public_base_url);
        if let Some(v) = self.secs("FHIR_EXPORT_RETRY_AFTER_SECS")? {
            s.retry_after = v;
        }
        if let Some(v) = self.secs("FHIR_EXPORT_RETENTION_SECS")? {
            s.retention = v;
        }
        if let Some(v) = self.parse::<u64>("FHIR_EXPORT_MAX_FILE_BYTES")? {
            s.max_file_bytes = positive("FHIR_EXPORT_MAX_FILE_BYTES", v)?;
        }
        if let Some(v) = self.parse::<u64>("FHIR_EXPORT_CHUNK_BYTES")? {
            s.chunk_bytes = positive("FHIR_EXPORT_CHUNK_BYTES", v)?;
        }
        if let Some(v) = self.parse::<u64>("FHIR_EXPORT_PACK_BYTES")? {
            s.pack_bytes = Some(v);
        }
        if let Some(v) = self.secs("FHIR_EXPORT_STALL_TIMEOUT_SECS")? {
            s.stall_timeout = v;
        }
        if let Some(v) = self.parse::<u32>("FHIR_EXPORT_MAX_RECOVERIES")? {
            s.max_recoveries = v;
        }
        if let Some(v) = self.secs("FHIR_EXPORT_VISIBILITY_TIMEOUT_SECS")? {
            s.visibility_timeout = v.max(Duration::from_secs(1));
        }
        if let Some(v) = self.secs("FHIR_EXPORT_METADATA_TTL_SECS")? {
            s.metadata_ttl = v;
        }
        if let Some(v) = self.secs("FHIR_EXPORT_SIGNED_URL_TTL_SECS")? {
            s.signed_url_ttl = v;
        }
        if let Some(v) = self.parse::<u32>("FHIR_EXPORT_MANIFEST_PAGE_CHUNKS")? {
            s.manifest_page_chunks =
                u32::try_from(positive("FHIR_EXPORT_MANIFEST_PAGE_CHUNKS", u64::from(v))?)
                    .unwrap_or(u32::MAX);
        }
        if let Some(v) = self.parse::<u64>("FHIR_EXPORT_MAX_TYPE_FILTERS")? {
            s.limits.type_filters =
                usize::try_from(positive("FHIR_EXPORT_MAX_TYPE_FILTERS", v)?).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.parse::<u64>("FHIR_EXPORT_MAX_FILTER_VALUES")? {
            s.limits.filter_values = usize::try_from(positive("FHIR_EXPORT_MAX_FILTER_VALUES", v)?)
                .unwrap_or(usize::MAX);
        }
        for (name, field) in [
            (
                "FHIR_EXPORT_MAX_TYPE_FILTER_CHARS",
                &mut s.limits.type_filter_chars,
            ),
            ("FHIR_EXPORT_MAX_PATIENTS", &mut s.limits.patients),
            ("FHIR_EXPORT_MAX_QUERY_BYTES", &mut s.limits.query_bytes),
            ("FHIR_EXPORT_MAX_BODY_BYTES", &mut s.limits.body_bytes),
            (
                "FHIR_EXPORT_MAX_ACTIVE_EXPORTS",
                &mut s.limits.active_exports,
            ),
        ] {
            if let Some(v) = self.parse::<u64>(name)? {
                *field = usize::try_from(positive(name, v)?).unwrap_or(usize::MAX);
            }
        }
        if let Some(v) = self.get("FHIR_EXPORT_OUTPUT_ENCODING") {
            s.output_encoding = match v.as_str() {
                "identity" => crate::ports::Encoding::Identity,
                "gzip" => crate::ports::Encoding::Gzip,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "FHIR_EXPORT_OUTPUT_ENCODING",
                        value: v,
                        reason: "expected identity or gzip".into(),
                    });
                }
            };
        }
        if let Some(v) = self.get("FHIR_EXPORT_FILE_ACCESS") {
            s.file_access = match v.as_str() {
                "served" => FileAccess::Served,
                "signed" => FileAccess::SignedUrls,
                "redirect" => FileAccess::Redirect,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "FHIR_EXPORT_FILE_ACCESS",
                        value: v,
                        reason: "expected served, signed or redirect".into(),
                    });
                }
            };
        }
        Ok(s)
    }
}

fn positive(name: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(ConfigError::Invalid {
            name,
            value: "0".into(),
            reason: "must be greater than zero".into(),
        })
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::new(move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        let s = env(&[]).settings("http://x/fhir/").expect("defaults");
        assert_eq!(s.public_base_url, "http://x/fhir");
        assert_eq!(s.max_file_bytes, 64 * 1024 * 1024);
        let s = env(&[
            ("FHIR_EXPORT_MAX_FILE_BYTES", "1000"),
            ("FHIR_EXPORT_FILE_ACCESS", "signed"),
        ])
        .settings("http://x")
        .expect("overrides");
        assert_eq!(s.max_file_bytes, 1000);
        assert_eq!(s.file_access, FileAccess::SignedUrls);
    }

    #[test]
    fn packing_follows_the_chunk_size_unless_set() {
        let s = env(&[("FHIR_EXPORT_CHUNK_BYTES", "1600")])
            .settings("http://x")
            .expect("settings");
        assert_eq!(s.pack_limit(), 100);
        let s = env(&[("FHIR_EXPORT_PACK_BYTES", "0")])
            .settings("http://x")
            .expect("settings");
        assert_eq!(s.pack_limit(), 0);
        let e = env(&[("FHIR_EXPORT_PACK_BYTES", "-1")])
            .settings("http://x")
            .expect_err("negative");
        assert!(e.to_string().contains("FHIR_EXPORT_PACK_BYTES"), "{e}");
    }

    #[test]
    fn errors_name_the_variable() {
        let e = env(&[("FHIR_EXPORT_CHUNK_BYTES", "lots")])
            .settings("http://x")
            .expect_err("bad");
        assert!(e.to_string().contains("FHIR_EXPORT_CHUNK_BYTES"), "{e}");
        let e = env(&[("FHIR_EXPORT_MAX_FILE_BYTES", "0")])
            .settings("http://x")
            .expect_err("zero");
        assert!(e.to_string().contains("FHIR_EXPORT_MAX_FILE_BYTES"), "{e}");
        assert_eq!(
            env(&[]).require("X_Y").expect_err("missing"),
            ConfigError::Missing { name: "X_Y" }
        );
    }
}

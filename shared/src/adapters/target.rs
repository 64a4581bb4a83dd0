//! Object stores named by URL, the way the command line and the functions' environment name
//! them: `file:///path` (or a plain path), `s3://bucket/prefix`, and Azure's `az://container/prefix`,
//! `https://account.blob.core.windows.net/container/prefix`,
//! `abfss://filesystem@account.dfs.core.windows.net/prefix` (see [`super::azure::location`]).
//! Every build parses every form; opening one needs its adapter's feature.

use std::path::PathBuf;
use std::sync::Arc;

use super::azure::AzureLocation;
use super::local_fs::LocalFsStore;
use crate::ports::{ObjectError, ObjectStore};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{url}` is not supported: {reason}")]
    Unsupported { url: String, reason: &'static str },
    #[error("`{url}` is not a valid store URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("cannot open `{url}`")]
    Open {
        url: String,
        #[source]
        source: ObjectError,
    },
}

/// A store URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Local(PathBuf),
    #[cfg(feature = "s3")]
    S3(super::aws::s3::S3Location),
    Azure(AzureLocation),
}

/// Credentials and endpoints of the stores that take them from settings rather than from a
/// shared SDK configuration: Azure's `AZURE_*` variables, from a host's environment (or, on
/// AWS, from a secret).
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    #[cfg(feature = "azure")]
    pub azure: super::azure::AzureSettings,
    /// How an upstream FHIR server is paged, paced and authenticated.
    #[cfg(feature = "fhir-server")]
    pub upstream: super::fhir_server::UpstreamSettings,
    #[cfg(feature = "fhir-server")]
    pub upstream_auth: super::fhir_server::Auth,
}

impl StoreSettings {
    /// From a host's view of its environment. A malformed `FHIR_EXPORT_UPSTREAM_*` value
    /// is refused, naming the variable.
    pub fn try_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TargetError> {
        #[cfg(not(any(feature = "azure", feature = "fhir-server")))]
        let _ = &lookup;
        Ok(StoreSettings {
            #[cfg(feature = "fhir-server")]
            upstream: super::fhir_server::UpstreamSettings::from_lookup(&lookup).map_err(
                |reason| TargetError::Invalid {
                    url: "FHIR_EXPORT_UPSTREAM_*".into(),
                    reason,
                },
            )?,
            #[cfg(feature = "fhir-server")]
            upstream_auth: super::fhir_server::Auth::from_lookup(&lookup).map_err(|reason| {
                TargetError::Invalid {
                    url: "FHIR_EXPORT_UPSTREAM_*".into(),
                    reason,
                }
            })?,
            #[cfg(feature = "azure")]
            azure: super::azure::AzureSettings::from_lookup(lookup),
        })
    }

    /// As [`try_from_lookup`](Self::try_from_lookup), with defaults where a value is
    /// malformed (it is refused when a source is opened with it: see `open_source`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let lookup = &lookup;
        Self::try_from_lookup(lookup).unwrap_or_else(|_| {
            #[cfg(not(feature = "azure"))]
            let _ = lookup;
            StoreSettings {
                #[cfg(feature = "azure")]
                azure: super::azure::AzureSettings::from_lookup(lookup),
                #[cfg(feature = "fhir-server")]
                upstream: Default::default(),
                #[cfg(feature = "fhir-server")]
                upstream_auth: super::fhir_server::Auth::from_lookup(lookup).unwrap_or_default(),
            }
        })
    }

    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, TargetError> {
        if let Some(rest) = url.strip_prefix("file://") {
            return Ok(StoreUrl::Local(PathBuf::from(rest)));
        }
        if url.starts_with("s3://") {
            #[cfg(feature = "s3")]
            {
                return super::aws::s3::S3Location::parse(url)
                    .map(StoreUrl::S3)
                    .map_err(|e| TargetError::Invalid {
                        url: url.to_owned(),
                        reason: e.to_string(),
                    });
            }
            #[cfg(not(feature = "s3"))]
            return Err(TargetError::Unsupported {
                url: url.to_owned(),
                reason: "this build has no S3 adapter (feature `s3`)",
            });
        }
        if AzureLocation::is_azure_url(url) {
            return AzureLocation::parse(url).map(StoreUrl::Azure).map_err(|e| {
                TargetError::Invalid {
                    // A URL with a query may carry a SAS: never repeated.
                    url: url.split(['?', '#']).next().unwrap_or("").to_owned(),
                    reason: e.to_string(),
                }
            });
        }
        if url.contains("://") {
            return Err(TargetError::Unsupported {
                url: url.to_owned(),
                reason: "unknown scheme (file://, s3://, az://, abfss://, https://<account>.blob.core.windows.net)",
            });
        }
        Ok(StoreUrl::Local(PathBuf::from(url)))
    }

    /// Whether exports without `_container` get a container of their own: an Azure
    /// account root.
    pub fn container_per_export(&self) -> bool {
        matches!(self, StoreUrl::Azure(l) if l.is_account_root())
    }

    /// Opens the store with settings from the process environment.
    pub async fn open(&self) -> Result<Arc<dyn ObjectStore>, TargetError> {
        self.open_with(&StoreSettings::from_env()).await
    }

    /// Opens the store; AWS configuration is loaded from the environment when needed.
    pub async fn open_with(
        &self,
        settings: &StoreSettings,
    ) -> Result<Arc<dyn ObjectStore>, TargetError> {
        #[cfg(not(feature = "azure"))]
        let _ = settings;
        match self {
            StoreUrl::Local(path) => LocalFsStore::new(path)
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                .map_err(|source| TargetError::Open {
                    url: path.display().to_string(),
                    source,
                }),
            #[cfg(feature = "s3")]
            StoreUrl::S3(location) => {
                let config = super::aws::sdk_config().await;
                Ok(Arc::new(super::aws::s3::S3Store::new(
                    &config,
                    location.clone(),
                )))
            }
            #[cfg(feature = "azure")]
            StoreUrl::Azure(location) => {
                super::azure::AzureStore::open(location.clone(), &settings.azure)
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                    .map_err(|e| TargetError::Invalid {
                        url: location.to_string(),
                        reason: e.to_string(),
                    })
            }
            #[cfg(not(feature = "azure"))]
            StoreUrl::Azure(location) => Err(TargetError::Unsupported {
                url: location.to_string(),
                reason: "this build has no Azure adapter (feature `azure`)",
            }),
        }
    }
}

/// What a source URL names: the NDJSON files of a store, or a FHIR server's REST API (any
/// `http://` or `https://` URL that is not an Azure storage account's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    Files(StoreUrl),
    /// The server's base, `https://server/fhir`, without a trailing `/`.
    FhirServer(String),
}

impl SourceUrl {
    pub fn parse(url: &str) -> Result<SourceUrl, TargetError> {
        let lower = url.to_ascii_lowercase();
        let web = lower.starts_with("https://") || lower.starts_with("http://");
        if !web || AzureLocation::is_azure_url(url) {
            return StoreUrl::parse(url).map(SourceUrl::Files);
        }
        let parsed = url::Url::parse(url).map_err(|e| TargetError::Invalid {
            url: url.split(['?', '#']).next().unwrap_or("").to_owned(),
            reason: e.to_string(),
        })?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(TargetError::Invalid {
                url: url.split(['?', '#']).next().unwrap_or("").to_owned(),
                reason: "a FHIR server's base URL carries no query or fragment".into(),
            });
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::Invalid {
                url: format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
                reason: "credentials go in FHIR_EXPORT_UPSTREAM_TOKEN, not in the URL".into(),
            });
        }
        Ok(SourceUrl::FhirServer(url.trim_end_matches('/').to_owned()))
    }

    /// The folder, when the source is NDJSON files in a local folder.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        match self {
            SourceUrl::Files(StoreUrl::Local(dir)) => Some(dir),
            _ => None,
        }
    }
}

/// The resource source a URL names, the one place a source is chosen by its URL: the
/// NDJSON files in the store it names (a folder, a bucket, a container), read through the
/// retry layer, or a FHIR server's REST API.
pub async fn open_source(
    url: &SourceUrl,
    settings: &StoreSettings,
) -> Result<Arc<dyn crate::ports::ResourceSource>, TargetError> {
    match url {
        SourceUrl::Files(store) => {
            let store = super::retry::retrying(store.open_with(settings).await?);
            Ok(Arc::new(super::ndjson_source::NdjsonSource::new(store, "")))
        }
        #[cfg(feature = "fhir-server")]
        SourceUrl::FhirServer(base) => Ok(Arc::new(
            super::fhir_server::FhirServerSource::new(
                base,
                settings.upstream_auth.clone(),
                settings.upstream.clone(),
            )
            .map_err(|e| TargetError::Invalid {
                url: base.clone(),
                reason: e.to_string(),
            })?,
        )),
        #[cfg(not(feature = "fhir-server"))]
        SourceUrl::FhirServer(base) => Err(TargetError::Unsupported {
            url: base.clone(),
            reason: "this build has no FHIR server source (feature `fhir-server`)",
        }),
    }
}

/// Parses and opens a store URL; the store's transient failures are retried
/// ([`super::retry`]).
pub async fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, TargetError> {
    open_store_with(url, &StoreSettings::from_env()).await
}

/// As [`open_store`], with the given store settings.
pub async fn open_store_with(
    url: &str,
    settings: &StoreSettings,
) -> Result<Arc<dyn ObjectStore>, TargetError> {
    Ok(super::retry::retrying(
        StoreUrl::parse(url)?.open_with(settings).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls() {
        assert_eq!(
            SourceUrl::parse("https://fhir.example/r4/").ok(),
            Some(SourceUrl::FhirServer("https://fhir.example/r4".into()))
        );
        assert!(matches!(
            SourceUrl::parse("https://acct1.blob.core.windows.net/exports/p"),
            Ok(SourceUrl::Files(StoreUrl::Azure(_)))
        ));
        assert!(matches!(
            SourceUrl::parse("data/ndjson"),
            Ok(SourceUrl::Files(StoreUrl::Local(_)))
        ));
        match SourceUrl::parse("https://user:secret@fhir.example/r4") {
            Err(TargetError::Invalid { url, .. }) => assert!(!url.contains("secret")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            SourceUrl::parse("https://fhir.example/r4?token=x"),
            Err(TargetError::Invalid { url, .. }) if !url.contains("token")
        ));
    }

    #[test]
    fn urls() {
        assert_eq!(
            StoreUrl::parse("file:///tmp/x").ok(),
            Some(StoreUrl::Local("/tmp/x".into()))
        );
        assert_eq!(
            StoreUrl::parse("out").ok(),
            Some(StoreUrl::Local("out".into()))
        );
        assert!(matches!(
            StoreUrl::parse("az://exports/p"),
            Ok(StoreUrl::Azure(l)) if l.container.as_deref() == Some("exports")
        ));
        let lake = StoreUrl::parse("abfss://lake@acct1.dfs.core.windows.net/p").expect("abfss");
        assert!(matches!(&lake, StoreUrl::Azure(l) if l.dfs));
        assert!(!lake.container_per_export());
        let account = StoreUrl::parse("https://acct1.blob.core.windows.net").expect("account");
        assert!(account.container_per_export());
        match StoreUrl::parse("az://Bad/p?sig=SECRET") {
            Err(TargetError::Invalid { url, .. }) => assert!(!url.contains("SECRET")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            StoreUrl::parse("ftp://x"),
            Err(TargetError::Unsupported { .. })
        ));
    }
}

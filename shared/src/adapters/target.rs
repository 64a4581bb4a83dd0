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
}

impl StoreSettings {
    /// From a host's view of its environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        #[cfg(not(feature = "azure"))]
        let _ = lookup;
        StoreSettings {
            #[cfg(feature = "azure")]
            azure: super::azure::AzureSettings::from_lookup(lookup),
        }
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

/// The resource source a URL names, the one place a source is chosen by its URL: today the
/// NDJSON files in the store it names (a folder, a bucket, a container), read through the
/// retry layer.
pub async fn open_source(
    url: &StoreUrl,
    settings: &StoreSettings,
) -> Result<Arc<dyn crate::ports::ResourceSource>, TargetError> {
    let store = super::retry::retrying(url.open_with(settings).await?);
    Ok(Arc::new(super::ndjson_source::NdjsonSource::new(store, "")))
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

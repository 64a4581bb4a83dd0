//! Object stores named by URL, the way the command line and the functions' environment name
//! them: `file:///path` (or a plain path), `s3://bucket/prefix`; `az://` and `abfss://` are
//! recognised and refused until the Azure adapter is part of the build.

use std::path::PathBuf;
use std::sync::Arc;

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
        if url.starts_with("az://") || url.starts_with("abfss://") {
            return Err(TargetError::Unsupported {
                url: url.to_owned(),
                reason: "the Azure Blob Storage / ADLS Gen2 adapter is not part of this build yet",
            });
        }
        if url.contains("://") {
            return Err(TargetError::Unsupported {
                url: url.to_owned(),
                reason: "unknown scheme (file://, s3://)",
            });
        }
        Ok(StoreUrl::Local(PathBuf::from(url)))
    }

    /// Opens the store; AWS configuration is loaded from the environment when needed.
    pub async fn open(&self) -> Result<Arc<dyn ObjectStore>, TargetError> {
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
        }
    }
}

/// Parses and opens a store URL; the store's transient failures are retried
/// ([`super::retry`]).
pub async fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, TargetError> {
    Ok(super::retry::retrying(StoreUrl::parse(url)?.open().await?))
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
            StoreUrl::parse("az://c/p"),
            Err(TargetError::Unsupported { .. })
        ));
        assert!(matches!(
            StoreUrl::parse("abfss://fs@acct.dfs.core.windows.net/p"),
            Err(TargetError::Unsupported { .. })
        ));
        assert!(matches!(
            StoreUrl::parse("ftp://x"),
            Err(TargetError::Unsupported { .. })
        ));
    }
}

//! Azure store URLs, parsed without the Azure client (so that every host can tell an Azure
//! target apart, and whether it is an account root, whatever adapters it links):
//!
//! | URL | account | container |
//! | --- | --- | --- |
//! | `az://container/prefix` | from the credential settings | `container` |
//! | `az://` | from the credential settings | none: the account root |
//! | `https://acct.blob.core.windows.net/container/prefix` | `acct` | `container` |
//! | `https://acct.blob.core.windows.net` | `acct` | none: the account root |
//! | `abfss://fs@acct.dfs.core.windows.net/prefix` | `acct` | `fs` (ADLS Gen2) |
//! | `https://acct.dfs.core.windows.net/fs/prefix` | `acct` | `fs` (ADLS Gen2) |
//!
//! At an account root, a key's first folder is its container: exports without `_container`
//! get a container of their own.

use std::fmt;

use crate::layout::valid_container;
use crate::ports::validate_key;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureLocation {
    /// `None`: from the credential settings (`AZURE_STORAGE_ACCOUNT_NAME`, the emulator's).
    pub account: Option<String>,
    /// `None`: the account root.
    pub container: Option<String>,
    /// `""` or a valid key ending in `/`; always `""` at an account root.
    pub prefix: String,
    /// Named through the ADLS Gen2 (`dfs`) endpoint. The adapter still speaks the Blob API,
    /// which every hierarchical-namespace account serves too.
    pub dfs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzureUrlError {
    #[error("not an Azure storage URL")]
    NotAzure,
    #[error(
        "`{0}` is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
    )]
    InvalidContainer(String),
    #[error("`{0}` is not a valid storage account name (3-24 lowercase letters and digits)")]
    InvalidAccount(String),
    #[error("`{0}` is not a valid key prefix (letters, digits, `-`, `_`, `.`, single `/`s)")]
    InvalidPrefix(String),
    #[error("a prefix needs a container: the account root holds containers only")]
    PrefixWithoutContainer,
    #[error("{0}")]
    Malformed(&'static str),
}

/// Storage account names: 3-24 lowercase letters and digits.
fn valid_account(name: &str) -> bool {
    (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `host` = `<account>.<service>.core.windows.net`: the account.
fn account_of_host<'h>(host: &'h str, service: &str) -> Option<&'h str> {
    let (account, rest) = host.split_once('.')?;
    rest.eq_ignore_ascii_case(&format!("{service}.core.windows.net"))
        .then_some(account)
}

impl AzureLocation {
    /// Whether `url` is meant for this adapter (`az://`, `abfss://`, an Azure storage host),
    /// so that a bad one is reported as an Azure URL rather than as an unknown scheme.
    pub fn is_azure_url(url: &str) -> bool {
        let lower = url.to_ascii_lowercase();
        lower.starts_with("az://")
            || lower.starts_with("abfss://")
            || lower.strip_prefix("https://").is_some_and(|rest| {
                let host = rest.split('/').next().unwrap_or("");
                account_of_host(host, "blob").is_some() || account_of_host(host, "dfs").is_some()
            })
    }

    pub fn parse(url: &str) -> Result<AzureLocation, AzureUrlError> {
        let lower = url.to_ascii_lowercase();
        let (account, container, path, dfs) = if lower.starts_with("az://") {
            let rest = &url[5..];
            let (container, path) = rest.split_once('/').unwrap_or((rest, ""));
            (None, container, path, false)
        } else if lower.starts_with("abfss://") {
            let rest = &url[8..];
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (fs, host) = authority.split_once('@').ok_or(AzureUrlError::Malformed(
                "an abfss:// URL is abfss://<filesystem>@<account>.dfs.core.windows.net/<prefix>",
            ))?;
            let account = account_of_host(host, "dfs").ok_or(AzureUrlError::Malformed(
                "an abfss:// URL's host is <account>.dfs.core.windows.net",
            ))?;
            (Some(account), fs, path, true)
        } else if lower.starts_with("https://") {
            let rest = &url[8..];
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (account, dfs) = match (account_of_host(host, "blob"), account_of_host(host, "dfs"))
            {
                (Some(a), _) => (a, false),
                (None, Some(a)) => (a, true),
                (None, None) => return Err(AzureUrlError::NotAzure),
            };
            let (container, path) = path.split_once('/').unwrap_or((path, ""));
            (Some(account), container, path, dfs)
        } else {
            return Err(AzureUrlError::NotAzure);
        };
        if let Some(a) = account
            && !valid_account(a)
        {
            return Err(AzureUrlError::InvalidAccount(a.to_owned()));
        }
        if url.contains(['?', '#']) {
            // A SAS pasted into the URL would end up in logs; credentials go in settings.
            return Err(AzureUrlError::Malformed(
                "a store URL carries no query or fragment: give a SAS token in AZURE_STORAGE_SAS_TOKEN",
            ));
        }
        let container = match container {
            "" if !path.is_empty() => return Err(AzureUrlError::PrefixWithoutContainer),
            "" => None,
            c if valid_container(c) => Some(c.to_owned()),
            c => return Err(AzureUrlError::InvalidContainer(c.to_owned())),
        };
        let prefix = if path.is_empty() || path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        // Signed links are computed over the encoded path: characters that need encoding
        // (spaces...) would give links Azure refuses, so a prefix keeps to safe ones.
        let safe = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !safe || validate_key(&prefix).is_err() {
            return Err(AzureUrlError::InvalidPrefix(prefix));
        }
        Ok(AzureLocation {
            account: account.map(str::to_owned),
            container,
            prefix,
            dfs,
        })
    }

    /// Whether keys' first folder is their container (an account root).
    pub fn is_account_root(&self) -> bool {
        self.container.is_none()
    }
}

impl fmt::Display for AzureLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self.prefix.trim_end_matches('/');
        let container = self.container.as_deref().unwrap_or("");
        match (&self.account, self.dfs) {
            (Some(a), true) => write!(f, "abfss://{container}@{a}.dfs.core.windows.net")?,
            (Some(a), false) => write!(f, "https://{a}.blob.core.windows.net/{container}")?,
            (None, _) => write!(f, "az://{container}")?,
        }
        if !prefix.is_empty() {
            write!(f, "/{prefix}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(
        account: Option<&str>,
        container: Option<&str>,
        prefix: &str,
        dfs: bool,
    ) -> AzureLocation {
        AzureLocation {
            account: account.map(str::to_owned),
            container: container.map(str::to_owned),
            prefix: prefix.to_owned(),
            dfs,
        }
    }

    #[test]
    fn forms() {
        let cases = [
            (
                "az://exports/fhir",
                loc(None, Some("exports"), "fhir/", false),
            ),
            ("az://exports", loc(None, Some("exports"), "", false)),
            ("az://", loc(None, None, "", false)),
            (
                "https://acct1.blob.core.windows.net/exports/a/b/",
                loc(Some("acct1"), Some("exports"), "a/b/", false),
            ),
            (
                "https://acct1.blob.core.windows.net",
                loc(Some("acct1"), None, "", false),
            ),
            (
                "https://acct1.blob.core.windows.net/",
                loc(Some("acct1"), None, "", false),
            ),
            (
                "abfss://lake@acct1.dfs.core.windows.net/bulk",
                loc(Some("acct1"), Some("lake"), "bulk/", true),
            ),
            (
                "https://acct1.dfs.core.windows.net/lake/bulk",
                loc(Some("acct1"), Some("lake"), "bulk/", true),
            ),
        ];
        for (url, want) in cases {
            let got = AzureLocation::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(got, want, "{url}");
            assert!(AzureLocation::is_azure_url(url), "{url}");
            // Display gives a URL that parses back to the same place.
            assert_eq!(AzureLocation::parse(&got.to_string()), Ok(want), "{got}");
        }
    }

    #[test]
    fn refusals() {
        use AzureUrlError as E;
        type Check = fn(&AzureUrlError) -> bool;
        let cases: [(&str, Check); 10] = [
            ("az://Bad_Container/x", |e| {
                matches!(e, E::InvalidContainer(_))
            }),
            ("az://ab", |e| matches!(e, E::InvalidContainer(_))),
            ("az://exports/../x", |e| matches!(e, E::InvalidPrefix(_))),
            ("az://exports/a//b", |e| matches!(e, E::InvalidPrefix(_))),
            ("az://exports/my exports", |e| {
                matches!(e, E::InvalidPrefix(_))
            }),
            ("https://acct1.blob.core.windows.net//x", |e| {
                matches!(e, E::PrefixWithoutContainer)
            }),
            ("abfss://acct1.dfs.core.windows.net/x", |e| {
                matches!(e, E::Malformed(_))
            }),
            ("abfss://fs@example.org/x", |e| matches!(e, E::Malformed(_))),
            ("https://UPPER.blob.core.windows.net/c", |e| {
                matches!(e, E::InvalidAccount(_))
            }),
            ("az://exports/x?sv=2024&sig=secret", |e| {
                matches!(e, E::Malformed(_))
            }),
        ];
        for (url, ok) in cases {
            match AzureLocation::parse(url) {
                Err(e) => assert!(ok(&e), "{url}: {e:?}"),
                Ok(l) => panic!("{url} parsed as {l:?}"),
            }
        }
        assert_eq!(
            AzureLocation::parse("https://fhir.example.org/fhir"),
            Err(AzureUrlError::NotAzure)
        );
        assert!(!AzureLocation::is_azure_url(
            "https://fhir.example.org/fhir"
        ));
        assert!(!AzureLocation::is_azure_url("s3://bucket"));
    }

    #[test]
    fn the_sas_is_never_echoed() {
        let err = AzureLocation::parse("az://exports/x?sv=2024&sig=secret").expect_err("query");
        assert!(!err.to_string().contains("secret"));
    }
}

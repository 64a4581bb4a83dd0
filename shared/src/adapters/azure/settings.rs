//! Where the Azure adapter's account, endpoint and credential come from: the standard
//! `AZURE_STORAGE_*` / `AZURE_*` variables (from the process environment, or from a secret on
//! AWS), a connection string, or the emulator's well-known settings.
//!
//! Values are secrets: `Debug` prints the names only, and nothing here is logged.

use std::collections::BTreeMap;
use std::fmt;

/// The variables read, in the spelling Azure's SDKs and tools use.
pub const VARIABLES: &[&str] = &[
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_STORAGE_USE_EMULATOR",
    "AZURITE_BLOB_STORAGE_URL",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_MSI_ENDPOINT",
    "IDENTITY_ENDPOINT",
    "AZURE_OBJECT_ID",
    "AZURE_MSI_RESOURCE_ID",
    "AZURE_CREDENTIAL_TYPE",
];

/// Azurite's account and key, published in Azure's documentation for the emulator.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const EMULATOR_URL: &str = "http://127.0.0.1:10000";

/// The variables that reach Azurite at `url` (its account and published key), for a process's
/// environment.
pub fn emulator_variables(url: &str) -> [(&'static str, String); 2] {
    [
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_owned()),
        ("AZURITE_BLOB_STORAGE_URL", url.to_owned()),
    ]
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct AzureSettings {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzureSettingsError {
    #[error("AZURE_STORAGE_CONNECTION_STRING: `{0}` is not a `Name=value` pair")]
    ConnectionString(String),
    #[error("no storage account: name one in the URL or in AZURE_STORAGE_ACCOUNT_NAME")]
    NoAccount,
}

impl AzureSettings {
    /// The variables of [`VARIABLES`] that `lookup` knows (the process environment, or a
    /// host's view of it).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self::from_pairs(VARIABLES.iter().filter_map(|k| lookup(k).map(|v| (*k, v))))
    }

    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The settings that reach Azurite at `url`.
    pub fn emulator(url: &str) -> Self {
        Self::from_pairs(emulator_variables(url))
    }

    /// Settings from name/value pairs (a secret's JSON object); names are the variables'.
    pub fn from_pairs<K: AsRef<str>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let values = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_ascii_uppercase(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        AzureSettings { values }
    }

    /// `other`'s values win.
    pub fn overlaid(mut self, other: &AzureSettings) -> Self {
        self.values
            .extend(other.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
    }

    /// What the client is built from: the account, the Blob endpoint, and the remaining
    /// object_store settings (credential and identity), with a connection string and the
    /// emulator spelled out.
    pub(super) fn resolve(
        &self,
        url_account: Option<&str>,
    ) -> Result<Resolved, AzureSettingsError> {
        let mut config: BTreeMap<String, String> = BTreeMap::new();
        let mut endpoint = self.get("AZURE_STORAGE_ENDPOINT").map(str::to_owned);
        let mut account = self.get("AZURE_STORAGE_ACCOUNT_NAME").map(str::to_owned);
        let mut emulator = self.flag("AZURE_STORAGE_USE_EMULATOR");
        if let Some(cs) = self.get("AZURE_STORAGE_CONNECTION_STRING") {
            for part in cs.split(';').filter(|p| !p.trim().is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| AzureSettingsError::ConnectionString(redact(part)))?;
                match k.trim() {
                    "AccountName" => account = Some(v.to_owned()),
                    "AccountKey" => {
                        config.insert("azure_storage_account_key".into(), v.to_owned());
                    }
                    "SharedAccessSignature" => {
                        config.insert("azure_storage_sas_key".into(), v.to_owned());
                    }
                    "BlobEndpoint" => endpoint = Some(v.to_owned()),
                    "UseDevelopmentStorage" => emulator = v.eq_ignore_ascii_case("true"),
                    _ => {}
                }
            }
        }
        for name in VARIABLES {
            let lower = name.to_ascii_lowercase();
            if matches!(
                *name,
                "AZURE_STORAGE_CONNECTION_STRING"
                    | "AZURE_STORAGE_ENDPOINT"
                    | "AZURE_STORAGE_ACCOUNT_NAME"
                    | "AZURE_STORAGE_USE_EMULATOR"
                    | "AZURITE_BLOB_STORAGE_URL"
            ) {
                continue;
            }
            if let Some(v) = self.get(name) {
                config.insert(lower, v.to_owned());
            }
        }
        if emulator {
            // Path-style addressing under the emulator's URL, its account and (unless another
            // credential is given) its published key.
            let account = account.get_or_insert_with(|| EMULATOR_ACCOUNT.to_owned());
            let base = self.get("AZURITE_BLOB_STORAGE_URL").unwrap_or(EMULATOR_URL);
            endpoint = Some(format!("{}/{account}", base.trim_end_matches('/')));
            let has_credential = [
                "azure_storage_account_key",
                "azure_storage_access_key",
                "azure_storage_sas_key",
                "azure_storage_sas_token",
                "azure_storage_token",
            ]
            .iter()
            .any(|k| config.contains_key(*k));
            if !has_credential {
                config.insert("azure_storage_account_key".into(), EMULATOR_KEY.into());
            }
        }
        let account = url_account
            .map(str::to_owned)
            .or(account)
            .ok_or(AzureSettingsError::NoAccount)?;
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let can_sign = !["azure_storage_sas_key", "azure_storage_sas_token"]
            .iter()
            .any(|k| config.contains_key(*k));
        Ok(Resolved {
            allow_http: endpoint.starts_with("http://"),
            account,
            endpoint,
            config,
            can_sign,
        })
    }
}

/// A connection-string part, for an error message: the name, never the value.
fn redact(part: &str) -> String {
    match part.split_once('=') {
        Some((k, _)) => format!("{k}=..."),
        None => "(a part without `=`)".to_owned(),
    }
}

pub(super) struct Resolved {
    pub account: String,
    /// The account's Blob endpoint, without a trailing `/`.
    pub endpoint: String,
    pub allow_http: bool,
    /// object_store configuration keys and values (credential, identity).
    pub config: BTreeMap<String, String>,
    /// Whether the credential can sign SAS URLs (an account key, or Entra ID for a
    /// user-delegation SAS); a SAS token cannot.
    pub can_sign: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_and_connection_strings() {
        let s = AzureSettings::from_pairs([
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:4711/"),
        ]);
        let r = s.resolve(None).expect("resolve");
        assert_eq!(r.account, EMULATOR_ACCOUNT);
        assert_eq!(r.endpoint, "http://127.0.0.1:4711/devstoreaccount1");
        assert!(r.allow_http && r.can_sign);
        assert_eq!(
            r.config
                .get("azure_storage_account_key")
                .map(String::as_str),
            Some(EMULATOR_KEY)
        );

        let s = AzureSettings::from_pairs([(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )]);
        let r = s.resolve(None).expect("resolve");
        assert_eq!(r.account, "acct1");
        assert_eq!(r.endpoint, "https://acct1.blob.core.windows.net");
        assert!(!r.allow_http && r.can_sign);

        let s = AzureSettings::from_pairs([("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=x")]);
        let r = s.resolve(Some("acct2")).expect("resolve");
        assert_eq!(r.account, "acct2");
        assert!(!r.can_sign, "a SAS token cannot sign other SAS URLs");

        assert_eq!(
            AzureSettings::default().resolve(None).err(),
            Some(AzureSettingsError::NoAccount)
        );
        let bad = AzureSettings::from_pairs([(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=a;AccountKeySECRET",
        )]);
        let err = bad.resolve(None).err().expect("bad");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = AzureSettings::from_pairs([("AZURE_STORAGE_ACCOUNT_KEY", "SECRET")]);
        let shown = format!("{s:?}");
        assert!(shown.contains("AZURE_STORAGE_ACCOUNT_KEY") && !shown.contains("SECRET"));
        let over = AzureSettings::from_pairs([("azure_storage_account_key", "OTHER")]);
        let merged = s.overlaid(&over);
        assert_eq!(merged.get("AZURE_STORAGE_ACCOUNT_KEY"), Some("OTHER"));
    }
}

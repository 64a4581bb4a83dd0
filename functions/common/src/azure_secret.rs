//! The Azure credential on AWS: a Secrets Manager secret named by `FHIR_EXPORT_AZURE_SECRET`
//! (an ARN or a name) whose `SecretString` is a JSON object of the `AZURE_*` variables the
//! Azure adapter reads (`shared::adapters::azure::settings::VARIABLES`), e.g.
//! `{"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "..."}`. How secrets
//! are read, kept and reported: [`crate::secret`].

use shared::adapters::azure::AzureSettings;
use shared::adapters::azure::settings::VARIABLES;
use shared::config::Env;

#[cfg(test)]
use crate::secret::classify;
use crate::secret::{SecretKind, cached_pairs, parse_pairs, read_pairs};

pub use crate::secret::SecretError as AzureSecretError;

/// The variable naming the secret.
pub const SECRET_VARIABLE: &str = "FHIR_EXPORT_AZURE_SECRET";

pub const KIND: SecretKind = SecretKind {
    variable: SECRET_VARIABLE,
    names: VARIABLES,
    family: "AZURE_*",
};

/// The Azure settings of a function: the `AZURE_*` variables of `env`, overlaid with those of
/// the secret named by `FHIR_EXPORT_AZURE_SECRET` (the secret wins), read once per process.
pub async fn azure_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<AzureSettings, AzureSecretError> {
    let from_env = AzureSettings::from_lookup(|k| env.lookup(k));
    let Some(id) = env.get(SECRET_VARIABLE) else {
        return Ok(from_env);
    };
    let pairs = cached_pairs(id.trim(), KIND).await?;
    Ok(from_env.overlaid(&AzureSettings::from_pairs(pairs)))
}

/// Reads the secret `id` (an ARN or a name) and parses it, with no cache.
pub async fn read_secret(
    aws: &aws_config::SdkConfig,
    id: &str,
) -> Result<AzureSettings, AzureSecretError> {
    Ok(AzureSettings::from_pairs(read_pairs(aws, id, KIND).await?))
}

/// The settings in a secret's text.
pub fn parse_secret(id: &str, text: &str) -> Result<AzureSettings, AzureSecretError> {
    Ok(AzureSettings::from_pairs(parse_pairs(id, KIND, text)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use aws_sdk_secretsmanager::error::ErrorMetadata;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;

    const ID: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:azure-AbCdEf";

    #[test]
    fn parses_an_object_of_strings() {
        let s = parse_secret(
            ID,
            r#"{"AZURE_STORAGE_ACCOUNT_NAME": "acct", "azure_storage_account_key": "a2V5"}"#,
        )
        .expect("parse");
        assert_eq!(
            s,
            AzureSettings::from_pairs([
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ])
        );
    }

    #[test]
    fn errors_name_the_secret_and_never_its_contents() {
        let cases = [
            ("SECRET-TEXT", "not JSON"),
            (r#"{"AZURE_STORAGE_ACCOUNT_KEY": "SECRET-TEXT""#, "not JSON"),
            (r#""SECRET-TEXT""#, "holds a string"),
            (r#"["SECRET-TEXT"]"#, "holds an array"),
            (
                r#"{"AZURE_STORAGE_USE_EMULATOR": true}"#,
                "`AZURE_STORAGE_USE_EMULATOR` is a boolean",
            ),
            (
                r#"{"SECRET-TEXT": 1}"#,
                "a key that is not a variable name is a number",
            ),
        ];
        for (text, says) in cases {
            let err = parse_secret(ID, text).expect_err(text).to_string();
            assert!(err.contains(ID), "{err}");
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("SECRET-TEXT"), "{err}");
        }
    }

    #[test]
    fn service_errors_are_named() {
        let denied = GetSecretValueError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("not authorized")
                .build(),
        );
        assert!(matches!(
            classify(ID, KIND, &denied),
            Some(AzureSecretError::AccessDenied { id }) if id == ID
        ));
        let other =
            GetSecretValueError::generic(ErrorMetadata::builder().code("Throttling").build());
        assert!(classify(ID, KIND, &other).is_none());
    }
}

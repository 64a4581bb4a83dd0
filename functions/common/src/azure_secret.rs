//! The Azure credential on AWS: a Secrets Manager secret named by `FHIR_EXPORT_AZURE_SECRET`
//! (an ARN or a name) whose `SecretString` is a JSON object of the `AZURE_*` variables the
//! Azure adapter reads (`shared::adapters::azure::settings::VARIABLES`), e.g.
//! `{"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "..."}`.
//!
//! A secret rather than plain environment variables because a function's environment is
//! readable by anyone who may read the function's configuration, and rotating a secret needs
//! no redeployment (a new cold start picks it up).
//!
//! The secret's values are credentials: no error, log line or `Debug` output here carries
//! them. Errors name the secret and what is wrong with it, nothing more.

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use serde_json::Value;
use shared::adapters::azure::AzureSettings;
use shared::adapters::azure::settings::VARIABLES;
use shared::config::Env;
use tokio::sync::OnceCell;

/// The variable naming the secret.
pub const SECRET_VARIABLE: &str = "FHIR_EXPORT_AZURE_SECRET";

const FORMAT: &str = "a JSON object of AZURE_* variable names to strings";

#[derive(Debug, thiserror::Error)]
pub enum AzureSecretError {
    #[error("Secrets Manager secret `{id}` was not found (FHIR_EXPORT_AZURE_SECRET)")]
    NotFound { id: String },
    #[error(
        "reading Secrets Manager secret `{id}` was denied: the function's role needs \
         secretsmanager:GetSecretValue on it"
    )]
    AccessDenied { id: String },
    #[error(
        "Secrets Manager secret `{id}` cannot be decrypted: the function's role needs \
         kms:Decrypt on the secret's KMS key"
    )]
    Decryption { id: String },
    #[error("cannot read Secrets Manager secret `{id}`")]
    Read {
        id: String,
        // Boxed: the SDK's error is large, and every other variant is small.
        #[source]
        source: Box<aws_sdk_secretsmanager::Error>,
    },
    #[error(
        "Secrets Manager secret `{id}` has no text value (a binary secret); it must be {FORMAT}"
    )]
    NotText { id: String },
    #[error(
        "Secrets Manager secret `{id}` is not JSON (syntax error at line {line}, column \
         {column}); it must be {FORMAT}"
    )]
    NotJson {
        id: String,
        line: usize,
        column: usize,
    },
    #[error("Secrets Manager secret `{id}` holds {found}; it must be {FORMAT}")]
    NotObject { id: String, found: &'static str },
    #[error("Secrets Manager secret `{id}`: the value of {name} is {found}, not a string")]
    NotString {
        id: String,
        name: String,
        found: &'static str,
    },
}

/// The Azure settings of a function: the `AZURE_*` variables of `env`, overlaid with those of
/// the secret named by `FHIR_EXPORT_AZURE_SECRET` (the secret wins). The secret is read once
/// per process (a Lambda cold start) and kept; a failed read is not kept, so the next cold
/// start, or the next call, tries again.
pub async fn azure_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<AzureSettings, AzureSecretError> {
    let from_env = AzureSettings::from_lookup(|k| env.lookup(k));
    let Some(id) = env.get(SECRET_VARIABLE) else {
        return Ok(from_env);
    };
    Ok(from_env.overlaid(&cached_secret(id.trim()).await?))
}

/// The secret's settings, read at most once per process for the first id asked for.
async fn cached_secret(id: &str) -> Result<AzureSettings, AzureSecretError> {
    static SECRET: OnceCell<(String, AzureSettings)> = OnceCell::const_new();
    let (cached_id, settings) = SECRET
        .get_or_try_init(|| async {
            let aws = shared::adapters::aws::sdk_config().await;
            read_secret(&aws, id).await.map(|s| (id.to_owned(), s))
        })
        .await?;
    if cached_id == id {
        return Ok(settings.clone());
    }
    // A function has one secret; a second id only happens in tests. Read it, uncached.
    read_secret(&shared::adapters::aws::sdk_config().await, id).await
}

/// Reads the secret `id` (an ARN or a name) and parses it, with no cache.
pub async fn read_secret(
    aws: &aws_config::SdkConfig,
    id: &str,
) -> Result<AzureSettings, AzureSecretError> {
    let client = aws_sdk_secretsmanager::Client::new(aws);
    let output = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(
            |e| match e.as_service_error().and_then(|s| classify(id, s)) {
                Some(known) => known,
                None => AzureSecretError::Read {
                    id: id.to_owned(),
                    source: Box::new(e.into()),
                },
            },
        )?;
    let text = output
        .secret_string()
        .ok_or_else(|| AzureSecretError::NotText { id: id.to_owned() })?;
    let settings = parse_secret(id, text)?;
    tracing::info!(secret = id, "Azure settings read from Secrets Manager");
    Ok(settings)
}

/// The errors a deployment gets wrong, named; `None` for the rest.
fn classify(id: &str, e: &GetSecretValueError) -> Option<AzureSecretError> {
    let id = id.to_owned();
    if e.is_resource_not_found_exception() {
        Some(AzureSecretError::NotFound { id })
    } else if e.is_decryption_failure() {
        Some(AzureSecretError::Decryption { id })
    } else if e.code() == Some("AccessDeniedException") {
        Some(AzureSecretError::AccessDenied { id })
    } else {
        None
    }
}

/// The settings in a secret's text. serde_json's own messages can quote the input, so only
/// the position of a syntax error is reported.
pub fn parse_secret(id: &str, text: &str) -> Result<AzureSettings, AzureSecretError> {
    let value: Value = serde_json::from_str(text).map_err(|e| AzureSecretError::NotJson {
        id: id.to_owned(),
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(map) = value else {
        return Err(AzureSecretError::NotObject {
            id: id.to_owned(),
            found: kind(&value),
        });
    };
    let mut pairs = Vec::with_capacity(map.len());
    let mut unknown = Vec::new();
    for (name, value) in map {
        let Value::String(value) = value else {
            return Err(AzureSecretError::NotString {
                id: id.to_owned(),
                name: shown_name(&name),
                found: kind(&value),
            });
        };
        if !VARIABLES.contains(&name.to_ascii_uppercase().as_str()) {
            unknown.push(shown_name(&name));
        }
        pairs.push((name, value));
    }
    if !unknown.is_empty() {
        // Most likely a misspelt name; the adapter reads only its own variables.
        tracing::warn!(secret = id, names = ?unknown, "secret names that are not Azure variables are ignored");
    }
    Ok(AzureSettings::from_pairs(pairs))
}

/// What a JSON value is, for an error message that must not quote it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A key of the secret's object, for a message: shown when it looks like a variable name, as
/// a key that holds anything else may be a value pasted in the wrong place.
fn shown_name(name: &str) -> String {
    let looks_like_a_name = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if looks_like_a_name {
        format!("`{name}`")
    } else {
        "a key that is not a variable name".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use aws_sdk_secretsmanager::error::ErrorMetadata;

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
            classify(ID, &denied),
            Some(AzureSecretError::AccessDenied { id }) if id == ID
        ));
        let other =
            GetSecretValueError::generic(ErrorMetadata::builder().code("Throttling").build());
        assert!(classify(ID, &other).is_none());
    }
}

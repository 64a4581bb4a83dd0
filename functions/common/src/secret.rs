//! Credentials on AWS: a Secrets Manager secret (an ARN or a name) whose `SecretString` is a
//! JSON object of the variables one adapter reads, overlaid on the function's environment.
//! Two kinds exist: the Azure credential (`FHIR_EXPORT_AZURE_SECRET`, the `AZURE_*`
//! variables) and the upstream FHIR server's (`FHIR_EXPORT_UPSTREAM_SECRET`, the
//! `FHIR_EXPORT_UPSTREAM_*` variables: a token, or a SMART client id and private key).
//!
//! A secret rather than plain environment variables because a function's environment is
//! readable by anyone who may read the function's configuration, and rotating a secret needs
//! no redeployment (a new cold start picks it up).
//!
//! The secret's values are credentials: no error, log line or `Debug` output here carries
//! them. Errors name the secret and what is wrong with it, nothing more.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use serde_json::Value;

/// What a secret holds, and which variable names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretKind {
    /// The variable naming the secret.
    pub variable: &'static str,
    /// The variables it may set (upper case).
    pub names: &'static [&'static str],
    /// How the variables are spoken of: `AZURE_*`.
    pub family: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secrets Manager secret `{id}` was not found ({variable})")]
    NotFound { id: String, variable: &'static str },
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
        "Secrets Manager secret `{id}` has no text value (a binary secret); it must be a JSON \
         object of {family} variable names to strings"
    )]
    NotText { id: String, family: &'static str },
    #[error(
        "Secrets Manager secret `{id}` is not JSON (syntax error at line {line}, column \
         {column}); it must be a JSON object of {family} variable names to strings"
    )]
    NotJson {
        id: String,
        line: usize,
        column: usize,
        family: &'static str,
    },
    #[error(
        "Secrets Manager secret `{id}` holds {found}; it must be a JSON object of {family} \
         variable names to strings"
    )]
    NotObject {
        id: String,
        found: &'static str,
        family: &'static str,
    },
    #[error("Secrets Manager secret `{id}`: the value of {name} is {found}, not a string")]
    NotString {
        id: String,
        name: String,
        found: &'static str,
    },
}

/// The pairs of the secret `id` of `kind`, read at most once per process and kept; a failed
/// read is not kept, so the next cold start, or the next call, tries again.
pub async fn cached_pairs(
    id: &str,
    kind: SecretKind,
) -> Result<Vec<(String, String)>, SecretError> {
    type Cache = Mutex<HashMap<(&'static str, String), Vec<(String, String)>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = (kind.variable, id.to_owned());
    if let Some(pairs) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(pairs);
    }
    let aws = shared::adapters::aws::sdk_config().await;
    let pairs = read_pairs(&aws, id, kind).await?;
    if let Ok(mut c) = cache.lock() {
        c.insert(key, pairs.clone());
    }
    Ok(pairs)
}

/// Reads the secret `id` (an ARN or a name) and parses it, with no cache.
pub async fn read_pairs(
    aws: &aws_config::SdkConfig,
    id: &str,
    kind: SecretKind,
) -> Result<Vec<(String, String)>, SecretError> {
    let client = aws_sdk_secretsmanager::Client::new(aws);
    let output = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(
            |e| match e.as_service_error().and_then(|s| classify(id, kind, s)) {
                Some(known) => known,
                None => SecretError::Read {
                    id: id.to_owned(),
                    source: Box::new(e.into()),
                },
            },
        )?;
    let text = output.secret_string().ok_or_else(|| SecretError::NotText {
        id: id.to_owned(),
        family: kind.family,
    })?;
    let pairs = parse_pairs(id, kind, text)?;
    tracing::info!(
        secret = id,
        family = kind.family,
        "settings read from Secrets Manager"
    );
    Ok(pairs)
}

/// The errors a deployment gets wrong, named; `None` for the rest.
pub(crate) fn classify(id: &str, kind: SecretKind, e: &GetSecretValueError) -> Option<SecretError> {
    let id = id.to_owned();
    if e.is_resource_not_found_exception() {
        Some(SecretError::NotFound {
            id,
            variable: kind.variable,
        })
    } else if e.is_decryption_failure() {
        Some(SecretError::Decryption { id })
    } else if e.code() == Some("AccessDeniedException") {
        Some(SecretError::AccessDenied { id })
    } else {
        None
    }
}

/// The pairs in a secret's text. serde_json's own messages can quote the input, so only the
/// position of a syntax error is reported.
pub fn parse_pairs(
    id: &str,
    kind: SecretKind,
    text: &str,
) -> Result<Vec<(String, String)>, SecretError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SecretError::NotJson {
        id: id.to_owned(),
        line: e.line(),
        column: e.column(),
        family: kind.family,
    })?;
    let Value::Object(map) = value else {
        return Err(SecretError::NotObject {
            id: id.to_owned(),
            found: kind_of(&value),
            family: kind.family,
        });
    };
    let mut pairs = Vec::with_capacity(map.len());
    let mut unknown = Vec::new();
    for (name, value) in map {
        let Value::String(value) = value else {
            return Err(SecretError::NotString {
                id: id.to_owned(),
                name: shown_name(&name),
                found: kind_of(&value),
            });
        };
        if !kind.names.contains(&name.to_ascii_uppercase().as_str()) {
            unknown.push(shown_name(&name));
        }
        pairs.push((name, value));
    }
    if !unknown.is_empty() {
        // Most likely a misspelt name; the adapter reads only its own variables.
        tracing::warn!(secret = id, family = kind.family, names = ?unknown, "secret names that are not the adapter's variables are ignored");
    }
    Ok(pairs)
}

/// What a JSON value is, for an error message that must not quote it.
fn kind_of(value: &Value) -> &'static str {
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

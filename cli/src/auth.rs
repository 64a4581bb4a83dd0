//! The local server's authentication, from its command line and environment: the embedded
//! authorization server for the clients registered with `--auth-client ID=JWKS_FILE`, and
//! outside issuers trusted with `FHIR_EXPORT_AUTH_ISSUER` + `FHIR_EXPORT_AUTH_JWKS_URL`.
//! With neither, there is no gate (allowed on loopback only; `serve` checks).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shared::auth::authority::{Authority, DEFAULT_ALLOWED_SCOPES, RegisteredClient};
use shared::auth::verifier::{Keys, RemoteJwks, TokenVerifier, TrustedIssuer};
use shared::config::Env;
use shared::jose::KeySet;

use crate::serve::{ServeConfig, ServeError};

/// Where the embedded authorization server is mounted (its issuer is `<public>/auth`).
pub const AUTH_PATH: &str = "/auth";

pub struct Gate {
    pub verifier: Arc<TokenVerifier>,
    pub authority: Option<Arc<Authority>>,
    pub smart_configuration: Value,
    pub issuers: Vec<String>,
}

/// The gate the configuration asks for, `None` for none.
pub fn gate<F: Fn(&str) -> Option<String>>(
    config: &ServeConfig,
    env: &Env<F>,
    public: &str,
    fhir_base: &str,
) -> Result<Option<Gate>, ServeError> {
    let outside = env.get("FHIR_EXPORT_AUTH_ISSUER");
    if config.auth_clients.is_empty() && outside.is_none() {
        return Ok(None);
    }
    let leeway = env
        .secs("FHIR_EXPORT_AUTH_LEEWAY_SECS")?
        .unwrap_or(Duration::from_secs(60));
    let mut audiences = vec![fhir_base.to_owned()];
    if let Some(more) = env.get("FHIR_EXPORT_AUTH_AUDIENCE") {
        audiences.extend(more.split(',').map(|a| a.trim().to_owned()));
    }
    let mut trusted = Vec::new();
    let mut authority = None;
    let mut smart_configuration = None;
    if !config.auth_clients.is_empty() {
        let scopes: HashMap<&str, &str> = config
            .auth_client_scopes
            .iter()
            .map(|(id, s)| (id.as_str(), s.as_str()))
            .collect();
        let mut clients = HashMap::new();
        for (id, file) in &config.auth_clients {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ServeError::Auth(format!(
                    "the JWKS of client {id} ({}) cannot be read: {e}",
                    file.display()
                ))
            })?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| ServeError::Auth(format!("{} is not JSON: {e}", file.display())))?;
            let keys = KeySet::from_jwks(&doc)
                .map_err(|e| ServeError::Auth(format!("{}: {e}", file.display())))?;
            if keys.is_empty() {
                return Err(ServeError::Auth(format!(
                    "{} holds no RS384 or ES384 signing key",
                    file.display()
                )));
            }
            clients.insert(
                id.clone(),
                RegisteredClient {
                    keys,
                    allowed_scopes: scopes
                        .get(id.as_str())
                        .copied()
                        .unwrap_or(DEFAULT_ALLOWED_SCOPES)
                        .to_owned(),
                },
            );
        }
        if let Some(unknown) = scopes.keys().find(|id| !clients.contains_key(**id)) {
            return Err(ServeError::Auth(format!(
                "--auth-client-scopes names {unknown}, which no --auth-client registers"
            )));
        }
        let token_secs = env
            .secs("FHIR_EXPORT_AUTH_TOKEN_SECS")?
            .unwrap_or(Duration::from_secs(300));
        let a = Authority::new(
            &format!("{}{AUTH_PATH}", public.trim_end_matches('/')),
            fhir_base,
            clients,
            i64::try_from(token_secs.as_secs()).unwrap_or(300),
        )
        .map_err(ServeError::Auth)?;
        trusted.push(TrustedIssuer {
            issuer: a.issuer().to_owned(),
            keys: Keys::Fixed(a.key_set().map_err(ServeError::Auth)?),
        });
        smart_configuration = Some(a.smart_configuration());
        authority = Some(Arc::new(a));
    }
    if let Some(issuer) = outside {
        let jwks = env.require("FHIR_EXPORT_AUTH_JWKS_URL")?;
        let min_refresh = env
            .secs("FHIR_EXPORT_AUTH_JWKS_MIN_REFRESH_SECS")?
            .unwrap_or(Duration::from_secs(60));
        trusted.push(TrustedIssuer {
            issuer: issuer.trim().to_owned(),
            keys: Keys::Remote(RemoteJwks::new(&jwks, min_refresh).map_err(ServeError::Auth)?),
        });
        if smart_configuration.is_none() {
            smart_configuration = Some(shared::auth::issuer_configuration(
                issuer.trim(),
                Some(&jwks),
                env.get("FHIR_EXPORT_AUTH_TOKEN_URL").as_deref(),
            ));
        }
    }
    let issuers = trusted.iter().map(|t| t.issuer.clone()).collect();
    Ok(Some(Gate {
        verifier: Arc::new(TokenVerifier::new(
            trusted,
            audiences,
            i64::try_from(leeway.as_secs()).unwrap_or(60),
        )),
        authority,
        smart_configuration: smart_configuration.unwrap_or(Value::Null),
        issuers,
    }))
}

/// `ID=VALUE` of `--auth-client` and `--auth-client-scopes`.
pub fn id_and_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, v)) if !id.trim().is_empty() && !v.trim().is_empty() => {
            Ok((id.trim().to_owned(), v.trim().to_owned()))
        }
        _ => Err(format!("expected ID=VALUE, got `{s}`")),
    }
}

/// Writes a new client key: `<out>/<id>.private.pem` (owner-only on Unix) and
/// `<out>/<id>.jwks.json`; returns both paths.
pub fn keygen(
    client_id: &str,
    out: &std::path::Path,
    rsa: bool,
) -> Result<(std::path::PathBuf, std::path::PathBuf), Box<dyn std::error::Error + Send + Sync>> {
    if client_id.is_empty()
        || !client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("--client-id: letters, digits, `-`, `_` and `.` only".into());
    }
    let key = if rsa {
        shared::jose::SigningKey::generate_rs384()
    } else {
        shared::jose::SigningKey::generate_es384()
    }?;
    std::fs::create_dir_all(out)?;
    let pem_path = out.join(format!("{client_id}.private.pem"));
    let jwks_path = out.join(format!("{client_id}.jwks.json"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&pem_path)
        .map_err(|e| format!("{}: {e}", pem_path.display()))?;
    std::io::Write::write_all(&mut file, key.to_pem()?.as_bytes())?;
    let jwks = serde_json::json!({"keys": [key.public_jwk(&format!("{client_id}-1"))]});
    std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)?)?;
    Ok((pem_path, jwks_path))
}

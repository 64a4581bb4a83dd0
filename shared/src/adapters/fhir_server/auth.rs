//! Credentials for the upstream server: none, a static bearer token
//! (`FHIR_EXPORT_UPSTREAM_TOKEN`), or SMART Backend Services client credentials: a
//! `private_key_jwt` assertion (RS384 or ES384, by the key's kind) posted to the server's
//! token endpoint (`FHIR_EXPORT_UPSTREAM_TOKEN_URL`, or the `token_endpoint` of its
//! `.well-known/smart-configuration`), the access token kept until shortly before it expires
//! (and dropped when the server answers 401). No token, key or assertion appears in a log,
//! an error or `Debug` output.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::jose::SigningKey;
use crate::ports::SourceError;

/// A token is renewed this long before it expires (or at half its life, if shorter).
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// Lifetime of an assertion (the SMART IG allows at most five minutes).
const ASSERTION_SECS: i64 = 300;

#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer(String),
    Smart(Arc<Smart>),
}

pub struct Smart {
    client_id: String,
    scope: String,
    kid: Option<String>,
    key: SigningKey,
    /// Configured, or discovered on first use.
    token_url: Mutex<Option<String>>,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(<redacted>)"),
            Auth::Smart(s) => write!(
                f,
                "Auth::Smart {{ client_id: {:?}, alg: {}, key: <redacted> }}",
                s.client_id,
                s.key.alg()
            ),
        }
    }
}

impl Auth {
    /// From `FHIR_EXPORT_UPSTREAM_TOKEN`, or `FHIR_EXPORT_UPSTREAM_CLIENT_ID` with
    /// `FHIR_EXPORT_UPSTREAM_PRIVATE_KEY` (PEM text) or `..._PRIVATE_KEY_FILE`, and optionally
    /// `..._KEY_ID`, `..._TOKEN_URL` and `..._SCOPE` (default `system/*.read`).
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Auth, String> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if let Some(token) = get("FHIR_EXPORT_UPSTREAM_TOKEN") {
            return Ok(Auth::Bearer(token.trim().to_owned()));
        }
        let Some(client_id) = get("FHIR_EXPORT_UPSTREAM_CLIENT_ID") else {
            return Ok(Auth::None);
        };
        let pem = match (
            get("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY"),
            get("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY_FILE"),
        ) {
            (Some(pem), _) => pem,
            (None, Some(path)) => std::fs::read_to_string(path.trim()).map_err(|e| {
                format!("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY_FILE cannot be read: {e}")
            })?,
            (None, None) => {
                return Err(
                    "FHIR_EXPORT_UPSTREAM_CLIENT_ID needs FHIR_EXPORT_UPSTREAM_PRIVATE_KEY or FHIR_EXPORT_UPSTREAM_PRIVATE_KEY_FILE".into(),
                );
            }
        };
        let key = SigningKey::from_pem(&pem)
            .map_err(|e| format!("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY: {e}"))?;
        Ok(Auth::Smart(Arc::new(Smart {
            client_id: client_id.trim().to_owned(),
            scope: get("FHIR_EXPORT_UPSTREAM_SCOPE").unwrap_or_else(|| "system/*.read".into()),
            kid: get("FHIR_EXPORT_UPSTREAM_KEY_ID"),
            key,
            token_url: Mutex::new(get("FHIR_EXPORT_UPSTREAM_TOKEN_URL")),
            cached: Mutex::new(None),
        })))
    }

    /// The token to send to `base`, if any (renewed shortly before it expires).
    pub async fn token(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<Option<String>, SourceError> {
        match self {
            Auth::None => Ok(None),
            Auth::Bearer(t) => Ok(Some(t.clone())),
            Auth::Smart(s) => s.token(http, base).await.map(Some),
        }
    }

    /// Whether a 401 may be cured by asking for a new token.
    pub(crate) fn refreshable(&self) -> bool {
        matches!(self, Auth::Smart(_))
    }

    /// Drops a cached token (the server refused it).
    pub async fn invalidate(&self) {
        if let Auth::Smart(s) = self {
            *s.cached.lock().await = None;
        }
    }
}

impl Smart {
    async fn token(&self, http: &reqwest::Client, base: &str) -> Result<String, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let url = self.token_url(http, base).await?;
        let assertion = self.assertion(&url).map_err(|e| SourceError::Protocol {
            url: url.clone(),
            problem: e,
        })?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", &self.scope)
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &assertion)
            .finish();
        let resp = http
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| SourceError::Unreachable {
                method: "POST",
                url: url.clone(),
                reason: crate::error_chain(&e.without_url()),
            })?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            // OAuth errors say `error` and `error_description`, never a secret.
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let text = [v["error"].as_str(), v["error_description"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            return Err(SourceError::Upstream {
                method: "POST",
                url,
                status: status.as_u16(),
                outcome: (!text.is_empty()).then_some(text),
            });
        }
        let (v, token) = string_field(&body, &url, "access_token")?;
        let life = Duration::from_secs(v["expires_in"].as_u64().unwrap_or(300));
        let renew_at = Instant::now() + life.saturating_sub(RENEW_BEFORE.min(life / 2));
        *cached = Some((token.clone(), renew_at));
        tracing::info!(client_id = %self.client_id, expires_in_secs = life.as_secs(), "upstream token obtained");
        Ok(token)
    }

    async fn token_url(&self, http: &reqwest::Client, base: &str) -> Result<String, SourceError> {
        let mut known = self.token_url.lock().await;
        if let Some(u) = known.as_ref() {
            return Ok(u.clone());
        }
        let config = format!(
            "{}/.well-known/smart-configuration",
            base.trim_end_matches('/')
        );
        let resp = http
            .get(&config)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| SourceError::Unreachable {
                method: "GET",
                url: config.clone(),
                reason: crate::error_chain(&e.without_url()),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SourceError::Upstream {
                method: "GET",
                url: config,
                status: status.as_u16(),
                outcome: Some("no SMART configuration: set FHIR_EXPORT_UPSTREAM_TOKEN_URL".into()),
            });
        }
        let body = resp.bytes().await.unwrap_or_default();
        let (_, url) = string_field(&body, &config, "token_endpoint")?;
        *known = Some(url.clone());
        Ok(url)
    }

    /// The signed `client_assertion` for the token endpoint `aud`.
    fn assertion(&self, aud: &str) -> Result<String, String> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": aud,
            "exp": now + ASSERTION_SECS,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        crate::jose::sign(&self.key, self.kid.as_deref(), &claims)
    }
}

/// A JSON answer of `url`, and its string member `field`; never quoting the answer (it may
/// hold a token).
fn string_field(body: &[u8], url: &str, field: &str) -> Result<(Value, String), SourceError> {
    let problem = |p: String| SourceError::Protocol {
        url: url.to_owned(),
        problem: p,
    };
    let v: Value =
        serde_json::from_slice(body).map_err(|_| problem("the answer is not JSON".into()))?;
    let text = v[field]
        .as_str()
        .ok_or_else(|| problem(format!("the answer has no `{field}`")))?
        .to_owned();
    Ok((v, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{Expect, KeySet, Unverified};

    fn smart(key_pem: String) -> Arc<Smart> {
        let auth = Auth::from_lookup(&|k| match k {
            "FHIR_EXPORT_UPSTREAM_CLIENT_ID" => Some("exporter".into()),
            "FHIR_EXPORT_UPSTREAM_PRIVATE_KEY" => Some(key_pem.clone()),
            "FHIR_EXPORT_UPSTREAM_KEY_ID" => Some("k1".into()),
            _ => None,
        })
        .expect("auth");
        match auth {
            Auth::Smart(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn check(s: &Smart, jwt: &str) {
        let keys = KeySet::from_jwks(&json!({"keys": [s.key.public_jwk("k1")]})).expect("jwks");
        let t = Unverified::parse(jwt).expect("parse");
        t.verify(&keys).expect("signature verifies");
        t.check_claims(&Expect {
            issuers: vec!["exporter"],
            audiences: vec!["https://auth.example/token"],
            leeway_secs: 0,
            now: chrono::Utc::now().timestamp(),
        })
        .expect("claims");
        assert_eq!(t.header["alg"], s.key.alg());
        assert_eq!(t.kid(), Some("k1"));
        assert_eq!(t.claims["sub"], "exporter");
        assert!(
            t.claims["exp"].as_i64().expect("exp") - t.claims["iat"].as_i64().expect("iat") <= 300
        );
    }

    #[test]
    fn assertions_are_signed_rs384_or_es384_by_the_key() {
        let rsa = SigningKey::generate_rs384().expect("rsa");
        let s = smart(rsa.to_pem().expect("pem"));
        assert_eq!(s.key.alg(), "RS384");
        check(&s, &s.assertion("https://auth.example/token").expect("jwt"));

        let ec = SigningKey::generate_es384().expect("ec");
        let s = smart(ec.to_pem().expect("pem"));
        assert_eq!(s.key.alg(), "ES384");
        check(&s, &s.assertion("https://auth.example/token").expect("jwt"));
    }

    #[test]
    fn bad_keys_are_refused_in_words_and_nothing_leaks() {
        let e = Auth::from_lookup(&|k| match k {
            "FHIR_EXPORT_UPSTREAM_CLIENT_ID" => Some("x".into()),
            "FHIR_EXPORT_UPSTREAM_PRIVATE_KEY" => {
                Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into())
            }
            _ => None,
        })
        .expect_err("refused");
        assert!(e.contains("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY"), "{e}");
        let e = Auth::from_lookup(&|k| (k == "FHIR_EXPORT_UPSTREAM_CLIENT_ID").then(|| "x".into()))
            .expect_err("no key");
        assert!(e.contains("PRIVATE_KEY"), "{e}");
        let bearer =
            Auth::from_lookup(&|k| (k == "FHIR_EXPORT_UPSTREAM_TOKEN").then(|| "sekrit".into()))
                .expect("bearer");
        assert!(!format!("{bearer:?}").contains("sekrit"));
    }
}

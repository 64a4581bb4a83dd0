//! A SMART Backend Services authorization server small enough to embed in `fhir-export
//! serve`: the client-credentials grant with a `private_key_jwt` client assertion (RS384 or
//! ES384), for clients registered with their public JWKS and the scopes they may have. The
//! access tokens it issues are ES384 JWTs signed by a key made at start (a restart
//! invalidates them; clients get new ones), checked by the same [`super::verifier`] as an
//! outside issuer's.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::Grant;
use crate::jose::{self, Expect, JwtError, KeySet, SigningKey, Unverified};

/// An assertion may live at most this long (SMART: five minutes).
pub const MAX_ASSERTION_SECS: i64 = 300;
/// Clock skew forgiven on assertions.
const LEEWAY_SECS: i64 = 60;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The scopes a client may have when its registration names none.
pub const DEFAULT_ALLOWED_SCOPES: &str = "system/*.read system/*.rs";

/// A registered client: the keys its assertions are signed with, the scopes it may get.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub keys: KeySet,
    pub allowed_scopes: String,
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            error,
            description: description.into(),
        }
    }

    /// RFC 6749: 401 for a client that failed to authenticate, 400 otherwise.
    pub fn status(&self) -> u16 {
        if self.error == "invalid_client" {
            401
        } else {
            400
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": self.error, "error_description": self.description})
    }
}

/// A token issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub client_id: String,
    pub scope: String,
    pub body: Value,
}

pub struct Authority {
    issuer: String,
    token_url: String,
    audience: String,
    kid: String,
    key: SigningKey,
    clients: HashMap<String, RegisteredClient>,
    /// `client \n jti` of assertions seen, with their expiry: not accepted twice meanwhile.
    seen: Mutex<HashMap<String, i64>>,
    token_secs: i64,
}

impl Authority {
    /// `issuer` is also the base of the token endpoint (`<issuer>/token`) and of the JWKS
    /// (`<issuer>/jwks.json`); tokens are issued for `audience` (the FHIR base URL).
    pub fn new(
        issuer: &str,
        audience: &str,
        clients: HashMap<String, RegisteredClient>,
        token_secs: i64,
    ) -> Result<Authority, String> {
        let issuer = issuer.trim_end_matches('/').to_owned();
        Ok(Authority {
            token_url: format!("{issuer}/token"),
            audience: audience.trim_end_matches('/').to_owned(),
            kid: format!("fhir-export-{}", uuid::Uuid::new_v4().simple()),
            key: SigningKey::generate_es384()?,
            clients,
            seen: Mutex::new(HashMap::new()),
            token_secs: token_secs.max(1),
            issuer,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.issuer)
    }

    /// The public half of the signing key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.key.public_jwk(&self.kid)]})
    }

    pub fn key_set(&self) -> Result<KeySet, String> {
        KeySet::from_jwks(&self.jwks())
    }

    pub fn client_ids(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// `.well-known/smart-configuration` (SMART App Launch 2.x, the backend-services part).
    pub fn smart_configuration(&self) -> Value {
        super::issuer_configuration(&self.issuer, Some(&self.jwks_url()), Some(&self.token_url))
    }

    /// Answers a token request (its `application/x-www-form-urlencoded` body) at `now`.
    pub fn issue(&self, form: &[u8], now: i64) -> Result<Issued, OAuthError> {
        let mut fields: HashMap<String, String> = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(form) {
            if fields.insert(k.to_string(), v.to_string()).is_some() {
                return Err(OAuthError::new(
                    "invalid_request",
                    format!("`{k}` is given more than once"),
                ));
            }
        }
        let field = |name: &str| fields.get(name).map(String::as_str);
        match field("grant_type") {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(OAuthError::new(
                    "unsupported_grant_type",
                    "only grant_type=client_credentials is supported",
                ));
            }
            None => return Err(OAuthError::new("invalid_request", "grant_type is missing")),
        }
        if field("client_assertion_type") != Some(ASSERTION_TYPE) {
            return Err(OAuthError::new(
                "invalid_request",
                format!("client_assertion_type must be {ASSERTION_TYPE}"),
            ));
        }
        let assertion = field("client_assertion")
            .ok_or_else(|| OAuthError::new("invalid_request", "client_assertion is missing"))?;
        let client_id = self.authenticate(assertion, now)?;
        let scope = self.grant_scope(&client_id, field("scope").unwrap_or_default())?;
        let claims = json!({
            "iss": self.issuer,
            "sub": client_id,
            "client_id": client_id,
            "aud": self.audience,
            "scope": scope,
            "iat": now,
            "exp": now + self.token_secs,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let token = jose::sign(&self.key, Some(&self.kid), &claims)
            .map_err(|e| OAuthError::new("server_error", e))?;
        Ok(Issued {
            body: json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_secs,
                "scope": scope,
            }),
            client_id,
            scope,
        })
    }

    /// The client an assertion authenticates.
    fn authenticate(&self, assertion: &str, now: i64) -> Result<String, OAuthError> {
        let bad = |e: JwtError| OAuthError::new("invalid_client", format!("client_assertion: {e}"));
        let t = Unverified::parse(assertion).map_err(bad)?;
        let iss = t.claim("iss").unwrap_or_default().to_owned();
        let client = self.clients.get(&iss).ok_or_else(|| {
            OAuthError::new(
                "invalid_client",
                "client_assertion: the client (iss) is not registered",
            )
        })?;
        if t.claim("sub") != Some(iss.as_str()) {
            return Err(OAuthError::new(
                "invalid_client",
                "client_assertion: sub must equal iss (the client id)",
            ));
        }
        t.verify(&client.keys).map_err(bad)?;
        t.check_claims(&Expect {
            issuers: vec![iss.as_str()],
            audiences: vec![self.token_url.as_str()],
            leeway_secs: LEEWAY_SECS,
            now,
        })
        .map_err(bad)?;
        let exp = t.claims["exp"].as_i64().unwrap_or(i64::MAX);
        if exp > now + MAX_ASSERTION_SECS + LEEWAY_SECS {
            return Err(OAuthError::new(
                "invalid_client",
                format!("client_assertion: exp is more than {MAX_ASSERTION_SECS} s ahead"),
            ));
        }
        let jti = t
            .claim("jti")
            .filter(|j| !j.is_empty())
            .ok_or_else(|| OAuthError::new("invalid_client", "client_assertion: no jti"))?;
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| OAuthError::new("server_error", "replay cache poisoned"))?;
        seen.retain(|_, until| *until + LEEWAY_SECS >= now);
        let key = format!("{iss}\n{jti}");
        if seen.contains_key(&key) {
            return Err(OAuthError::new(
                "invalid_client",
                "client_assertion: this jti was used already",
            ));
        }
        seen.insert(key, exp);
        Ok(iss)
    }

    /// The requested scopes the client may have (space-separated); all it may have when it
    /// asks for none.
    fn grant_scope(&self, client_id: &str, requested: &str) -> Result<String, OAuthError> {
        let allowed_text = self
            .clients
            .get(client_id)
            .map(|c| c.allowed_scopes.as_str())
            .unwrap_or_default();
        if requested.trim().is_empty() {
            return Ok(allowed_text.to_owned());
        }
        let allowed = Grant::from_scopes(allowed_text);
        let granted: Vec<&str> = requested
            .split_ascii_whitespace()
            .filter(|s| {
                let g = Grant::from_scopes(s);
                !g.is_empty() && allowed.covers(&g)
            })
            .collect();
        if granted.is_empty() {
            return Err(OAuthError::new(
                "invalid_scope",
                format!(
                    "none of the requested scopes is allowed to this client (allowed: {allowed_text})"
                ),
            ));
        }
        Ok(granted.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn authority(client_key: &SigningKey, allowed: &str) -> Authority {
        let mut clients = HashMap::new();
        clients.insert(
            "c1".to_owned(),
            RegisteredClient {
                keys: KeySet::from_jwks(&json!({"keys": [client_key.public_jwk("ck")]}))
                    .expect("jwks"),
                allowed_scopes: allowed.into(),
            },
        );
        Authority::new("http://x/auth", "http://x/fhir", clients, 300).expect("authority")
    }

    fn assertion(key: &SigningKey, jti: &str, exp: i64) -> String {
        jose::sign(
            key,
            Some("ck"),
            &json!({"iss": "c1", "sub": "c1", "aud": "http://x/auth/token", "exp": exp, "iat": NOW, "jti": jti}),
        )
        .expect("sign")
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish().into_bytes()
    }

    fn request(assertion: &str, scope: &str) -> Vec<u8> {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
    }

    #[test]
    fn issues_a_token_the_verifier_would_accept_and_refuses_replays() {
        let ck = SigningKey::generate_rs384().expect("key");
        let a = authority(&ck, "system/Patient.rs system/Observation.rs");
        let issued = a
            .issue(
                &request(
                    &assertion(&ck, "j1", NOW + 200),
                    "system/Patient.rs system/*.rs",
                ),
                NOW,
            )
            .expect("token");
        assert_eq!(issued.scope, "system/Patient.rs", "only what is allowed");
        let token = issued.body["access_token"].as_str().expect("token");
        let t = Unverified::parse(token).expect("parse");
        t.verify(&a.key_set().expect("keys"))
            .expect("signed by the authority");
        assert_eq!(t.claims["aud"], "http://x/fhir");
        assert_eq!(t.claims["client_id"], "c1");

        let replay = a
            .issue(&request(&assertion(&ck, "j1", NOW + 200), ""), NOW + 1)
            .expect_err("replayed jti");
        assert!(replay.description.contains("jti"), "{replay}");
        assert_eq!(replay.status(), 401);
    }

    #[test]
    fn refusals() {
        let ck = SigningKey::generate_es384().expect("key");
        let other = SigningKey::generate_es384().expect("key");
        let a = authority(&ck, DEFAULT_ALLOWED_SCOPES);
        let err = |body: Vec<u8>| a.issue(&body, NOW).expect_err("refused");

        let e = err(form(&[("grant_type", "password")]));
        assert_eq!((e.error, e.status()), ("unsupported_grant_type", 400));
        let e = err(form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "basic"),
        ]));
        assert_eq!((e.error, e.status()), ("invalid_request", 400));
        let e = err(request(&assertion(&other, "j2", NOW + 100), ""));
        assert_eq!(e.error, "invalid_client", "signed by another key: {e}");
        let e = err(request(&assertion(&ck, "j3", NOW + 3600), ""));
        assert!(e.description.contains("300"), "exp too far ahead: {e}");
        let e = err(request(&assertion(&ck, "j4", NOW - 3600), ""));
        assert!(e.description.contains("expired"), "{e}");
        let unknown = jose::sign(
            &ck,
            None,
            &json!({"iss": "c9", "sub": "c9", "aud": "http://x/auth/token", "exp": NOW + 60, "jti": "j5"}),
        )
        .expect("sign");
        let e = err(request(&unknown, ""));
        assert!(e.description.contains("not registered"), "{e}");
        let e = err(request(&assertion(&ck, "j6", NOW + 100), "system/*.write"));
        assert_eq!(e.error, "invalid_scope");
    }
}

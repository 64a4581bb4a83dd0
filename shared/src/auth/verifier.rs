//! Bearer access tokens checked against trusted issuers: the signature with the issuer's
//! JWKS, then `iss`, `aud`, `exp`/`nbf` (with a small leeway). A remote JWKS is fetched on
//! first use and kept; a token signed with a key it does not list makes it fetched again
//! (a rotated key), but not more often than `min_refresh`, so a stream of bad tokens cannot
//! make us hammer the issuer.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::http::Caller;
use crate::jose::{Expect, JwtError, KeySet, Unverified};

/// Why a bearer token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] JwtError),
    /// Our problem, not the caller's: the issuer's keys cannot be had right now.
    #[error("the keys of issuer {issuer} cannot be fetched: {reason}")]
    KeysUnavailable { issuer: String, reason: String },
}

/// Where an issuer's public keys come from.
pub enum Keys {
    /// Known in this process (the local authorization server's own).
    Fixed(KeySet),
    /// A JWKS URL.
    Remote(RemoteJwks),
}

pub struct RemoteJwks {
    url: String,
    http: reqwest::Client,
    min_refresh: Duration,
    state: Mutex<(KeySet, Option<Instant>)>,
}

impl RemoteJwks {
    pub fn new(url: &str, min_refresh: Duration) -> Result<RemoteJwks, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(RemoteJwks {
            url: url.to_owned(),
            http,
            min_refresh,
            state: Mutex::new((KeySet::default(), None)),
        })
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let resp = self
            .http
            .get(&self.url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| crate::error_chain(&e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", self.url, resp.status().as_u16()));
        }
        let doc: serde_json::Value = resp
            .json()
            .await
            .map_err(|_| format!("{} did not answer JSON", self.url))?;
        KeySet::from_jwks(&doc)
    }

    /// The keys as last fetched; fetched now if never, or if `kid` is not among them and the
    /// last fetch is older than `min_refresh`.
    async fn keys_for(&self, kid: Option<&str>) -> Result<KeySet, String> {
        let mut state = self.state.lock().await;
        let (keys, fetched) = &*state;
        let known = match kid {
            Some(kid) => keys.has_kid(kid),
            None => !keys.is_empty(),
        };
        let may_refresh = fetched.is_none_or(|at| at.elapsed() >= self.min_refresh);
        if known || !may_refresh {
            return Ok(keys.clone());
        }
        let fresh = self.fetch().await;
        // A failed fetch counts too: the issuer is not asked again before `min_refresh`.
        state.1 = Some(Instant::now());
        let fresh = fresh?;
        tracing::info!(url = %self.url, keys = fresh.iter().count(), "issuer keys fetched");
        state.0 = fresh.clone();
        Ok(fresh)
    }
}

pub struct TrustedIssuer {
    pub issuer: String,
    pub keys: Keys,
}

pub struct TokenVerifier {
    issuers: Vec<TrustedIssuer>,
    audiences: Vec<String>,
    leeway_secs: i64,
}

impl TokenVerifier {
    pub fn new(issuers: Vec<TrustedIssuer>, audiences: Vec<String>, leeway_secs: i64) -> Self {
        TokenVerifier {
            issuers,
            audiences,
            leeway_secs,
        }
    }

    /// The caller a valid token speaks for.
    pub async fn verify(&self, token: &str) -> Result<Caller, VerifyError> {
        let t = Unverified::parse(token)?;
        let iss = t.claim("iss").ok_or(JwtError::MissingClaim("iss"))?;
        let trusted = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(JwtError::WrongIssuer)?;
        match &trusted.keys {
            Keys::Fixed(keys) => t.verify(keys)?,
            Keys::Remote(remote) => {
                let keys = remote.keys_for(t.kid()).await.map_err(|reason| {
                    VerifyError::KeysUnavailable {
                        issuer: trusted.issuer.clone(),
                        reason,
                    }
                })?;
                t.verify(&keys)?
            }
        }
        t.check_claims(&Expect {
            issuers: vec![trusted.issuer.as_str()],
            audiences: self.audiences.iter().map(String::as_str).collect(),
            leeway_secs: self.leeway_secs,
            now: chrono::Utc::now().timestamp(),
        })?;
        let client = t
            .claim("client_id")
            .or_else(|| t.claim("sub"))
            .filter(|c| !c.is_empty())
            .ok_or(JwtError::MissingClaim("sub"))?;
        Ok(Caller::client(
            &trusted.issuer,
            client,
            t.claim("scope").unwrap_or_default(),
        ))
    }
}

//! SMART Backend Services clients for tests: a key made in the test, its public JWKS in a
//! file for `--auth-client`, assertions and tokens from the server's token endpoint.

use std::path::PathBuf;

use serde_json::{Value, json};
use shared::jose::{self, SigningKey};
use tempfile::TempDir;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct TestClient {
    pub id: String,
    pub key: SigningKey,
    pub kid: String,
    dir: TempDir,
}

impl TestClient {
    /// A client with a fresh ES384 key (`rsa`: RS384).
    pub fn new(id: &str, rsa: bool) -> TestClient {
        let key = if rsa {
            SigningKey::generate_rs384()
        } else {
            SigningKey::generate_es384()
        }
        .expect("key");
        let dir = tempfile::tempdir().expect("tmp");
        let c = TestClient {
            id: id.to_owned(),
            kid: format!("{id}-key"),
            key,
            dir,
        };
        std::fs::write(c.jwks_path(), c.jwks().to_string()).expect("write jwks");
        std::fs::write(c.pem_path(), c.key.to_pem().expect("pem")).expect("write pem");
        c
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.key.public_jwk(&self.kid)]})
    }

    pub fn jwks_path(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    pub fn pem_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// `(id, jwks file)` for `Options::auth_clients`.
    pub fn registration(&self) -> (String, PathBuf) {
        (self.id.clone(), self.jwks_path())
    }

    /// A client assertion for `token_url`, expiring `exp_in` seconds from now.
    pub fn assertion(&self, token_url: &str, jti: &str, exp_in: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        jose::sign(
            &self.key,
            Some(&self.kid),
            &json!({"iss": self.id, "sub": self.id, "aud": token_url, "exp": now + exp_in, "iat": now, "jti": jti}),
        )
        .expect("sign")
    }

    /// POSTs a token request; the status and the JSON answer.
    pub async fn request_token(
        &self,
        http: &reqwest::Client,
        token_url: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let body = {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in form {
                s.append_pair(k, v);
            }
            s.finish()
        };
        let resp = http
            .post(token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("application/json"), "token answer is {ct}");
        (status, resp.json().await.expect("json"))
    }

    /// An access token with `scope`, asserting it is issued.
    pub async fn token(&self, http: &reqwest::Client, token_url: &str, scope: &str) -> String {
        let jti = uuid_like();
        let assertion = self.assertion(token_url, &jti, 120);
        let (status, body) = self
            .request_token(
                http,
                token_url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &assertion),
                    ("scope", scope),
                ],
            )
            .await;
        assert_eq!(status, 200, "token for {}: {body}", self.id);
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

/// A unique string (assertion ids).
pub fn uuid_like() -> String {
    crate::unique("jti")
}

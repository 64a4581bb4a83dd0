//! JSON Web Signatures as SMART Backend Services uses them: RS384 and ES384 only, compact
//! form, keys from PEM or JWKS. Signing serves the client side (our assertions to an upstream
//! token endpoint, the `export` command's, the local authorization server's access tokens);
//! verifying serves the server side (client assertions, access tokens).
//!
//! What is refused, whatever the key set holds: `alg: none`, every HMAC algorithm (a public
//! key used as an HMAC secret is the classic confusion attack), algorithms the key's type does
//! not match, and any `crit` header (we understand no extension, so RFC 7515 §4.1.11 says
//! reject).

mod keys;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

pub use keys::{KeySet, PublicKey, SigningKey};

/// Why a token is not accepted. The texts are safe to show to the caller: they never quote
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("the signing algorithm `{0}` is not accepted (RS384 and ES384 are)")]
    AlgorithmRefused(String),
    #[error("the token has critical header extensions this server does not understand")]
    CriticalHeader,
    #[error("no key of the issuer matches the token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not trusted")]
    WrongIssuer,
    #[error("the token is not meant for this server (aud)")]
    WrongAudience,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's `{0}` claim is not acceptable")]
    BadClaim(&'static str),
}

/// The algorithms accepted, by name.
pub const ALGORITHMS: [&str; 2] = ["RS384", "ES384"];

/// A token split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub header: Value,
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

impl Unverified {
    /// Splits and decodes `token`, and refuses a header this module never accepts.
    pub fn parse(token: &str) -> Result<Unverified, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let decode = |part: &str, what: &'static str| -> Result<Value, JwtError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed(what))?;
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .filter(Value::is_object)
                .ok_or(JwtError::Malformed(what))
        };
        let header = decode(h, "the header is not base64url JSON")?;
        let claims = decode(c, "the claims are not base64url JSON")?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| JwtError::Malformed("the signature is not base64url"))?;
        let alg = header["alg"]
            .as_str()
            .ok_or(JwtError::Malformed("the header has no alg"))?;
        if !ALGORITHMS.contains(&alg) {
            return Err(JwtError::AlgorithmRefused(alg.chars().take(16).collect()));
        }
        if header.get("crit").is_some() {
            return Err(JwtError::CriticalHeader);
        }
        Ok(Unverified {
            signing_input: format!("{h}.{c}"),
            header,
            claims,
            signature,
        })
    }

    pub fn alg(&self) -> &str {
        self.header["alg"].as_str().unwrap_or_default()
    }

    pub fn kid(&self) -> Option<&str> {
        self.header["kid"].as_str()
    }

    /// A string claim.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims[name].as_str()
    }

    /// Checks the signature with the keys of `keys` that may have made it: those with the
    /// token's `kid` (every key of the right type when the token names none).
    pub fn verify(&self, keys: &KeySet) -> Result<(), JwtError> {
        let candidates: Vec<&PublicKey> = keys
            .iter()
            .filter(|k| k.alg() == self.alg())
            .filter(|k| match self.kid() {
                Some(kid) => k.is_named(kid),
                None => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey(
                self.kid().map(|k| k.chars().take(64).collect()),
            ));
        }
        if candidates
            .iter()
            .any(|k| k.verify(self.signing_input.as_bytes(), &self.signature))
        {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    }

    /// Checks `iss`, `aud`, `exp` and `nbf` against `expect`.
    pub fn check_claims(&self, expect: &Expect<'_>) -> Result<(), JwtError> {
        let iss = self.claim("iss").ok_or(JwtError::MissingClaim("iss"))?;
        if !expect.issuers.contains(&iss) {
            return Err(JwtError::WrongIssuer);
        }
        let aud_ok = match &self.claims["aud"] {
            Value::String(a) => expect.audiences.contains(&a.as_str()),
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| expect.audiences.contains(&a)),
            Value::Null => return Err(JwtError::MissingClaim("aud")),
            _ => false,
        };
        if !aud_ok {
            return Err(JwtError::WrongAudience);
        }
        let exp = numeric(&self.claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
        if exp + expect.leeway_secs <= expect.now {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric(&self.claims, "nbf")?
            && nbf - expect.leeway_secs > expect.now
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iat) = numeric(&self.claims, "iat")?
            && iat - expect.leeway_secs > expect.now
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

/// A NumericDate claim (seconds; fractions allowed by RFC 7519, truncated here).
fn numeric(claims: &Value, name: &'static str) -> Result<Option<i64>, JwtError> {
    match &claims[name] {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::BadClaim(name)),
        _ => Err(JwtError::BadClaim(name)),
    }
}

/// What a token's claims must say.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub issuers: Vec<&'a str>,
    pub audiences: Vec<&'a str>,
    /// Seconds of clock skew forgiven on `exp`, `nbf` and `iat`.
    pub leeway_secs: i64,
    /// Unix seconds.
    pub now: i64,
}

/// Signs `claims` as a compact JWS with `key`, naming `kid` in the header when given.
pub fn sign(key: &SigningKey, kid: Option<&str>, claims: &Value) -> Result<String, String> {
    let mut header = json!({"alg": key.alg(), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Value {
        json!({"iss": "https://issuer", "aud": "https://api/fhir", "exp": now + 300, "iat": now, "sub": "c1"})
    }

    fn expect(now: i64) -> Expect<'static> {
        Expect {
            issuers: vec!["https://issuer"],
            audiences: vec!["https://api/fhir"],
            leeway_secs: 30,
            now,
        }
    }

    fn forge(header: Value, claims: &Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn rs384_and_es384_tokens_verify_against_their_jwks() {
        let now = 1_700_000_000;
        for key in [
            SigningKey::generate_rs384().expect("rsa"),
            SigningKey::generate_es384().expect("ec"),
        ] {
            let jwks = json!({"keys": [key.public_jwk("k1")]});
            let set = KeySet::from_jwks(&jwks).expect("jwks");
            let token = sign(&key, Some("k1"), &claims(now)).expect("sign");
            let t = Unverified::parse(&token).expect("parse");
            t.verify(&set).expect("verifies");
            t.check_claims(&expect(now)).expect("claims");
            // Tampered claims no longer verify.
            let (h, rest) = token.split_once('.').expect("dot");
            let (_, s) = rest.split_once('.').expect("dot");
            let mut c = claims(now);
            c["sub"] = json!("admin");
            let tampered = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(c.to_string()));
            assert_eq!(
                Unverified::parse(&tampered).expect("parse").verify(&set),
                Err(JwtError::BadSignature)
            );
        }
    }

    #[test]
    fn a_key_is_also_named_by_its_rfc7638_thumbprint() {
        // RFC 7638 section 3.1's example key and thumbprint.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS384", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        let set = KeySet::from_jwks(&json!({"keys": [jwk]})).expect("jwks");
        assert!(set.has_kid("2011-04-29"));
        assert!(set.has_kid("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
        assert!(!set.has_kid("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xt"));
    }

    #[test]
    fn refused_headers() {
        let now = 1_700_000_000;
        let c = claims(now);
        let none = forge(json!({"alg": "none"}), &c, b"");
        assert!(matches!(
            Unverified::parse(&none),
            Err(JwtError::AlgorithmRefused(_))
        ));
        let hs = forge(json!({"alg": "HS256"}), &c, b"x");
        assert!(matches!(
            Unverified::parse(&hs),
            Err(JwtError::AlgorithmRefused(_))
        ));
        let crit = forge(json!({"alg": "ES384", "crit": ["exp"], "exp": 1}), &c, b"x");
        assert_eq!(
            Unverified::parse(&crit).err(),
            Some(JwtError::CriticalHeader)
        );
        assert!(matches!(
            Unverified::parse("a.b"),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn an_rsa_key_does_not_verify_an_es384_token() {
        let rsa = SigningKey::generate_rs384().expect("rsa");
        let ec = SigningKey::generate_es384().expect("ec");
        let set = KeySet::from_jwks(&json!({"keys": [rsa.public_jwk("k1")]})).expect("jwks");
        let token = sign(&ec, Some("k1"), &claims(0)).expect("sign");
        assert!(matches!(
            Unverified::parse(&token).expect("parse").verify(&set),
            Err(JwtError::UnknownKey(_))
        ));
    }

    #[test]
    fn time_issuer_and_audience() {
        let now = 1_700_000_000;
        let key = SigningKey::generate_es384().expect("ec");
        let check = |c: Value, at: i64| {
            Unverified::parse(&sign(&key, None, &c).expect("sign"))
                .expect("parse")
                .check_claims(&expect(at))
        };
        assert_eq!(check(claims(now), now + 301), Ok(()), "within the leeway");
        assert_eq!(check(claims(now), now + 331), Err(JwtError::Expired));
        let mut c = claims(now);
        c["nbf"] = json!(now + 120);
        assert_eq!(check(c, now), Err(JwtError::NotYetValid));
        let mut c = claims(now);
        c["iss"] = json!("https://evil");
        assert_eq!(check(c, now), Err(JwtError::WrongIssuer));
        let mut c = claims(now);
        c["aud"] = json!(["https://other", "https://api/fhir"]);
        assert_eq!(check(c, now), Ok(()));
        let mut c = claims(now);
        c["aud"] = json!("https://other");
        assert_eq!(check(c, now), Err(JwtError::WrongAudience));
        let mut c = claims(now);
        c.as_object_mut().expect("object").remove("exp");
        assert_eq!(check(c, now), Err(JwtError::MissingClaim("exp")));
    }
}

//! Keys: private ones from PEM (or generated), public ones as JWKs.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_SHA384, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// A private key that signs RS384 (RSA) or ES384 (EC P-384).
pub enum SigningKey {
    Rs384(RsaKeyPair),
    Es384(EcdsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.alg())
    }
}

impl SigningKey {
    /// A PEM private key: PKCS#8 (`PRIVATE KEY`, RSA or P-384), PKCS#1 (`RSA PRIVATE KEY`) or
    /// SEC1 (`EC PRIVATE KEY`, P-384).
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let label = pem
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or("not a PEM private key (no -----BEGIN line)")?
            .to_owned();
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && !l.contains(':'))
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|_| "the PEM body is not base64")?;
        let rejected = |what: &str| format!("the {what} key is not usable");
        match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der)
                .map(SigningKey::Rs384)
                .or_else(|_| {
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der)
                        .map(SigningKey::Es384)
                })
                .map_err(|_| "the PKCS#8 key is neither RSA nor EC P-384".to_owned()),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map(SigningKey::Rs384)
                .map_err(|_| rejected("RSA")),
            "EC PRIVATE KEY" => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, &der)
                    .map(SigningKey::Es384)
                    .map_err(|_| rejected("EC (P-384 only)"))
            }
            other => Err(format!("a PEM `{other}` is not a private key")),
        }
    }

    pub fn generate_es384() -> Result<SigningKey, String> {
        EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
            .map(SigningKey::Es384)
            .map_err(|_| "cannot generate an EC P-384 key".into())
    }

    pub fn generate_rs384() -> Result<SigningKey, String> {
        RsaKeyPair::generate(KeySize::Rsa2048)
            .map(SigningKey::Rs384)
            .map_err(|_| "cannot generate an RSA key".into())
    }

    /// The key as PKCS#8 PEM (`PRIVATE KEY`), for writing a generated key to a file.
    pub fn to_pem(&self) -> Result<String, String> {
        let der = match self {
            SigningKey::Rs384(k) => AsDer::<Pkcs8V1Der>::as_der(k)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| "cannot encode the RSA key")?,
            SigningKey::Es384(k) => k
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| "cannot encode the EC key")?,
        };
        let b64 = STANDARD.encode(der);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        Ok(out)
    }

    pub fn alg(&self) -> &'static str {
        match self {
            SigningKey::Rs384(_) => "RS384",
            SigningKey::Es384(_) => "ES384",
        }
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            SigningKey::Rs384(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA384, &rng, message, &mut sig)
                    .map_err(|_| "RS384 signing failed")?;
                Ok(sig)
            }
            SigningKey::Es384(k) => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ES384 signing failed".to_owned()),
        }
    }

    /// The public half as a JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self, kid: &str) -> Value {
        match self {
            SigningKey::Rs384(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({
                    "kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
                    "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
                })
            }
            SigningKey::Es384(k) => {
                // Uncompressed point: 0x04, x (48 bytes), y (48 bytes).
                let xy = k.public_key().as_ref().get(1..).unwrap_or_default();
                let (x, y) = xy.split_at(xy.len() / 2);
                json!({
                    "kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }
}

/// A public key from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kid: Option<String>,
    /// RFC 7638 thumbprint (SHA-256, base64url): the `kid` clients use that derive it from
    /// the key itself (jwcrypto's keys from PEM, so smart-fetch's).
    thumbprint: String,
    material: Material,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point of P-384.
    P384(Vec<u8>),
}

impl PublicKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether `kid` names this key: its `kid`, or its RFC 7638 thumbprint.
    pub fn is_named(&self, kid: &str) -> bool {
        self.kid.as_deref() == Some(kid) || self.thumbprint == kid
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> &'static str {
        match self.material {
            Material::Rsa { .. } => "RS384",
            Material::P384(_) => "ES384",
        }
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => PublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA384, message, signature)
                .is_ok(),
            Material::P384(point) => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                .verify(message, signature)
                .is_ok(),
        }
    }

    /// One JWK; `Ok(None)` for a key this module has no use for (another type or curve, an
    /// encryption key, an `alg` other than RS384/ES384).
    fn from_jwk(jwk: &Value) -> Result<Option<PublicKey>, String> {
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let v = jwk[name]
                .as_str()
                .ok_or_else(|| format!("a key has no `{name}`"))?;
            URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|_| format!("a key's `{name}` is not base64url"))
        };
        if jwk["use"].as_str().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let alg = jwk["alg"].as_str();
        let kid = jwk["kid"].as_str().map(str::to_owned);
        let material = match jwk["kty"].as_str() {
            Some("RSA") if alg.is_none_or(|a| a == "RS384") => {
                let n = field("n")?;
                let e = field("e")?;
                // The components must be minimal big-endian integers.
                let strip = |v: Vec<u8>| {
                    let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
                    v[start..].to_vec()
                };
                Material::Rsa {
                    n: strip(n),
                    e: strip(e),
                }
            }
            Some("EC") if jwk["crv"] == "P-384" && alg.is_none_or(|a| a == "ES384") => {
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 48 || y.len() != 48 {
                    return Err("a P-384 key's x and y must be 48 bytes each".into());
                }
                let mut point = Vec::with_capacity(97);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Material::P384(point)
            }
            _ => return Ok(None),
        };
        // RFC 7638: the required members only, in lexicographic order, no whitespace.
        let canonical = match &material {
            Material::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(e),
                URL_SAFE_NO_PAD.encode(n)
            ),
            Material::P384(point) => {
                let (x, y) = point.get(1..).unwrap_or_default().split_at(48);
                format!(
                    r#"{{"crv":"P-384","kty":"EC","x":"{}","y":"{}"}}"#,
                    URL_SAFE_NO_PAD.encode(x),
                    URL_SAFE_NO_PAD.encode(y)
                )
            }
        };
        let thumbprint = URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
        );
        Ok(Some(PublicKey {
            kid,
            thumbprint,
            material,
        }))
    }
}

/// The usable keys of a JWKS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet(Vec<PublicKey>);

impl KeySet {
    /// A JWKS document (`{"keys": [...]}`); keys of no use here are skipped, malformed ones
    /// refused.
    pub fn from_jwks(doc: &Value) -> Result<KeySet, String> {
        let keys = doc["keys"]
            .as_array()
            .ok_or("a JWKS is an object with a `keys` array")?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(key) = PublicKey::from_jwk(k)? {
                out.push(key);
            }
        }
        Ok(KeySet(out))
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.0.iter().any(|k| k.is_named(kid))
    }
}

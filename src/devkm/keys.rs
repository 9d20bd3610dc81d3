//! Signing keys for the reference key manager and for tests: generated per run with
//! aws-lc-rs (independent of the jsonwebtoken verification path), published as JWKs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::config::Algorithm;

enum Material {
    Rsa(aws_lc_rs::rsa::KeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private key with its `kid`.
pub struct DevKey {
    pub kid: String,
    material: Material,
}

impl DevKey {
    pub fn rsa(kid: &str) -> DevKey {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA key generation");
        DevKey::new(kid, Material::Rsa(kp))
    }

    pub fn p256(kid: &str) -> DevKey {
        let kp = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("P-256 key generation");
        DevKey::new(kid, Material::P256(kp))
    }

    pub fn p384(kid: &str) -> DevKey {
        let kp = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)
            .expect("P-384 key generation");
        DevKey::new(kid, Material::P384(kp))
    }

    pub fn ed25519(kid: &str) -> DevKey {
        let kp = Ed25519KeyPair::generate().expect("Ed25519 key generation");
        DevKey::new(kid, Material::Ed25519(kp))
    }

    fn new(kid: &str, material: Material) -> DevKey {
        DevKey {
            kid: kid.to_owned(),
            material,
        }
    }

    /// The algorithm this key signs with by default.
    pub fn default_alg(&self) -> Algorithm {
        match self.material {
            Material::Rsa(_) => Algorithm::RS256,
            Material::P256(_) => Algorithm::ES256,
            Material::P384(_) => Algorithm::ES384,
            Material::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    /// The public JWK; `alg` is included when given.
    pub fn public_jwk(&self, alg: Option<Algorithm>) -> Value {
        let mut jwk = match &self.material {
            Material::Rsa(kp) => {
                let pk = kp.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(pk.modulus().big_endian_without_leading_zero()),
                    "e": b64(pk.exponent().big_endian_without_leading_zero()),
                })
            }
            Material::P256(kp) | Material::P384(kp) => {
                let point = kp.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": b64(&point[1..1 + len]),
                    "y": b64(&point[1 + len..]),
                })
            }
            Material::Ed25519(kp) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(kp.public_key().as_ref()),
            }),
        };
        jwk["kid"] = self.kid.clone().into();
        jwk["use"] = "sig".into();
        if let Some(alg) = alg {
            jwk["alg"] = alg.name().into();
        }
        jwk
    }

    /// Raw signature over `msg` (JWS encoding: PKCS#1 / PSS bytes, fixed-width r‖s, Ed25519).
    pub fn sign_raw(&self, alg: Algorithm, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(kp) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(padding, &rng, msg, &mut sig).expect("RSA signing");
                sig
            }
            Material::P256(kp) | Material::P384(kp) => {
                kp.sign(&rng, msg).expect("ECDSA signing").as_ref().to_vec()
            }
            Material::Ed25519(kp) => kp.sign(msg).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `claims`. `header` members override the defaults (`alg` of this
    /// key, its `kid`, `typ: at+jwt`); a `null` member removes the default.
    pub fn token_with(&self, alg: Algorithm, header: Value, claims: &Value) -> String {
        let mut h = json!({"alg": alg.name(), "kid": self.kid, "typ": "at+jwt"});
        if let (Some(h), Value::Object(extra)) = (h.as_object_mut(), header) {
            for (k, v) in extra {
                if v.is_null() {
                    h.remove(&k);
                } else {
                    h.insert(k, v);
                }
            }
        }
        let input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign_raw(alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    /// A compact JWS with this key's default algorithm and header.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with(self.default_alg(), json!({}), claims)
    }
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&DevKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.public_jwk(None)).collect::<Vec<_>>() })
}

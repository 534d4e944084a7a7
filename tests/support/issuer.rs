//! A test platform-token issuer (think GitHub Actions): RS256 and ES256 keys, a JWKS
//! file the broker trusts, and tokens with any claims or header we like.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::Jwk;
use josekit::jws::{ES256, JwsHeader, RS256};
use josekit::jwt::{self, JwtPayload};
use serde_json::{Map, Value, json};

pub const ISSUER: &str = "https://ci.test";

pub struct TestIssuer {
    rsa_private: Jwk,
    pub rsa_public: Jwk,
    ec_private: Jwk,
    pub ec_public: Jwk,
    pub rsa_public_pem: String,
    rsa_private_der: Vec<u8>,
}

impl TestIssuer {
    pub fn new() -> TestIssuer {
        let rsa = RS256.generate_key_pair(2048).unwrap();
        let rsa_public_pem = String::from_utf8(rsa.to_pem_public_key()).unwrap();
        let rsa_private_der = rsa.to_der_private_key();
        let mut rsa_private = rsa.to_jwk_private_key();
        let mut rsa_public = rsa.to_jwk_public_key();
        rsa_private.set_key_id("rsa-1");
        rsa_public.set_key_id("rsa-1");
        let ec = ES256.generate_key_pair().unwrap();
        let mut ec_private = ec.to_jwk_private_key();
        let mut ec_public = ec.to_jwk_public_key();
        ec_private.set_key_id("ec-1");
        ec_public.set_key_id("ec-1");
        TestIssuer {
            rsa_private,
            rsa_public,
            ec_private,
            ec_public,
            rsa_public_pem,
            rsa_private_der,
        }
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [
            serde_json::to_value(self.rsa_public.as_ref()).unwrap(),
            serde_json::to_value(self.ec_public.as_ref()).unwrap(),
        ]})
    }

    pub fn write_jwks(&self, path: &Path) {
        std::fs::write(path, serde_json::to_vec(&self.jwks()).unwrap()).unwrap();
    }

    /// Claims of a GitHub-Actions-like job on `repository` at `git_ref`, valid 10 minutes.
    pub fn claims(repository: &str, git_ref: &str) -> Map<String, Value> {
        let now = now();
        let v = json!({
            "iss": ISSUER,
            "aud": "credbroker",
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "repository": repository,
            "ref": git_ref,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": format!("job-{}", rand_suffix()),
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    pub fn sign_rs256(&self, claims: &Map<String, Value>) -> String {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id("rsa-1");
        let signer = RS256.signer_from_jwk(&self.rsa_private).unwrap();
        jwt::encode_with_signer(
            &JwtPayload::from_map(claims.clone()).unwrap(),
            &header,
            &signer,
        )
        .unwrap()
    }

    pub fn sign_es256(&self, claims: &Map<String, Value>) -> String {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id("ec-1");
        let signer = ES256.signer_from_jwk(&self.ec_private).unwrap();
        jwt::encode_with_signer(
            &JwtPayload::from_map(claims.clone()).unwrap(),
            &header,
            &signer,
        )
        .unwrap()
    }

    /// Signs with the RSA key but claims another `kid` (a signer built from a JWK would
    /// overwrite the header's `kid` with its own).
    pub fn sign_with_kid(&self, claims: &Map<String, Value>, kid: &str) -> String {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(kid);
        let signer = RS256.signer_from_der(&self.rsa_private_der).unwrap();
        jwt::encode_with_signer(
            &JwtPayload::from_map(claims.clone()).unwrap(),
            &header,
            &signer,
        )
        .unwrap()
    }

    /// The "HS256 keyed with the issuer's public key" forgery.
    pub fn forge_hs256_with_public_key(&self, claims: &Map<String, Value>) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"});
        let signing_input = format!("{}.{}", b64(&header), b64(&Value::Object(claims.clone())));
        // Key the HMAC with the issuer's public key PEM, which anyone can derive from the JWKS.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.rsa_public_pem.as_bytes());
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// An unsigned `alg: none` token.
    pub fn unsigned(claims: &Map<String, Value>) -> String {
        let header = json!({"alg": "none", "typ": "JWT"});
        format!("{}.{}.", b64(&header), b64(&Value::Object(claims.clone())))
    }
}

pub fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rand_suffix() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    hex::encode(b)
}

//! The broker's JWT signing keys (SPEC §5.3).
//!
//! Keys are PKCS#8 PEM files. The first configured key signs; every key is published in
//! the JWKS so tokens signed before a rotation keep verifying until they expire. Each key
//! is parsed once, here (josekit reads it): it keeps a ready ring signer and verifier and
//! its JWS header already encoded, so a signature costs the crypto plus serialising the
//! claims.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::KeyPair;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value};
use x509_parser::asn1_rs::{FromDer, OctetString, Oid, Sequence};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::x509::AlgorithmIdentifier;

use super::KeyError;
use crate::jws::{SignKey, VerifyKey};

pub use crate::jws::{MIN_RSA_BITS, SigningAlg};

/// One JWT signing key, parsed and ready to sign and verify.
#[derive(Clone)]
pub struct SigningKey {
    alg: SigningAlg,
    kid: String,
    /// The public JWK as published (kty, crv/x/y or n/e, kid, alg, use).
    public_jwk: Value,
    /// base64url of the JWS header `{"alg","kid","typ":"JWT"}`: the first segment of
    /// every token this key signs.
    header_b64: String,
    signer: Arc<SignKey>,
    verifier: Arc<VerifyKey>,
}

// Key material stays out of logs: only the public identity of the key is shown.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg.as_str())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses one PKCS#8 PEM key; `name` (a file name) is used in errors.
    pub fn from_pem(pem: &str, name: &str) -> Result<SigningKey, KeyError> {
        let der = match PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(der) => der,
            Err(_) => {
                return Err(KeyError::NotPkcs8 {
                    name: name.to_string(),
                    hint: pem_hint(pem),
                });
            }
        };
        Self::from_pkcs8_der(der.secret_pkcs8_der(), name)
    }

    /// Parses one PKCS#8 DER key; `name` is used in errors.
    pub fn from_pkcs8_der(der: &[u8], name: &str) -> Result<SigningKey, KeyError> {
        let (detected, rewritten) = detect(der, name)?;
        let der = rewritten.as_deref().unwrap_or(der);
        let invalid = |reason: String| KeyError::InvalidKey {
            name: name.to_string(),
            reason,
        };
        let jose = |e: josekit::JoseError| invalid(jose_reason(&e));
        // josekit reads the key and derives its public JWK; ring signs with it.
        let (alg, spki, jwk, signer) = match detected {
            SigningAlg::Es256 => {
                let pair = EcKeyPair::from_der(der, Some(EcCurve::P256)).map_err(jose)?;
                let (private, public) = (pair.to_jwk_private_key(), pair.to_jwk_public_key());
                let member = |jwk: &josekit::jwk::Jwk, m: &str| {
                    jwk_bytes(jwk, m).ok_or_else(|| invalid(format!("EC key without {m}")))
                };
                let signer = SignKey::es256(
                    &member(&private, "d")?,
                    &member(&public, "x")?,
                    &member(&public, "y")?,
                )
                .map_err(invalid)?;
                (SigningAlg::Es256, pair.to_der_public_key(), public, signer)
            }
            SigningAlg::Rs256 => {
                let pair = RsaKeyPair::from_der(der).map_err(jose)?;
                let jwk = pair.to_jwk_public_key();
                let bits = jwk_bytes(&jwk, "n")
                    .map(|n| crate::jws::rsa_bits(&n))
                    .ok_or_else(|| invalid("RSA modulus missing".into()))?;
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::WeakRsa {
                        name: name.to_string(),
                        bits,
                    });
                }
                let signer = SignKey::rs256(der).map_err(invalid)?;
                (SigningAlg::Rs256, pair.to_der_public_key(), jwk, signer)
            }
            SigningAlg::EdDsa => {
                let pair = EdKeyPair::from_der(der).map_err(jose)?;
                if pair.curve() != EdCurve::Ed25519 {
                    return Err(KeyError::Unsupported {
                        name: name.to_string(),
                        what: "Ed448".into(),
                    });
                }
                let signer = SignKey::ed25519(der).map_err(invalid)?;
                (
                    SigningAlg::EdDsa,
                    pair.to_der_public_key(),
                    pair.to_jwk_public_key(),
                    signer,
                )
            }
        };

        let members = ThumbprintMembers::from_jwk(&jwk, alg)
            .ok_or_else(|| invalid("public key parameters missing".into()))?;
        let kid = members.thumbprint();
        let public_jwk = members.public_jwk(&kid, alg);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|_| invalid("malformed public key".into()))?;
        let verifier = VerifyKey::from_public_key(alg, &spki.subject_public_key.data);

        let header = serde_json::json!({ "alg": alg.as_str(), "kid": kid, "typ": "JWT" });
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());

        let key = SigningKey {
            alg,
            kid,
            public_jwk,
            header_b64,
            signer: Arc::new(signer),
            verifier: Arc::new(verifier),
        };
        // A key whose private and public halves disagree would sign tokens nobody can
        // verify; find out now rather than at the first request.
        let probe = "credbroker key self-test";
        let mut jws = String::from(probe);
        key.signer.sign_compact(&mut jws).map_err(invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(&jws[probe.len() + 1..])
            .map_err(|_| invalid("signature is not base64url".into()))?;
        key.verifier
            .verify(probe.as_bytes(), &signature)
            .map_err(|_| invalid("public key does not match private key".into()))?;
        Ok(key)
    }

    /// The key id: the RFC 7638 JWK thumbprint (base64url SHA-256).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS `alg` this key signs with (`ES256`, `RS256` or `EdDSA`).
    pub fn alg(&self) -> &str {
        self.alg.as_str()
    }

    /// The algorithm as a type.
    pub fn algorithm(&self) -> SigningAlg {
        self.alg
    }

    /// The public JWK as published: kty, crv/x/y or n/e, kid, alg, `use: "sig"`.
    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// Signs `claims` as a compact JWS whose header is exactly `alg`, `kid`, `typ: "JWT"`.
    pub fn sign_jwt<C: serde::Serialize + ?Sized>(&self, claims: &C) -> Result<String, KeyError> {
        // A credential's claims fit in this at once; `to_vec` would start small and regrow.
        let mut payload = Vec::with_capacity(512);
        serde_json::to_writer(&mut payload, claims).map_err(|e| KeyError::Sign {
            kid: self.kid.clone(),
            reason: e.to_string(),
        })?;
        let signature_b64_len = (self.signer.signature_len() * 4).div_ceil(3);
        let mut token = String::with_capacity(
            self.header_b64.len() + 2 + (payload.len() * 4).div_ceil(3) + signature_b64_len,
        );
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        self.signer
            .sign_compact(&mut token)
            .map_err(|reason| KeyError::Sign {
                kid: self.kid.clone(),
                reason,
            })?;
        Ok(token)
    }
}

/// The broker's JWT signing keys: the first signs, all are published.
#[derive(Clone)]
pub struct SigningKeys {
    /// Never empty; index 0 is the active key.
    keys: Vec<SigningKey>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.keys).finish()
    }
}

impl SigningKeys {
    /// Reads PKCS#8 PEM key files; the first is the active signing key.
    pub fn load(paths: &[PathBuf]) -> Result<SigningKeys, KeyError> {
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            keys.push(load_file(path)?);
        }
        Self::from_keys(keys, |i| paths[i].display().to_string())
    }

    /// Parses PKCS#8 PEM keys held in memory; the first is the active signing key.
    pub fn from_pems(pems: &[String]) -> Result<SigningKeys, KeyError> {
        let name = |i: usize| format!("signing key #{}", i + 1);
        let mut keys = Vec::with_capacity(pems.len());
        for (i, pem) in pems.iter().enumerate() {
            keys.push(SigningKey::from_pem(pem, &name(i))?);
        }
        Self::from_keys(keys, name)
    }

    fn from_keys(
        keys: Vec<SigningKey>,
        name: impl Fn(usize) -> String,
    ) -> Result<SigningKeys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(KeyError::DuplicateKey {
                    name: name(i),
                    kid: key.kid.clone(),
                });
            }
        }
        Ok(SigningKeys { keys })
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> &SigningKey {
        // `keys` is never empty (checked in `from_keys`).
        &self.keys[0]
    }

    /// Every key, the active one first.
    pub fn all(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The published JWKS: `{"keys": [...]}` with every key, active first.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.iter().map(|k| k.public_jwk.clone()).collect();
        let mut set = Map::new();
        set.insert("keys".into(), Value::Array(keys));
        Value::Object(set)
    }

    /// Verifies the signature of a token this broker signed and returns its claims.
    ///
    /// The header must be exactly what [`SigningKey::sign_jwt`] writes (`alg`, `kid` of one
    /// of our keys, `typ: "JWT"`) and `alg` must be that key's algorithm. Only the
    /// signature is checked here: `iss`, time window and revocation are the caller's.
    pub fn verify_own(&self, token: &str) -> Result<Map<String, Value>, KeyError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyError::Malformed("not a compact JWS (three segments)"));
        };
        // Fast path: our header segment is fixed per key, so a byte comparison both finds
        // the key and proves the header has nothing but alg, kid and typ.
        let key = match self.keys.iter().find(|k| k.header_b64 == header) {
            Some(key) => key,
            None => return Err(self.explain_header(header)),
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| KeyError::Malformed("signature is not base64url"))?;
        let signed_len = header.len() + 1 + payload.len();
        key.verifier
            .verify(&token.as_bytes()[..signed_len], &signature)
            .map_err(|_| KeyError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| KeyError::Malformed("payload is not base64url"))?;
        serde_json::from_slice::<Map<String, Value>>(&payload)
            .map_err(|_| KeyError::Malformed("payload is not a JSON object"))
    }

    /// Why a header segment is not one of ours.
    fn explain_header(&self, header: &str) -> KeyError {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(header) else {
            return KeyError::Malformed("header is not base64url");
        };
        let Ok(header) = serde_json::from_slice::<Map<String, Value>>(&bytes) else {
            return KeyError::Malformed("header is not a JSON object");
        };
        let Some(kid) = header.get("kid").and_then(Value::as_str) else {
            return KeyError::Malformed("header has no kid");
        };
        let Some(key) = self.get(kid) else {
            return KeyError::UnknownKid {
                kid: kid.chars().take(64).collect(),
            };
        };
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != key.alg() {
            return KeyError::AlgMismatch {
                kid: key.kid.clone(),
                expected: key.alg.as_str(),
                got: alg.chars().take(16).collect(),
            };
        }
        KeyError::Malformed("header must be exactly alg, kid and typ \"JWT\"")
    }
}

fn load_file(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_pem(&pem, &path.display().to_string())
}

/// A hint for PEM files holding a key in a legacy (non-PKCS#8) format.
fn pem_hint(pem: &str) -> &'static str {
    if pem.contains("-----BEGIN EC PRIVATE KEY-----")
        || pem.contains("-----BEGIN RSA PRIVATE KEY-----")
    {
        "; convert with `openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW`"
    } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        "; the key is encrypted, decrypt it with `openssl pkcs8 -in OLD -out NEW`"
    } else {
        ""
    }
}

/// Reads the algorithm identifier of a PKCS#8 PrivateKeyInfo to choose the JWS algorithm.
///
/// Returns the DER to hand to josekit: the input, except for Ed25519 keys in PKCS#8 v2
/// (RFC 5958, with the public key; what ring and rcgen write), which josekit only reads
/// as v1, so they are rewritten as v1 from their 32-byte seed.
fn detect(der: &[u8], name: &str) -> Result<(SigningAlg, Option<Vec<u8>>), KeyError> {
    let malformed = || KeyError::InvalidKey {
        name: name.to_string(),
        reason: "malformed PKCS#8 structure".into(),
    };
    let (_, info) = Sequence::from_der(der).map_err(|_| malformed())?;
    let (rest, version) = u32::from_der(&info.content).map_err(|_| malformed())?;
    let (rest, algorithm) = AlgorithmIdentifier::from_der(rest).map_err(|_| malformed())?;
    let unsupported = |what: String| KeyError::Unsupported {
        name: name.to_string(),
        what,
    };
    let oid = &algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        Ok((SigningAlg::Rs256, None))
    } else if *oid == OID_SIG_ED25519 {
        if version == 0 {
            return Ok((SigningAlg::EdDsa, None));
        }
        // privateKey OCTET STRING { CurvePrivateKey OCTET STRING (32 bytes) }
        let (_, private) = OctetString::from_der(rest).map_err(|_| malformed())?;
        let (_, seed) = OctetString::from_der(private.as_cow()).map_err(|_| malformed())?;
        let seed: &[u8] = seed.as_cow();
        if seed.len() != 32 {
            return Err(malformed());
        }
        let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
        v1.extend_from_slice(seed);
        Ok((SigningAlg::EdDsa, Some(v1)))
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve: Option<Oid> = algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.clone().try_into().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => Ok((SigningAlg::Es256, None)),
            Some(c) if c == OID_NIST_EC_P384 => Err(unsupported("EC P-384".into())),
            Some(c) => Err(unsupported(format!("EC curve {c}"))),
            None => Err(unsupported("EC key without a named curve".into())),
        }
    } else {
        Err(unsupported(format!("key algorithm {oid}")))
    }
}

/// PKCS#8 v1 PrivateKeyInfo for Ed25519 (RFC 8410 §7) up to the 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A base64url member of a JWK, decoded.
fn jwk_bytes(jwk: &josekit::jwk::Jwk, member: &str) -> Option<Vec<u8>> {
    let value = jwk.parameter(member)?.as_str()?;
    URL_SAFE_NO_PAD.decode(value).ok()
}

/// The required public members of a JWK (RFC 7638 §3.2), base64url values as published.
enum ThumbprintMembers {
    Ec { x: String, y: String },
    Rsa { n: String, e: String },
    Okp { x: String },
}

impl ThumbprintMembers {
    fn from_jwk(jwk: &josekit::jwk::Jwk, alg: SigningAlg) -> Option<Self> {
        let param = |k: &str| jwk.parameter(k).and_then(Value::as_str).map(str::to_owned);
        Some(match alg {
            SigningAlg::Es256 => ThumbprintMembers::Ec {
                x: param("x")?,
                y: param("y")?,
            },
            SigningAlg::Rs256 => ThumbprintMembers::Rsa {
                n: param("n")?,
                e: param("e")?,
            },
            SigningAlg::EdDsa => ThumbprintMembers::Okp { x: param("x")? },
        })
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    fn thumbprint(&self) -> String {
        // The values are base64url, so they need no JSON escaping.
        let canonical = match self {
            ThumbprintMembers::Ec { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            ThumbprintMembers::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            ThumbprintMembers::Okp { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#)
            }
        };
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    fn public_jwk(&self, kid: &str, alg: SigningAlg) -> Value {
        let mut jwk = Map::new();
        let mut put = |k: &str, v: &str| {
            jwk.insert(k.to_string(), Value::String(v.to_string()));
        };
        match self {
            ThumbprintMembers::Ec { x, y } => {
                put("kty", "EC");
                put("crv", "P-256");
                put("x", x);
                put("y", y);
            }
            ThumbprintMembers::Rsa { n, e } => {
                put("kty", "RSA");
                put("n", n);
                put("e", e);
            }
            ThumbprintMembers::Okp { x } => {
                put("kty", "OKP");
                put("crv", "Ed25519");
                put("x", x);
            }
        }
        put("kid", kid);
        put("alg", alg.as_str());
        put("use", "sig");
        Value::Object(jwk)
    }
}

/// A josekit error as text. josekit's messages describe the failure, never the key bytes.
fn jose_reason(e: &josekit::JoseError) -> String {
    e.to_string()
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;

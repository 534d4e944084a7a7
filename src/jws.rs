//! JWS signature primitives: what every token exchange pays for twice (verify the
//! evidence, sign the credential).
//!
//! josekit reads and validates keys (JWK, PKCS#8) and is the reference the tests check
//! against; the per-request signing and verifying run on ring, which for one RS256 verify
//! plus one ES256 sign is about a quarter faster than josekit's OpenSSL 3 on one core
//! (`bench_token`), without OpenSSL's per-call locks and allocations.
//! The one algorithm ring lacks, Ed448, is verified with josekit.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::Jwk;
use josekit::jws::JwsVerifier;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaParameters, VerificationAlgorithm};

/// The smallest RSA modulus accepted, for signing and for verifying (ring's minimum too).
pub const MIN_RSA_BITS: usize = 2048;

/// A signature did not verify. Carries nothing: callers say what was being verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// A public key ready to verify signatures of one JWS algorithm.
pub struct VerifyKey(Verify);

enum Verify {
    /// EC point, Ed25519 key or PKCS#1 RSAPublicKey, as ring takes them.
    Ring {
        algorithm: &'static dyn VerificationAlgorithm,
        key: Vec<u8>,
    },
    /// An RSA key from a JWK's `n` and `e` (big-endian, no leading zeros).
    Rsa {
        params: &'static RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Ed448, which ring does not implement.
    Jose(Box<dyn JwsVerifier>),
}

impl VerifyKey {
    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        match &self.0 {
            Verify::Ring { algorithm, key } => signature::UnparsedPublicKey::new(*algorithm, key)
                .verify(message, signature)
                .map_err(|_| BadSignature),
            Verify::Rsa { params, n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .map_err(|_| BadSignature),
            Verify::Jose(v) => v.verify(message, signature).map_err(|_| BadSignature),
        }
    }

    /// The key of a public JWK, for `alg`. josekit validates the JWK first (kty, crv, `use`,
    /// `alg`, point on the curve), so a broken key is refused when it is read, not at the
    /// first token; the error is josekit's description, never key material.
    pub fn from_jwk(alg: &str, jwk: &Jwk) -> Result<VerifyKey, String> {
        let checked = josekit_verifier(alg, jwk)?;
        let param = |name: &str| -> Result<Vec<u8>, String> {
            jwk.parameter(name)
                .and_then(serde_json::Value::as_str)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .ok_or_else(|| format!("parameter {name} is missing or not base64url"))
        };
        let ec_point = |x: Vec<u8>, y: Vec<u8>| [&[0x04][..], &x, &y].concat();
        let ring = |algorithm: &'static dyn VerificationAlgorithm, key: Vec<u8>| {
            Ok(VerifyKey(Verify::Ring { algorithm, key }))
        };
        // josekit has refused RSA keys under 2048 bits, as ring would at every signature.
        let rsa = |params: &'static RsaParameters| -> Result<VerifyKey, String> {
            let n = strip_leading_zeros(param("n")?);
            let e = strip_leading_zeros(param("e")?);
            Ok(VerifyKey(Verify::Rsa { params, n, e }))
        };
        match (
            alg,
            jwk.parameter("crv").and_then(serde_json::Value::as_str),
        ) {
            ("RS256", _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            ("RS384", _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            ("RS512", _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            ("PS256", _) => rsa(&signature::RSA_PSS_2048_8192_SHA256),
            ("PS384", _) => rsa(&signature::RSA_PSS_2048_8192_SHA384),
            ("PS512", _) => rsa(&signature::RSA_PSS_2048_8192_SHA512),
            ("ES256", _) => ring(
                &signature::ECDSA_P256_SHA256_FIXED,
                ec_point(param("x")?, param("y")?),
            ),
            ("ES384", _) => ring(
                &signature::ECDSA_P384_SHA384_FIXED,
                ec_point(param("x")?, param("y")?),
            ),
            ("EdDSA", Some("Ed25519")) => ring(&signature::ED25519, param("x")?),
            _ => Ok(VerifyKey(Verify::Jose(checked))),
        }
    }

    /// The key inside a SubjectPublicKeyInfo's BIT STRING (EC point, Ed25519 key or PKCS#1
    /// RSAPublicKey), for one of the algorithms the broker signs with.
    pub(crate) fn from_public_key(alg: SigningAlg, key: &[u8]) -> VerifyKey {
        let algorithm: &'static dyn VerificationAlgorithm = match alg {
            SigningAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            SigningAlg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            SigningAlg::EdDsa => &signature::ED25519,
        };
        VerifyKey(Verify::Ring {
            algorithm,
            key: key.to_vec(),
        })
    }
}

/// A JWS algorithm the broker signs JWTs with; detected from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256 (the default; in the JWT-SVID allow-list).
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA ≥ 2048 bits.
    Rs256,
    /// Ed25519 (outside the JWT-SVID allow-list; for relying parties that accept it).
    EdDsa,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::Rs256 => "RS256",
            SigningAlg::EdDsa => "EdDSA",
        }
    }
}

/// A private key ready to sign. Holds key material: never printed.
pub struct SignKey {
    pair: Sign,
    rng: SystemRandom,
}

enum Sign {
    Es256(signature::EcdsaKeyPair),
    Rs256(signature::RsaKeyPair),
    EdDsa(signature::Ed25519KeyPair),
}

impl SignKey {
    /// An ES256 key from its private scalar `d` and public point (x, y), which josekit has
    /// read from PKCS#8 whether or not the document carried the public key (ring needs it).
    pub(crate) fn es256(d: &[u8], x: &[u8], y: &[u8]) -> Result<SignKey, String> {
        let rng = SystemRandom::new();
        let point = [&[0x04][..], x, y].concat();
        let pair = signature::EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            d,
            &point,
            &rng,
        )
        .map_err(|e| format!("ring refused the P-256 key: {e}"))?;
        Ok(SignKey {
            pair: Sign::Es256(pair),
            rng,
        })
    }

    /// An RS256 key from PKCS#8 DER (ring signs with 2048- to 4096-bit keys).
    pub(crate) fn rs256(pkcs8: &[u8]) -> Result<SignKey, String> {
        let pair = signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| {
            format!("ring refused the RSA key (2048 to 4096 bits are supported): {e}")
        })?;
        Ok(SignKey {
            pair: Sign::Rs256(pair),
            rng: SystemRandom::new(),
        })
    }

    /// An EdDSA (Ed25519) key from PKCS#8 DER, v1 or v2.
    pub(crate) fn ed25519(pkcs8: &[u8]) -> Result<SignKey, String> {
        let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| format!("ring refused the Ed25519 key: {e}"))?;
        Ok(SignKey {
            pair: Sign::EdDsa(pair),
            rng: SystemRandom::new(),
        })
    }

    /// Length of a signature in bytes.
    pub fn signature_len(&self) -> usize {
        match &self.pair {
            Sign::Es256(_) => 64,
            Sign::Rs256(pair) => pair.public().modulus_len(),
            Sign::EdDsa(_) => 64,
        }
    }

    /// Completes a compact JWS: signs `jws` as it stands (the signing input,
    /// `header.payload`) and appends `.` and the base64url signature.
    pub fn sign_compact(&self, jws: &mut String) -> Result<(), String> {
        let input = jws.as_bytes();
        match &self.pair {
            Sign::Es256(pair) => {
                let sig = pair
                    .sign(&self.rng, input)
                    .map_err(|_| "ECDSA signing failed".to_string())?;
                append(jws, sig.as_ref());
            }
            Sign::Rs256(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, input, &mut sig)
                    .map_err(|_| "RSA signing failed".to_string())?;
                append(jws, &sig);
            }
            Sign::EdDsa(pair) => {
                let sig = pair.sign(input);
                append(jws, sig.as_ref());
            }
        }
        Ok(())
    }
}

fn append(jws: &mut String, signature: &[u8]) {
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, jws);
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignKey(<redacted>)")
    }
}

/// The size in bits of a big-endian modulus without leading zeros.
pub fn rsa_bits(n: &[u8]) -> usize {
    match n.iter().position(|b| *b != 0) {
        Some(first) => (n.len() - first) * 8 - n[first].leading_zeros() as usize,
        None => 0,
    }
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// josekit's verifier for one algorithm: validates the JWK (and verifies Ed448).
fn josekit_verifier(alg: &str, jwk: &Jwk) -> Result<Box<dyn JwsVerifier>, String> {
    use josekit::jws;
    fn boxed<V: JwsVerifier + 'static>(
        v: Result<V, josekit::JoseError>,
    ) -> Result<Box<dyn JwsVerifier>, String> {
        v.map(|v| Box::new(v) as Box<dyn JwsVerifier>)
            .map_err(|e| e.to_string())
    }
    match alg {
        "RS256" => boxed(jws::RS256.verifier_from_jwk(jwk)),
        "RS384" => boxed(jws::RS384.verifier_from_jwk(jwk)),
        "RS512" => boxed(jws::RS512.verifier_from_jwk(jwk)),
        "PS256" => boxed(jws::PS256.verifier_from_jwk(jwk)),
        "PS384" => boxed(jws::PS384.verifier_from_jwk(jwk)),
        "PS512" => boxed(jws::PS512.verifier_from_jwk(jwk)),
        "ES256" => boxed(jws::ES256.verifier_from_jwk(jwk)),
        "ES384" => boxed(jws::ES384.verifier_from_jwk(jwk)),
        "EdDSA" => boxed(jws::EdDSA.verifier_from_jwk(jwk)),
        // Callers check the allow-list first; refuse rather than guess.
        other => Err(format!("unsupported algorithm {other}")),
    }
}

#[cfg(test)]
mod tests {
    use josekit::jwk::KeyPair;
    use josekit::jws::{ES256, EdDSA, JwsSigner, PS256, RS256};

    use super::*;

    /// Every algorithm: a josekit signature verifies with the ring key built from the JWK,
    /// and a changed message does not.
    #[test]
    fn ring_verifies_what_josekit_signs() {
        let rsa = RS256.generate_key_pair(2048).unwrap();
        let pss = PS256.generate_key_pair(2048).unwrap();
        let ec = ES256.generate_key_pair().unwrap();
        let ed = EdDSA
            .generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed25519)
            .unwrap();
        let ed448 = EdDSA
            .generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed448)
            .unwrap();
        let cases: Vec<(&str, Box<dyn JwsSigner>, Jwk)> = vec![
            (
                "RS256",
                Box::new(RS256.signer_from_jwk(&rsa.to_jwk_private_key()).unwrap()),
                rsa.to_jwk_public_key(),
            ),
            (
                "PS256",
                Box::new(PS256.signer_from_jwk(&pss.to_jwk_private_key()).unwrap()),
                pss.to_jwk_public_key(),
            ),
            (
                "ES256",
                Box::new(ES256.signer_from_jwk(&ec.to_jwk_private_key()).unwrap()),
                ec.to_jwk_public_key(),
            ),
            (
                "EdDSA",
                Box::new(EdDSA.signer_from_jwk(&ed.to_jwk_private_key()).unwrap()),
                ed.to_jwk_public_key(),
            ),
            (
                "EdDSA",
                Box::new(EdDSA.signer_from_jwk(&ed448.to_jwk_private_key()).unwrap()),
                ed448.to_jwk_public_key(),
            ),
        ];
        for (alg, signer, jwk) in cases {
            let key = VerifyKey::from_jwk(alg, &jwk).unwrap();
            let sig = signer.sign(b"message").unwrap();
            assert_eq!(key.verify(b"message", &sig), Ok(()), "{alg}");
            assert_eq!(key.verify(b"massage", &sig), Err(BadSignature), "{alg}");
        }
    }

    #[test]
    fn weak_rsa_keys_are_refused_when_read() {
        let mut n = vec![0xc5u8; 128];
        n[127] = 0x01;
        let weak = Jwk::from_map(
            serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert_eq!(rsa_bits(&n), 1024);
        let err = VerifyKey::from_jwk("RS256", &weak).err().unwrap();
        assert!(err.contains("2048"), "{err}");
    }

    #[test]
    fn a_key_for_another_algorithm_is_refused() {
        let ec = ES256.generate_key_pair().unwrap();
        assert!(VerifyKey::from_jwk("RS256", &ec.to_jwk_public_key()).is_err());
    }

    #[test]
    fn ring_signatures_verify_with_josekit() {
        let ec = ES256.generate_key_pair().unwrap();
        let b = |jwk: &Jwk, name: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk.parameter(name).unwrap().as_str().unwrap())
                .unwrap()
        };
        let (private, public) = (ec.to_jwk_private_key(), ec.to_jwk_public_key());
        let key = SignKey::es256(&b(&private, "d"), &b(&public, "x"), &b(&public, "y")).unwrap();
        let mut jws = String::from("message");
        key.sign_compact(&mut jws).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(&jws["message.".len()..]).unwrap();
        assert_eq!(sig.len(), key.signature_len());
        let verifier = ES256.verifier_from_jwk(&ec.to_jwk_public_key()).unwrap();
        verifier.verify(b"message", &sig).unwrap();
        assert!(format!("{key:?}").contains("redacted"));
    }
}

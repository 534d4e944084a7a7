use josekit::jwk::Jwk;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jws::{ES256, EdDSA, JwsVerifier, RS256};
use serde_json::json;

use super::*;
use crate::issue::generate_jwt_key_pem;

fn es256_pem() -> String {
    generate_jwt_key_pem().unwrap()
}

fn rsa_pem(bits: u32) -> String {
    let pair = RsaKeyPair::generate(bits).unwrap();
    String::from_utf8(pair.to_pem_private_key()).unwrap()
}

fn ed25519_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem()
}

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn sample_claims() -> Map<String, Value> {
    json!({"sub": "spiffe://example.org/a", "aud": "x", "exp": 2_000_000_000})
        .as_object()
        .unwrap()
        .clone()
}

/// Verifies with a josekit verifier built from the *published* JWK, as a relying party would.
fn verify_with_published_jwk(jwk: &Value, token: &str) {
    let jwk = Jwk::from_map(jwk.as_object().unwrap().clone()).unwrap();
    let verifier: Box<dyn JwsVerifier> = match jwk.algorithm().unwrap() {
        "ES256" => Box::new(ES256.verifier_from_jwk(&jwk).unwrap()),
        "RS256" => Box::new(RS256.verifier_from_jwk(&jwk).unwrap()),
        "EdDSA" => Box::new(EdDSA.verifier_from_jwk(&jwk).unwrap()),
        other => panic!("unexpected alg {other}"),
    };
    josekit::jws::deserialize_compact(token, &*verifier).unwrap();
}

#[test]
fn thumbprint_matches_rfc7638_example() {
    // RFC 7638 §3.1.
    let members = ThumbprintMembers::Rsa {
        n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
        e: "AQAB".into(),
    };
    assert_eq!(
        members.thumbprint(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn jwks_publishes_every_key_with_its_thumbprint_kid() {
    let keys = SigningKeys::from_pems(&[es256_pem(), rsa_pem(2048), ed25519_pem()]).unwrap();
    let jwks = keys.jwks();
    let published = jwks["keys"].as_array().unwrap();
    assert_eq!(published.len(), 3);
    assert_eq!(keys.active().alg(), "ES256");

    for (key, jwk) in keys.all().iter().zip(published) {
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(jwk["alg"], key.alg());
        assert_eq!(jwk["use"], "sig");
        assert!(jwk.get("d").is_none(), "private member published");
        // Recompute the RFC 7638 thumbprint from the published members.
        let canonical = match jwk["kty"].as_str().unwrap() {
            "EC" => json!({"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]}),
            "RSA" => json!({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}),
            "OKP" => json!({"crv": jwk["crv"], "kty": "OKP", "x": jwk["x"]}),
            other => panic!("unexpected kty {other}"),
        };
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            serde_json::to_string(&canonical).unwrap().as_bytes(),
        );
        assert_eq!(key.kid(), URL_SAFE_NO_PAD.encode(digest));
        assert_eq!(key.public_jwk(), *jwk);

        let token = key.sign_jwt(&sample_claims()).unwrap();
        verify_with_published_jwk(jwk, &token);
    }
    let algs: Vec<_> = published.iter().map(|k| k["alg"].clone()).collect();
    assert_eq!(algs, vec!["ES256", "RS256", "EdDSA"]);
    assert_eq!(published[0]["crv"], "P-256");
    assert_eq!(published[2]["crv"], "Ed25519");
}

#[test]
fn header_is_exactly_alg_kid_typ() {
    for pem in [es256_pem(), rsa_pem(2048), ed25519_pem()] {
        let keys = SigningKeys::from_pems(&[pem]).unwrap();
        let key = keys.active();
        let token = key.sign_jwt(&sample_claims()).unwrap();
        assert_eq!(
            segment(&token, 0),
            json!({"alg": key.alg(), "kid": key.kid(), "typ": "JWT"})
        );
        assert_eq!(segment(&token, 1), Value::Object(sample_claims()));
        assert_eq!(keys.verify_own(&token).unwrap(), sample_claims());
    }
}

#[test]
fn token_signed_by_the_second_key_verifies() {
    let keys = SigningKeys::from_pems(&[es256_pem(), ed25519_pem()]).unwrap();
    let second = &keys.all()[1];
    let token = second.sign_jwt(&sample_claims()).unwrap();
    assert_eq!(segment(&token, 0)["kid"], second.kid());
    assert_eq!(keys.verify_own(&token).unwrap(), sample_claims());
    assert_eq!(keys.get(second.kid()).map(|k| k.alg()), Some("EdDSA"));
}

#[test]
fn verify_own_refuses_foreign_altered_and_confused_tokens() {
    let keys = SigningKeys::from_pems(&[es256_pem()]).unwrap();
    let good = keys.active().sign_jwt(&sample_claims()).unwrap();

    let other = SigningKeys::from_pems(&[es256_pem()]).unwrap();
    let foreign = other.active().sign_jwt(&sample_claims()).unwrap();
    assert!(matches!(
        keys.verify_own(&foreign),
        Err(KeyError::UnknownKid { .. })
    ));

    // Our kid, another algorithm.
    let kid = keys.active().kid();
    let confused = |header: Value| {
        let rest = good.split_once('.').unwrap().1;
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
    };
    let err = keys
        .verify_own(&confused(json!({"alg": "HS256", "kid": kid, "typ": "JWT"})))
        .unwrap_err();
    assert!(matches!(err, KeyError::AlgMismatch { .. }), "{err}");
    let err = keys
        .verify_own(&confused(json!({"alg": "none", "kid": kid, "typ": "JWT"})))
        .unwrap_err();
    assert!(matches!(err, KeyError::AlgMismatch { .. }), "{err}");
    // Right alg and kid, but an extra header member: not a header we write.
    let err = keys
        .verify_own(&confused(
            json!({"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil"}),
        ))
        .unwrap_err();
    assert!(matches!(err, KeyError::Malformed(_)), "{err}");

    // Tampered payload.
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"spiffe://example.org/admin"}"#);
    parts[1] = &forged;
    assert!(matches!(
        keys.verify_own(&parts.join(".")),
        Err(KeyError::BadSignature)
    ));
    // Truncated signature, garbage, wrong shape.
    assert!(keys.verify_own(&good[..good.len() - 4]).is_err());
    assert!(matches!(
        keys.verify_own("a.b"),
        Err(KeyError::Malformed(_))
    ));
    assert!(keys.verify_own(&format!("{good}.x")).is_err());
    assert!(keys.verify_own("").is_err());
}

#[test]
fn weak_and_unsupported_keys_are_refused_with_the_key_named() {
    let err = SigningKeys::from_pems(&[es256_pem(), rsa_pem(1024)]).unwrap_err();
    assert!(matches!(err, KeyError::WeakRsa { bits: 1024, .. }), "{err}");
    assert!(err.to_string().starts_with("signing key #2:"), "{err}");

    // P-384 is refused: the broker signs ES256, RS256 or EdDSA only.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .unwrap()
        .serialize_pem();
    let err = SigningKeys::from_pems(&[p384]).unwrap_err();
    assert!(matches!(err, KeyError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("P-384"), "{err}");

    // A SEC1 ("EC PRIVATE KEY") file gets a conversion hint.
    let sec1 = EcKeyPair::generate(EcCurve::P256).unwrap();
    let sec1 = String::from_utf8(sec1.to_traditional_pem_private_key()).unwrap();
    let err = SigningKeys::from_pems(&[sec1]).unwrap_err();
    assert!(matches!(err, KeyError::NotPkcs8 { .. }), "{err}");
    assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");

    let err = SigningKeys::from_pems(&["hello".to_string()]).unwrap_err();
    assert!(matches!(err, KeyError::NotPkcs8 { .. }), "{err}");

    // A certificate-shaped PEM block holding junk under a PRIVATE KEY label.
    let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_string();
    let err = SigningKeys::from_pems(&[junk]).unwrap_err();
    assert!(matches!(err, KeyError::InvalidKey { .. }), "{err}");

    assert!(matches!(SigningKeys::from_pems(&[]), Err(KeyError::NoKeys)));
    let pem = es256_pem();
    assert!(matches!(
        SigningKeys::from_pems(&[pem.clone(), pem]),
        Err(KeyError::DuplicateKey { .. })
    ));
}

#[test]
fn load_names_the_file_and_debug_hides_key_material() {
    let missing = PathBuf::from("/nonexistent/credbroker/jwt.key");
    let err = SigningKeys::load(std::slice::from_ref(&missing)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/credbroker/jwt.key:"),
        "{err}"
    );

    let pem = es256_pem();
    let keys = SigningKeys::from_pems(std::slice::from_ref(&pem)).unwrap();
    let debug = format!("{keys:?} {:?}", keys.active());
    assert!(debug.contains(keys.active().kid()), "{debug}");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line), "{debug}");
    }
    let pair = EcKeyPair::from_pem(&pem, Some(EcCurve::P256)).unwrap();
    let d = pair.to_jwk_private_key();
    let d = d.parameter("d").unwrap().as_str().unwrap();
    assert!(!debug.contains(d), "{debug}");
    assert!(!keys.jwks().to_string().contains(d));
}

#[test]
fn ed25519_loads_from_pkcs8_v1_and_v2() {
    // v1 (OpenSSL `genpkey`), read by josekit directly.
    let v1 = EdKeyPair::generate(EdCurve::Ed25519).unwrap();
    let v1_pem = String::from_utf8(v1.to_pem_private_key()).unwrap();
    let keys = SigningKeys::from_pems(std::slice::from_ref(&v1_pem)).unwrap();
    assert_eq!(keys.active().alg(), "EdDSA");
    assert_eq!(
        keys.active().public_jwk()["x"],
        v1.to_jwk_public_key().parameter("x").unwrap().clone()
    );

    // v2 (RFC 5958, ring and rcgen), rewritten to v1 from its seed: same public key.
    let v2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let keys = SigningKeys::from_pems(&[v2.serialize_pem()]).unwrap();
    assert_eq!(
        keys.active().public_jwk()["x"],
        URL_SAFE_NO_PAD.encode(v2.public_key_raw())
    );
    let token = keys.active().sign_jwt(&sample_claims()).unwrap();
    assert_eq!(keys.verify_own(&token).unwrap(), sample_claims());
}

use std::collections::BTreeSet;

use serde_json::{Map, json};

use super::*;
use crate::issue::generate_jwt_key_pem;

fn keys() -> SigningKeys {
    SigningKeys::from_pems(&[generate_jwt_key_pem().unwrap()]).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const NOW: i64 = 1_800_000_000;

fn request<'a>(audiences: &'a [String], scopes: &'a [String]) -> JwtRequest<'a> {
    JwtRequest {
        issuer: "https://broker.example.org:8443",
        spiffe_id: "spiffe://example.org/ns/prod/sa/api",
        audiences,
        scopes,
        owner: "team-runtime",
        attestor: "k8s",
        attestor_kind: "jwt",
        ttl: Duration::from_secs(300),
        now: NOW,
        cnf_x5t_s256: None,
        act: None,
        source: "c3JjLWhhc2gtMTIzNDU2",
        rule: "k8s-workloads",
        chain: &[],
    }
}

fn names(claims: &Map<String, Value>) -> BTreeSet<&str> {
    claims.keys().map(String::as_str).collect()
}

#[test]
fn minimal_jwt_has_exactly_the_required_claims() {
    let keys = keys();
    let aud = strings(&["payments"]);
    let issued = mint(&keys, &request(&aud, &[])).unwrap();
    let claims = keys.verify_own(&issued.token).unwrap();

    assert_eq!(
        names(&claims),
        BTreeSet::from([
            "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "owner", "att", "src", "rule"
        ])
    );
    assert_eq!(claims["iss"], "https://broker.example.org:8443");
    assert_eq!(claims["sub"], "spiffe://example.org/ns/prod/sa/api");
    assert_eq!(claims["aud"], "payments", "one audience is a string");
    assert_eq!(claims["iat"], NOW);
    assert_eq!(claims["nbf"], NOW);
    assert_eq!(claims["exp"], NOW + 300);
    assert_eq!(claims["jti"], issued.jti.as_str());
    assert_eq!(claims["owner"], "team-runtime");
    assert_eq!(claims["att"], json!({"attestor": "k8s", "kind": "jwt"}));
    assert_eq!(claims["src"], "c3JjLWhhc2gtMTIzNDU2");
    assert_eq!(claims["rule"], "k8s-workloads");
    assert_eq!(issued.issued_at, NOW);
    assert_eq!(issued.expires_at, NOW + 300);
}

#[test]
fn optional_claims_appear_when_given() {
    let keys = keys();
    let aud = strings(&["payments", "ledger"]);
    let scopes = strings(&["deploy:staging", "deploy:prod"]);
    let chain = strings(&["root-id", "parent-id"]);
    let act = json!({"sub": "spiffe://example.org/ns/prod/sa/agent"});
    let req = JwtRequest {
        cnf_x5t_s256: Some("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"),
        act: Some(&act),
        chain: &chain,
        ..request(&aud, &scopes)
    };
    let claims = keys.verify_own(&mint(&keys, &req).unwrap().token).unwrap();
    assert_eq!(
        claims["aud"],
        json!(["payments", "ledger"]),
        "several: array"
    );
    assert_eq!(claims["scope"], "deploy:staging deploy:prod");
    assert_eq!(
        claims["cnf"],
        json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    );
    assert_eq!(claims["act"], act);
    assert_eq!(claims["chain"], json!(["root-id", "parent-id"]));
}

#[test]
fn credential_ids_are_128_bit_base64url_and_unique() {
    let a = new_credential_id();
    let b = new_credential_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 22);
    assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 16);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
}

#[test]
fn requests_that_cannot_be_valid_are_refused() {
    let keys = keys();
    assert!(matches!(
        mint(&keys, &request(&[], &[])),
        Err(KeyError::Claims(_))
    ));
    let aud = strings(&["a"]);
    let zero = JwtRequest {
        ttl: Duration::from_millis(500),
        ..request(&aud, &[])
    };
    assert!(matches!(mint(&keys, &zero), Err(KeyError::Claims(_))));
}

#[test]
fn issued_jwt_debug_hides_the_token() {
    let keys = keys();
    let aud = strings(&["a"]);
    let issued = mint(&keys, &request(&aud, &[])).unwrap();
    let debug = format!("{issued:?}");
    assert!(debug.contains(&issued.jti));
    assert!(!debug.contains(&issued.token));
}

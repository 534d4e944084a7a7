use super::*;
use rcgen::{CertificateParams, KeyPair};

fn csr_pem(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serialize_request(key).unwrap().pem().unwrap()
}

#[test]
fn lineage_round_trips_through_der() {
    let l = Lineage {
        src: "abc".into(),
        rule: "r".into(),
        chain: vec!["01".into(); 10],
    };
    assert_eq!(Lineage::from_der(&l.to_der()), Some(l));
    let long = Lineage {
        src: "x".repeat(300),
        rule: "r".into(),
        chain: Vec::new(),
    };
    assert_eq!(Lineage::from_der(&long.to_der()), Some(long));
    assert_eq!(Lineage::from_der(&[0x0c, 0x85, 1]), None);
    assert_eq!(Lineage::from_der(&[]), None);
}

#[test]
fn accepts_every_listed_key_type() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = VerifiedCsr::parse(csr_pem(&key).as_bytes()).unwrap();
        assert_eq!(csr.der_bytes(), key.public_key_raw());
    }
}

#[test]
fn refuses_garbage_and_tampered_requests() {
    assert_eq!(VerifiedCsr::parse(b"  ").err(), Some(CsrError::Empty));
    assert_eq!(
        VerifiedCsr::parse(b"garbage").err(),
        Some(CsrError::Malformed)
    );
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    // Flip a bit inside the signature (the last bytes).
    let n = der.len();
    der[n - 3] ^= 0x01;
    assert_eq!(VerifiedCsr::parse(&der).err(), Some(CsrError::BadSignature));
}

/// A DER request whose last byte happens to be an ASCII whitespace value (about 2 % of
/// ECDSA requests) is still a valid request: only PEM text may be trimmed.
#[test]
fn der_requests_ending_in_a_whitespace_byte_are_accepted() {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec![]).unwrap();
    let mut found = 0;
    for _ in 0..5_000 {
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        if der.last().is_some_and(u8::is_ascii_whitespace) {
            assert!(
                VerifiedCsr::parse(&der).is_ok(),
                "last byte {:#04x}",
                der[der.len() - 1]
            );
            found += 1;
            if found == 3 {
                break;
            }
        }
    }
    assert!(
        found > 0,
        "no request ending in a whitespace byte was produced"
    );
}

#[test]
fn serials_are_hex_without_leading_zeros() {
    assert_eq!(serial_hex(&[0, 0x0a, 0xbc]), "abc");
    assert_eq!(serial_hex(&[0]), "0");
    assert_eq!(serial_bytes("abc"), Some(vec![0x0a, 0xbc]));
    assert!(is_serial("40ab") && !is_serial("xyz") && !is_serial(""));
}

/// A CA certificate signed by `issuer` (self-signed without one), valid until `not_after`.
fn ca_cert(
    name: &str,
    not_after: i64,
    issuer: Option<&rcgen::Issuer<'_, KeyPair>>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    (cert.der().clone(), key)
}

#[test]
fn an_svid_never_outlives_any_certificate_above_it() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let day = 86_400;
    let (root, root_key) = ca_cert("root", now + 365 * day, None);
    let root_issuer = rcgen::Issuer::from_ca_cert_der(&root, root_key).unwrap();
    // The upper intermediate expires first; the issuing one below it lasts longer.
    let (upper, upper_key) = ca_cert("upper", now + day, Some(&root_issuer));
    let upper_issuer = rcgen::Issuer::from_ca_cert_der(&upper, upper_key).unwrap();
    let (issuing, issuing_key) = ca_cert("issuing", now + 30 * day, Some(&upper_issuer));
    let ca = X509Ca::from_parts(
        vec![issuing, upper],
        issuing_key,
        vec![root],
        "ca.pem",
        "ca.key",
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = VerifiedCsr::parse(csr_pem(&key).as_bytes()).unwrap();
    let lineage = Lineage {
        src: "s".into(),
        rule: "r".into(),
        chain: Vec::new(),
    };
    let request = |ttl_days: u64| SvidRequest {
        spiffe_id: "spiffe://example.org/w",
        ttl: Duration::from_secs(ttl_days * day as u64),
        now,
        lineage: &lineage,
    };
    assert_eq!(ca.mint(&csr, &request(10)).unwrap().not_after, now + day);
    assert_eq!(ca.not_after(), now + day);
}

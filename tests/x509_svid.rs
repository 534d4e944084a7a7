//! The mTLS door end to end: real binary, real HTTPS with real client certificates.
//! Covers SPEC §5.2, §6.1 (`client_credentials`), §6.2, §6.3 (lineage of renewals), §6.4
//! (bundle, CRL) and the X.509/mTLS items of §12.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use support::broker::{BrokerProcess, KeyDir, base_config, client, decode_segment};
use support::redis::RedisServer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const ADMIN_ID: &str = "spiffe://example.org/admin/ops";
const LINEAGE_OID: &str = "1.3.6.1.4.1.58270.1.1";

fn rules() -> String {
    format!(
        r#"spiffe_ids = ["{ADMIN_ID}"]

[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "attestation-ca.pem"

[[attestor]]
name = "bootstrap"
kind = "join_token"

[[rule]]
name = "legacy-hosts"
attestor = "legacy-pki"
owner = "team-infra"
match = {{ "/subject/o" = "acme-hosts" }}
spiffe_id = "spiffe://example.org/host/{{/subject/cn}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]

[[rule]]
name = "join-hosts"
attestor = "bootstrap"
owner = "team-platform"
spiffe_id = "{{/spiffe_id}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]
max_ttl = "30m"
"#
    )
}

struct Fixture {
    keys: KeyDir,
    broker: BrokerProcess,
    http: reqwest::Client,
}

fn start() -> Fixture {
    let keys = KeyDir::generate();
    let config = base_config(&keys, "store = \"memory\"") + &rules();
    let broker = BrokerProcess::start(&keys, &config);
    let http = client(&keys, None);
    Fixture { keys, broker, http }
}

/// A P-256 CSR that asks for everything it must not get: CA:true, DNS and URI SANs, a CN.
fn greedy_csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec![
        "evil.example".to_string(),
        "other.example".to_string(),
    ])
    .unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example.org/admin/ops".try_into().unwrap(),
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "i-am-root");
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn plain_csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// Writes a chain and key into files and returns their paths (for an mTLS client).
fn identity_files(dir: &Path, name: &str, chain: &str, key: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert, key_path)
}

fn leaf(chain_pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Fixture {
    async fn join_token(&self, spiffe_id: &str) -> String {
        let resp = self
            .http
            .post(self.broker.url("/v1/join-tokens"))
            .bearer_auth(self.keys.admin_token())
            .json(&json!({"spiffe_id": spiffe_id, "ttl": 600}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    async fn svid(
        &self,
        http: &reqwest::Client,
        bearer: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let mut req = http.post(self.broker.url("/v1/svid")).json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A fresh SVID for `spiffe_id` through a join token; returns the response and key PEM.
    async fn bootstrap(&self, spiffe_id: &str) -> (Value, String) {
        let token = self.join_token(spiffe_id).await;
        let key = KeyPair::generate().unwrap();
        let (status, body) = self
            .svid(&self.http, Some(&token), json!({"csr": plain_csr(&key)}))
            .await;
        assert_eq!(status, 200, "{body}");
        (body, key.serialize_pem())
    }

    /// Renews over mTLS with the given SVID; returns status, body and the new key.
    async fn renew(&self, dir: &Path, name: &str, svid: &Value, key: &str) -> (u16, Value, String) {
        let (cert, key_path) = identity_files(dir, name, svid["svid_chain"].as_str().unwrap(), key);
        let http = client(&self.keys, Some((&cert, &key_path)));
        let new_key = KeyPair::generate().unwrap();
        let (status, body) = self
            .svid(&http, None, json!({"csr": plain_csr(&new_key)}))
            .await;
        (status, body, new_key.serialize_pem())
    }

    async fn revoke(&self, serial: &str) {
        self.revoke_at(&self.broker, json!({"credential_id": serial}))
            .await;
    }

    async fn revoke_at(&self, broker: &BrokerProcess, body: Value) {
        let resp = self
            .http
            .post(broker.url("/v1/revoke"))
            .bearer_auth(self.keys.admin_token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

fn serial_of(svid: &Value) -> String {
    let der = leaf(svid["svid_chain"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    format!("{:x}", cert.tbs_certificate.serial)
}

/// Every field the SPIFFE X509-SVID profile and SPEC §5.2 fix, read with x509-parser.
fn assert_svid_profile(chain_pem: &str, ca_pem: &Path, spiffe_id: &str, ttl: i64) -> Value {
    let der = leaf(chain_pem);
    let (rest, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(cert.version().0, 2, "X.509 v3");
    // Serial: positive, ≥ 64 bits, lowercase hex without leading zeros as credential id.
    let serial = cert.tbs_certificate.raw_serial();
    assert!(serial[0] & 0x80 == 0, "positive serial");
    assert!(serial.len() >= 8);
    // Subject: nothing from the CSR.
    assert!(cert.subject().iter_common_name().next().is_none());
    // Validity: notBefore = now − 30 s, lifetime = TTL.
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!((nb - (now() - 30)).abs() <= 10, "notBefore {nb}");
    assert_eq!(na - nb, ttl + 30);
    let mut seen = std::collections::HashSet::new();
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        assert!(seen.insert(oid.clone()), "duplicate extension {oid}");
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                assert!(ext.critical, "basicConstraints critical");
                assert!(!bc.ca, "CA:false even though the CSR asked for CA:true");
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "keyUsage critical");
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
                assert!(!ku.key_encipherment(), "no keyEncipherment for EC keys");
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                assert!(!eku.any && !eku.code_signing);
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                assert_eq!(
                    san.general_names.len(),
                    1,
                    "exactly one SAN, the CSR's are ignored"
                );
                assert!(matches!(san.general_names[0], GeneralName::URI(u) if u == spiffe_id));
            }
            ParsedExtension::SubjectKeyIdentifier(_) => {}
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                assert!(aki.key_identifier.is_some());
            }
            _ if oid == LINEAGE_OID => assert!(!ext.critical, "lineage is non-critical"),
            other => panic!("unexpected extension {oid}: {other:?}"),
        }
    }
    for required in [
        "2.5.29.19",
        "2.5.29.15",
        "2.5.29.37",
        "2.5.29.17",
        "2.5.29.14",
        "2.5.29.35",
        LINEAGE_OID,
    ] {
        assert!(seen.contains(required), "missing extension {required}");
    }
    // Signed by the broker's CA.
    let ca_der = CertificateDer::pem_file_iter(ca_pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    // The lineage extension: DER UTF8String of JSON.
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == LINEAGE_OID)
        .unwrap();
    assert_eq!(ext.value[0], 0x0c);
    let json_start = ext.value.iter().position(|b| *b == b'{').unwrap();
    serde_json::from_slice(&ext.value[json_start..]).unwrap()
}

/// Verifies a chain against a PEM bundle with webpki, as a relying party would.
fn webpki_verifies(chain_pem: &str, bundle_pem: &str) -> Result<(), webpki::Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&certs[0])?;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &certs[1..],
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn join_token_bootstrap_issues_a_profile_conformant_svid() {
    let f = start();
    let token = f.join_token("spiffe://example.org/host/web-1").await;
    let key = KeyPair::generate().unwrap();
    let (status, body) = f
        .svid(
            &f.http,
            Some(&token),
            json!({"csr": greedy_csr(&key), "ttl": 300}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffe_id"], "spiffe://example.org/host/web-1");
    let chain = body["svid_chain"].as_str().unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        1,
        "no root in the chain"
    );
    let lineage = assert_svid_profile(
        chain,
        &f.keys.path("ca.pem"),
        "spiffe://example.org/host/web-1",
        300,
    );
    assert_eq!(lineage["rule"], "join-hosts");
    assert!(lineage["src"].as_str().is_some_and(|s| s.len() == 22));
    assert!(lineage.get("chain").is_none());
    // The leaf key is the CSR's key.
    let der = leaf(chain);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    // Bundle = the root; webpki verifies the chain against it.
    let bundle = body["bundle"].as_str().unwrap();
    assert_eq!(
        bundle.trim(),
        std::fs::read_to_string(f.keys.path("ca.pem"))
            .unwrap()
            .trim()
    );
    webpki_verifies(chain, bundle).unwrap();
    // Times.
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp()
    };
    let expires = parse(&body["expires_at"]);
    let refresh = parse(&body["refresh_after"]);
    let issued = expires - 300;
    assert!(
        refresh >= issued + 120 && refresh <= issued + 180,
        "refresh_after at 50 % ± 10 %"
    );
    // The join token is single use.
    let (status, body) = f
        .svid(&f.http, Some(&token), json!({"csr": plain_csr(&key)}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn mtls_attestation_and_der_csr() {
    let f = start();
    let http = client(
        &f.keys,
        Some((&f.keys.path("client.pem"), &f.keys.path("client.key"))),
    );
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    let resp = http
        .post(f.broker.url("/v1/svid"))
        .header("content-type", "application/pkcs10")
        .body(der)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["spiffe_id"], "spiffe://example.org/host/example-host");
    let lineage = assert_svid_profile(
        body["svid_chain"].as_str().unwrap(),
        &f.keys.path("ca.pem"),
        "spiffe://example.org/host/example-host",
        600,
    );
    assert_eq!(lineage["rule"], "legacy-hosts");
    // Ed25519 and RSA-2048 are accepted too; RSA keys also get keyEncipherment.
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let (status, _) = f.svid(&http, None, json!({"csr": plain_csr(&ed)})).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let rsa_csr = openssl_csr(dir.path(), 2048);
    let (status, body) = f.svid(&http, None, json!({"csr": rsa_csr})).await;
    assert_eq!(status, 200, "{body}");
    let der = leaf(body["svid_chain"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
}

/// An RSA CSR made by the `openssl` CLI (rcgen with ring cannot generate RSA keys).
fn openssl_csr(dir: &Path, bits: u32) -> String {
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-subj",
            "/CN=rsa-host",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("rsa{bits}.key")))
        .arg("-out")
        .arg(dir.join(format!("rsa{bits}.csr")))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.join(format!("rsa{bits}.csr"))).unwrap()
}

#[tokio::test]
async fn bad_csrs_are_refused_with_a_reason() {
    let f = start();
    let http = client(
        &f.keys,
        Some((&f.keys.path("client.pem"), &f.keys.path("client.key"))),
    );
    let expect_400 = |(status, body): (u16, Value), words: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request");
        let d = body["error_description"].as_str().unwrap().to_lowercase();
        assert!(d.contains(words), "{d}");
    };
    // Bad signature: a valid CSR with one bit of the signature flipped.
    let key = KeyPair::generate().unwrap();
    let mut der = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let n = der.len();
    der[n - 2] ^= 0x01;
    let resp = http
        .post(f.broker.url("/v1/svid"))
        .header("content-type", "application/pkcs10")
        .body(der)
        .send()
        .await
        .unwrap();
    expect_400(
        (resp.status().as_u16(), resp.json().await.unwrap()),
        "signature",
    );
    // RSA-1024: refused as a weak key.
    let dir = tempfile::tempdir().unwrap();
    let weak = openssl_csr(dir.path(), 1024);
    expect_400(f.svid(&http, None, json!({"csr": weak})).await, "1024");
    // Garbage, as DER and as JSON.
    let resp = http
        .post(f.broker.url("/v1/svid"))
        .header("content-type", "application/pkcs10")
        .body(vec![0x30, 0x82, 0xff, 0x00, 1, 2, 3])
        .send()
        .await
        .unwrap();
    expect_400((resp.status().as_u16(), resp.json().await.unwrap()), "csr");
    expect_400(f.svid(&http, None, json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"})).await, "csr");
    expect_400(f.svid(&http, None, json!({"nope": 1})).await, "csr");
    // Oversize: over max_body (16 KiB) → 413.
    let (status, body) = f
        .svid(&http, None, json!({"csr": "A".repeat(20 * 1024)}))
        .await;
    assert_eq!(status, 413, "{body}");
    // A bad CSR does not burn a join token.
    let token = f.join_token("spiffe://example.org/host/keep").await;
    let (status, _) = f
        .svid(&f.http, Some(&token), json!({"csr": "garbage"}))
        .await;
    assert_eq!(status, 400);
    let (status, body) = f
        .svid(&f.http, Some(&token), json!({"csr": plain_csr(&key)}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A self-made CA and a client certificate from it.
fn make_client_cert(
    ca: Option<(&Path, &Path)>,
    cn: &str,
    org: &str,
    validity: (i64, i64),
    uri: Option<&str>,
) -> (String, String) {
    let (ca_params_pem, ca_key) = match ca {
        Some((cert, key)) => (
            std::fs::read_to_string(cert).unwrap(),
            KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap(),
        ),
        None => {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name.push(DnType::CommonName, "rogue CA");
            let cert = p.self_signed(&key).unwrap();
            (cert.pem(), key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_params_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(validity.0).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(validity.1).unwrap();
    if let Some(u) = uri {
        p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
    }
    let cert = p.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn untrusted_expired_and_unmatched_client_certificates() {
    let f = start();
    let dir = tempfile::tempdir().unwrap();
    let att = (
        f.keys.path("attestation-ca.pem"),
        f.keys.path("attestation-ca.key"),
    );
    let now = now();
    let csr = plain_csr(&KeyPair::generate().unwrap());
    let cases = [
        (
            "rogue",
            None,
            "acme-hosts",
            (now - 60, now + 3600),
            401,
            "invalid_client",
            "trusted",
        ),
        (
            "expired",
            Some((att.0.as_path(), att.1.as_path())),
            "acme-hosts",
            (now - 7200, now - 3600),
            401,
            "invalid_client",
            "expired",
        ),
        (
            "other-org",
            Some((att.0.as_path(), att.1.as_path())),
            "not-acme",
            (now - 60, now + 3600),
            403,
            "access_denied",
            "legacy-hosts",
        ),
    ];
    for (name, ca, org, validity, status, code, words) in cases {
        let (cert, key) = make_client_cert(ca, name, org, validity, None);
        let (c, k) = identity_files(dir.path(), name, &cert, &key);
        let http = client(&f.keys, Some((&c, &k)));
        let (got, body) = f.svid(&http, None, json!({"csr": csr})).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"], code, "{name}");
        let d = body["error_description"].as_str().unwrap();
        assert!(d.contains(words), "{name}: {d}");
    }
    // A certificate from another CA that claims the admin SPIFFE ID authenticates nothing.
    let (cert, key) = make_client_cert(
        Some((att.0.as_path(), att.1.as_path())),
        "x",
        "x",
        (now - 60, now + 3600),
        Some(ADMIN_ID),
    );
    let (c, k) = identity_files(dir.path(), "fake-admin", &cert, &key);
    let http = client(&f.keys, Some((&c, &k)));
    let resp = http.get(f.broker.url("/v1/locks")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // No attestation at all.
    let (status, body) = f.svid(&f.http, None, json!({"csr": csr})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn renewal_keeps_the_identity_adds_lineage_and_dies_with_its_ancestor() {
    let f = start();
    let dir = tempfile::tempdir().unwrap();
    let id = "spiffe://example.org/host/renew-me";
    let (first, key1) = f.bootstrap(id).await;
    let serial1 = serial_of(&first);

    // Renewal over mTLS with the SVID: same SPIFFE ID, lineage names the parent.
    let (status, second, key2) = f.renew(dir.path(), "first", &first, &key1).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["spiffe_id"], id);
    let lineage = assert_svid_profile(
        second["svid_chain"].as_str().unwrap(),
        &f.keys.path("ca.pem"),
        id,
        600,
    );
    assert_eq!(lineage["chain"], json!([serial1]));
    assert_eq!(lineage["rule"], "join-hosts");
    let serial2 = serial_of(&second);

    // And again: the chain grows root first.
    let (status, third, _) = f.renew(dir.path(), "second", &second, &key2).await;
    assert_eq!(status, 200, "{third}");
    let lineage = assert_svid_profile(
        third["svid_chain"].as_str().unwrap(),
        &f.keys.path("ca.pem"),
        id,
        600,
    );
    assert_eq!(lineage["chain"], json!([serial1, serial2]));

    // The SVID also gets JWTs for itself with client_credentials, bound to its certificate.
    let (c, k) = identity_files(
        dir.path(),
        "second-cc",
        second["svid_chain"].as_str().unwrap(),
        &key2,
    );
    let http = client(&f.keys, Some((&c, &k)));
    let client_credentials = || async {
        http.post(f.broker.url("/v1/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", "inventory"),
            ])
            .send()
            .await
            .unwrap()
    };
    let resp = client_credentials().await;
    assert_eq!(resp.status().as_u16(), 200);
    let token: Value = resp.json().await.unwrap();
    let claims = decode_segment(token["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["chain"], json!([serial1, serial2]));
    assert!(claims["cnf"]["x5t#S256"].is_string());

    // Revoke the first SVID (upper case, colon separated, as openssl prints it).
    let colon = serial1
        .to_uppercase()
        .as_bytes()
        .rchunks(2)
        .rev()
        .map(|c| std::str::from_utf8(c).unwrap().to_string())
        .collect::<Vec<_>>()
        .join(":");
    f.revoke(&colon).await;
    // The first cannot renew, and neither can the second, renewed before the revocation.
    let (status, body, _) = f.renew(dir.path(), "first-again", &first, &key1).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    let (status, body, _) = f.renew(dir.path(), "second-again", &second, &key2).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("descends")
    );
    // The connection that was attested before the revocation (its chain validated once,
    // then remembered) is refused as well: revocation is checked on every request.
    let resp = client_credentials().await;
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("descends"),
        "{body}"
    );

    // The CRL lists both, verifies against the CA, and has a short nextUpdate.
    let resp = f.http.get(f.broker.url("/v1/crl")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
    let der = resp.bytes().await.unwrap();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let ca_der = CertificateDer::pem_file_iter(f.keys.path("ca.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    assert_eq!(crl.issuer(), ca.subject());
    let listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| format!("{:x}", r.user_certificate))
        .collect();
    assert!(listed.contains(&serial1), "{listed:?}");
    assert!(
        listed.contains(&serial2),
        "lineage revocation reaches the CRL: {listed:?}"
    );
    let next = crl.next_update().unwrap().timestamp();
    assert_eq!(next - crl.last_update().timestamp(), 300);
    // webpki, as a relying party, rejects the revoked certificate with the CRL.
    let crl_owned = webpki::OwnedCertRevocationList::from_der(&der).unwrap();
    let crls = [&webpki::CertRevocationList::Owned(crl_owned)];
    let revocation = webpki::RevocationOptionsBuilder::new(&crls)
        .unwrap()
        .build();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(second["svid_chain"].as_str().unwrap().as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
    let ee = webpki::EndEntityCert::try_from(&certs[0]).unwrap();
    let result = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            Some(revocation),
            None,
        )
        .map(|_| ());
    assert_eq!(result, Err(webpki::Error::CertRevoked));
}

#[tokio::test]
async fn client_credentials_over_mtls() {
    let f = start();
    let form = [
        ("grant_type", "client_credentials"),
        ("audience", "inventory"),
    ];
    // No certificate → 401 invalid_client.
    let resp = f
        .http
        .post(f.broker.url("/v1/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    // Trusted certificate, matching rule → a JWT bound to the certificate.
    let http = client(
        &f.keys,
        Some((&f.keys.path("client.pem"), &f.keys.path("client.key"))),
    );
    let resp = http
        .post(f.broker.url("/v1/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = decode_segment(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "spiffe://example.org/host/example-host");
    assert_eq!(claims["att"]["kind"], "mtls");
    let der = CertificateDer::pem_file_iter(f.keys.path("client.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    use base64::Engine;
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, &der));
    assert_eq!(claims["cnf"]["x5t#S256"], expected.as_str());
    // Audience not allowed → invalid_target.
    let resp = http
        .post(f.broker.url("/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "payments"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Trusted certificate that no rule allows → 400 unauthorized_client.
    let dir = tempfile::tempdir().unwrap();
    let att = (
        f.keys.path("attestation-ca.pem"),
        f.keys.path("attestation-ca.key"),
    );
    let now = now();
    let (cert, key) = make_client_cert(
        Some((&att.0, &att.1)),
        "h",
        "other",
        (now - 60, now + 3600),
        None,
    );
    let (c, k) = identity_files(dir.path(), "other", &cert, &key);
    let resp = client(&f.keys, Some((&c, &k)))
        .post(f.broker.url("/v1/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized_client");
    // Untrusted certificate → 401.
    let (cert, key) = make_client_cert(None, "h", "acme-hosts", (now - 60, now + 3600), None);
    let (c, k) = identity_files(dir.path(), "rogue", &cert, &key);
    let resp = client(&f.keys, Some((&c, &k)))
        .post(f.broker.url("/v1/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn admin_endpoints_over_mtls() {
    let f = start();
    let dir = tempfile::tempdir().unwrap();
    let (admin, admin_key) = f.bootstrap(ADMIN_ID).await;
    let (c, k) = identity_files(
        dir.path(),
        "admin",
        admin["svid_chain"].as_str().unwrap(),
        &admin_key,
    );
    let http = client(&f.keys, Some((&c, &k)));
    let resp = http.get(f.broker.url("/v1/locks")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The admin SVID can revoke.
    let (other, other_key) = f.bootstrap("spiffe://example.org/host/worker").await;
    let resp = http
        .post(f.broker.url("/v1/revoke"))
        .json(&json!({"credential_id": serial_of(&other)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // A workload SVID is authenticated but not an admin → 403 (here: revoked → 401 first).
    let (worker, worker_key) = f.bootstrap("spiffe://example.org/host/worker2").await;
    let (c, k) = identity_files(
        dir.path(),
        "worker",
        worker["svid_chain"].as_str().unwrap(),
        &worker_key,
    );
    let resp = client(&f.keys, Some((&c, &k)))
        .get(f.broker.url("/v1/locks"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let (c, k) = identity_files(
        dir.path(),
        "revoked",
        other["svid_chain"].as_str().unwrap(),
        &other_key,
    );
    let resp = client(&f.keys, Some((&c, &k)))
        .get(f.broker.url("/v1/locks"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn bundle_endpoints() {
    let f = start();
    let resp = f.http.get(f.broker.url("/v1/bundle")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let bundle: Value = resp.json().await.unwrap();
    let keys = bundle["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1);
    assert!(x509[0].get("kid").is_none(), "x509-svid keys carry no kid");
    let x5c = x509[0]["x5c"][0].as_str().unwrap();
    let ca_der = CertificateDer::pem_file_iter(f.keys.path("ca.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(x5c)
            .unwrap(),
        ca_der.as_ref()
    );
    assert_eq!(x509[0]["kty"], "EC");
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(jwt.len(), 1);
    assert!(jwt[0]["kid"].is_string());
    assert!(bundle["spiffe_sequence"].is_u64());
    assert!(bundle["spiffe_refresh_hint"].is_u64());
    let pem = f
        .http
        .get(f.broker.url("/v1/bundle.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        pem.trim(),
        std::fs::read_to_string(f.keys.path("ca.pem"))
            .unwrap()
            .trim()
    );
    // An empty CRL is still a valid, signed CRL.
    let der = f
        .http
        .get(f.broker.url("/v1/crl"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
}

#[tokio::test]
async fn intermediate_ca_issues_and_the_chain_omits_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = support::broker::run_cli(&[
        "keys",
        "generate",
        "--intermediate",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = KeyDir { dir };
    let config = base_config(&keys, "store = \"memory\"").replace(
        "ca_cert = \"ca.pem\"\nca_key = \"ca.key\"",
        "ca_cert = \"intermediate-ca.pem\"\nca_key = \"intermediate-ca.key\"\nbundle = \"ca.pem\"",
    ) + &rules();
    let broker = BrokerProcess::start(&keys, &config);
    let http = client(
        &keys,
        Some((&keys.path("client.pem"), &keys.path("client.key"))),
    );
    let key = KeyPair::generate().unwrap();
    let resp = http
        .post(broker.url("/v1/svid"))
        .json(&json!({"csr": plain_csr(&key)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let chain = body["svid_chain"].as_str().unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    let bundle = body["bundle"].as_str().unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    webpki_verifies(chain, bundle).unwrap();
    // A renewal with it (chain presented with its intermediate) works.
    let tmp = tempfile::tempdir().unwrap();
    let (c, k) = identity_files(tmp.path(), "svid", chain, &key.serialize_pem());
    let resp = client(&keys, Some((&c, &k)))
        .post(broker.url("/v1/svid"))
        .json(&json!({"csr": plain_csr(&KeyPair::generate().unwrap())}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// A `redis-server` and two brokers on it: A in the fixture (its log collected into `log`
/// when given), B beside it.
fn two_brokers_on_one_redis(
    log: Option<std::sync::Arc<std::sync::Mutex<String>>>,
) -> (RedisServer, Fixture, BrokerProcess) {
    let redis = RedisServer::start();
    let keys = KeyDir::generate();
    let config = base_config(
        &keys,
        &format!("store = \"redis\"\nredis_url = \"{}\"", redis.url),
    ) + &rules();
    let a = match log {
        Some(log) => BrokerProcess::start_logging(&keys, &config, "warn", log),
        None => BrokerProcess::start(&keys, &config),
    };
    let b_config = keys.path("broker-b.toml");
    std::fs::write(&b_config, &config).unwrap();
    let b = BrokerProcess::start_with(&b_config);
    let f = Fixture {
        http: client(&keys, None),
        keys,
        broker: a,
    };
    (redis, f, b)
}

/// The broker's CRL serials once they include `serial`, or after five seconds without.
async fn crl_soon_listing(
    http: &reqwest::Client,
    broker: &BrokerProcess,
    serial: &str,
) -> Vec<String> {
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = crl_serials(http, broker).await;
        if listed.iter().any(|s| s == serial) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    listed
}

/// Serials (lowercase hex) listed by a broker's CRL.
async fn crl_serials(http: &reqwest::Client, broker: &BrokerProcess) -> Vec<String> {
    let resp = http.get(broker.url("/v1/crl")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let der = resp.bytes().await.unwrap();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| format!("{:x}", r.user_certificate))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_on_one_store_lists_what_another_issued_and_an_identity_revocation_covers() {
    let (mut redis, f, b) = two_brokers_on_one_redis(None);
    let id = "spiffe://example.org/host/shared-crl";
    let (svid, _) = f.bootstrap(id).await;
    let serial = serial_of(&svid);
    let (other, _) = f.bootstrap("spiffe://example.org/host/bystander").await;
    let bystander = serial_of(&other);
    assert!(!crl_serials(&f.http, &b).await.contains(&serial));

    // Revoke the identity at B, which never saw the SVID: A shares what it covers.
    f.revoke_at(&b, json!({"spiffe_id": id})).await;
    let listed = crl_soon_listing(&f.http, &b, &serial).await;
    assert!(listed.contains(&serial), "B's CRL: {listed:?}");
    assert!(!listed.contains(&bystander), "B's CRL: {listed:?}");
    let at_a = crl_serials(&f.http, &f.broker).await;
    assert!(
        at_a.contains(&serial) && !at_a.contains(&bystander),
        "A's CRL: {at_a:?}"
    );

    // Without the store, no CRL rather than one that may miss the other brokers' serials.
    redis.stop();
    let resp = f.http.get(b.url("/v1/crl")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_that_fails_is_retried_without_another_revocation() {
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (redis, f, b) = two_brokers_on_one_redis(Some(log.clone()));
    let id = "spiffe://example.org/host/retried";
    let (svid, _) = f.bootstrap(id).await;
    let serial = serial_of(&svid);

    // The shared set's key holds a string: every write to it fails until it is removed.
    let mut raw = raw_redis(&redis).await;
    let key = "credbroker:crl:serials";
    make_a_string(&mut raw, key).await;
    f.revoke_at(&b, json!({"spiffe_id": id})).await;
    let failed = "could not share revoked SVID serials";
    for _ in 0..100 {
        if log.lock().unwrap().contains(failed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        log.lock().unwrap().contains(failed),
        "A's log: {}",
        log.lock().unwrap()
    );

    // The store mends; no revocation follows, yet A shares the serial on its own.
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let listed = crl_soon_listing(&f.http, &b, &serial).await;
    assert!(listed.contains(&serial), "B's CRL: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_restarted_still_lists_the_svids_issued_before_when_revoked() {
    let redis = RedisServer::start();
    let keys = KeyDir::generate();
    let store = format!("store = \"redis\"\nredis_url = \"{}\"", redis.url);
    let config = base_config(&keys, &store) + &rules();
    let mut f = Fixture {
        broker: BrokerProcess::start(&keys, &config),
        http: client(&keys, None),
        keys,
    };
    let early = "spiffe://example.org/host/revoked-while-down";
    let late = "spiffe://example.org/host/revoked-after-restart";
    let early_serial = serial_of(&f.bootstrap(early).await.0);
    let late_serial = serial_of(&f.bootstrap(late).await.0);
    let bystander = serial_of(&f.bootstrap("spiffe://example.org/host/bystander").await.0);

    // The broker that issued them goes down, and an identity is revoked meanwhile through
    // a broker without a CA (which keeps no SVIDs in mind): no broker up knows its SVID.
    f.broker.kill();
    let without_ca = base_config(&f.keys, &store)
        .replace("[x509]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\n", "");
    assert!(!without_ca.contains("[x509]"));
    let admin = BrokerProcess::start_with(&write(&f.keys, "broker-admin.toml", &without_ca));
    f.revoke_at(&admin, json!({"spiffe_id": early})).await;

    // It starts again: it knows the live SVIDs noted in the store, and its first scan
    // covers the one that the revocation made while it was down, though nothing follows.
    f.broker = BrokerProcess::start_with(&f.keys.path("broker-test.toml"));
    let listed = crl_soon_listing(&f.http, &f.broker, &early_serial).await;
    assert!(listed.contains(&early_serial), "CRL: {listed:?}");
    // A revocation after the restart covers them too.
    f.revoke_at(&admin, json!({"spiffe_id": late})).await;
    let listed = crl_soon_listing(&f.http, &f.broker, &late_serial).await;
    assert!(listed.contains(&late_serial), "CRL: {listed:?}");
    assert!(listed.contains(&early_serial), "CRL: {listed:?}");
    assert!(!listed.contains(&bystander), "CRL: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_served_before_the_recall_lists_the_recalled_svids_while_the_share_fails() {
    let redis = RedisServer::start();
    let keys = KeyDir::generate();
    let store = format!("store = \"redis\"\nredis_url = \"{}\"", redis.url);
    let mut f = Fixture {
        broker: BrokerProcess::start(&keys, &(base_config(&keys, &store) + &rules())),
        http: client(&keys, None),
        keys,
    };
    let id = "spiffe://example.org/host/recalled-late";
    let serial = serial_of(&f.bootstrap(id).await.0);
    f.broker.kill();
    let without_ca = base_config(&f.keys, &store)
        .replace("[x509]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\n", "");
    let admin = BrokerProcess::start_with(&write(&f.keys, "broker-admin.toml", &without_ca));
    f.revoke_at(&admin, json!({"spiffe_id": id})).await;

    // Both keys hold strings: the notes cannot be read back, nor a serial shared (or the
    // shared ones read: `fail_open` serves the CRL without them).
    let mut raw = raw_redis(&redis).await;
    let (notes_key, shared_key) = ("credbroker:crl:svids", "credbroker:crl:serials");
    let notes: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(notes_key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    for key in [notes_key, shared_key] {
        make_a_string(&mut raw, key).await;
    }
    let fail_open = base_config(&f.keys, &format!("{store}\nfail_open = true")) + &rules();
    f.broker = BrokerProcess::start_with(&write(&f.keys, "broker-restarted.toml", &fail_open));
    let listed = crl_serials(&f.http, &f.broker).await;
    assert!(
        !listed.contains(&serial),
        "CRL before the recall: {listed:?}"
    );

    // The notes come back; the recall (or its retry) reads them while the share still
    // fails, and the CRL already served must not hide them until its `nextUpdate`.
    // In one transaction: a recall between the two would find no notes, and not read again.
    let _: () = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(notes_key)
        .cmd("ZADD")
        .arg(notes_key)
        .arg(notes[0].1)
        .arg(&notes[0].0)
        .query_async(&mut raw)
        .await
        .unwrap();
    // The recall is retried after 1 s, then 2 s: room for both.
    let mut listed = Vec::new();
    for _ in 0..3 {
        listed = crl_soon_listing(&f.http, &f.broker, &serial).await;
        if listed.contains(&serial) {
            break;
        }
    }
    assert!(listed.contains(&serial), "CRL after the recall: {listed:?}");
}

/// A connection of the test's own to the brokers' Redis.
async fn raw_redis(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Replaces `key` with a string, on which every sorted-set command fails.
async fn make_a_string(raw: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("not a set")
        .query_async(raw)
        .await
        .unwrap();
}

fn write(keys: &KeyDir, name: &str, config: &str) -> PathBuf {
    let path = keys.path(name);
    std::fs::write(&path, config).unwrap();
    path
}

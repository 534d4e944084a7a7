use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::*;
use crate::config::Config;
use crate::issue::{SigningKeys, new_credential_id};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let name = format!(
            "credbroker-keygen-{}-{}",
            std::process::id(),
            new_credential_id()
        );
        TempDir(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn one_cert(path: &Path) -> CertificateDer<'static> {
    let mut all = certs(path);
    assert_eq!(all.len(), 1, "{}", path.display());
    all.remove(0)
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Verifies `leaf` up to `root` with webpki, for the given EKU.
fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    root: &CertificateDer<'_>,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(root)?.to_owned();
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        intermediates,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

const ALL_FILES: &[&str] = &[
    JWT_KEY,
    CA_CERT,
    CA_KEY,
    TLS_CERT,
    TLS_KEY,
    ATTESTATION_CA_CERT,
    ATTESTATION_CA_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
    ADMIN_TOKEN,
    BROKER_TOML,
];

#[test]
fn generates_a_complete_working_set() {
    let dir = TempDir::new();
    let out = dir.0.join("nested/keys"); // created when missing
    let opts = KeygenOptions {
        trust_domain: "prod.acme.test".into(),
        sans: vec![
            "broker.acme.test".into(),
            "10.1.2.3".into(),
            "localhost".into(),
        ],
        ..KeygenOptions::new(&out)
    };
    let written = generate(&opts).unwrap();
    let expected: BTreeSet<String> = ALL_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(listing(&out), expected);
    assert_eq!(written.len(), ALL_FILES.len());

    for name in ALL_FILES {
        let want = if name.ends_with(".key") || *name == ADMIN_TOKEN {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode(&out.join(name)), want, "{name}");
    }

    // The config parses, with the trust domain applied and every file resolved.
    let config = Config::load(&out.join(BROKER_TOML)).unwrap();
    assert_eq!(config.trust_domain.as_str(), "prod.acme.test");
    assert_eq!(config.issuer, "https://localhost:8443");
    assert_eq!(config.jwt.signing_keys, vec![out.join(JWT_KEY)]);
    assert_eq!(config.x509.ca_cert, out.join(CA_CERT));
    assert_eq!(config.x509.bundle, Some(out.join(CA_CERT)));
    assert_eq!(config.server.tls_cert, Some(out.join(TLS_CERT)));
    assert_eq!(
        config.attestor("legacy-pki").unwrap().ca_bundle,
        Some(out.join(ATTESTATION_CA_CERT))
    );
    assert!(config.attestor("bootstrap").is_some());
    let rules: Vec<_> = config.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rules, ["legacy-hosts", "join-token-hosts"]);
    assert_eq!(
        config.rules[0].spiffe_id,
        "spiffe://prod.acme.test/host/{/subject/cn}"
    );
    assert_eq!(config.rules[1].spiffe_id, "{/spiffe_id}");
    assert_eq!(
        config.revocation.redis_url.as_deref(),
        Some("redis://127.0.0.1:6379/0")
    );

    // The admin token is ≥ 256 bits, and the config holds its SHA-256.
    let token = std::fs::read_to_string(out.join(ADMIN_TOKEN)).unwrap();
    let token = token.trim_end();
    assert!(URL_SAFE_NO_PAD.decode(token).unwrap().len() >= 32);
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ));
    assert_eq!(config.admin.token_sha256.as_deref(), Some(digest.as_str()));

    // The JWT key loads as an ES256 signing key.
    let keys = SigningKeys::load(&config.jwt.signing_keys).unwrap();
    assert_eq!(keys.active().alg(), "ES256");

    // Root CA: CA:true critical, keyCertSign + cRLSign, the trust domain's SPIFFE ID.
    let root = one_cert(&out.join(CA_CERT));
    let (_, ca) = X509Certificate::from_der(&root).unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = ca.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(ca.name_constraints().unwrap().is_none());
    let san = ca.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://prod.acme.test")]
    );
    let cn = ca.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "credbroker root CA (prod.acme.test)");
    let days = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86400;
    assert!((365..=366).contains(&days), "{days}");

    // broker-tls chains to the root, for serverAuth, with every requested name.
    let tls = one_cert(&out.join(TLS_CERT));
    verify_chain(&tls, &[], &root, webpki::KeyUsage::server_auth()).unwrap();
    let ee = webpki::EndEntityCert::try_from(&tls).unwrap();
    for name in [
        "localhost",
        "broker.acme.test",
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    ] {
        let server_name = ServerName::try_from(name).unwrap();
        ee.verify_is_valid_for_subject_name(&server_name)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let (_, tls_cert) = X509Certificate::from_der(&tls).unwrap();
    let san = tls_cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 5, "localhost deduplicated");
    let bc = tls_cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    assert!(tls_cert.serial.bits() >= 64);
    assert_ne!(tls_cert.serial, ca.serial);

    // client.pem chains to the attestation CA (not the broker root), for clientAuth.
    let att_root = one_cert(&out.join(ATTESTATION_CA_CERT));
    let client = one_cert(&out.join(CLIENT_CERT));
    verify_chain(&client, &[], &att_root, webpki::KeyUsage::client_auth()).unwrap();
    let (_, client_cert) = X509Certificate::from_der(&client).unwrap();
    let subject = client_cert.subject();
    assert_eq!(
        subject.iter_common_name().next().unwrap().as_str().unwrap(),
        "example-host"
    );
    assert_eq!(
        subject
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "acme-hosts"
    );
    assert!(
        verify_chain(&client, &[], &root, webpki::KeyUsage::client_auth()).is_err(),
        "the attestation PKI is separate from the broker's"
    );
}

#[test]
fn intermediate_ca_signs_svids_and_the_root_is_the_bundle() {
    let dir = TempDir::new();
    let opts = KeygenOptions {
        intermediate: true,
        ..KeygenOptions::new(&dir.0)
    };
    generate(&opts).unwrap();
    assert!(listing(&dir.0).contains(INTERMEDIATE_KEY));
    assert_eq!(mode(&dir.0.join(INTERMEDIATE_KEY)), 0o600);

    let config = Config::load(&dir.0.join(BROKER_TOML)).unwrap();
    assert_eq!(config.trust_domain.as_str(), "example.org");
    assert_eq!(config.x509.ca_cert, dir.0.join(INTERMEDIATE_CERT));
    assert_eq!(config.x509.ca_key, dir.0.join(INTERMEDIATE_KEY));
    assert_eq!(config.x509.bundle, Some(dir.0.join(CA_CERT)));

    // ca_cert = intermediate followed by the root.
    let chain = certs(&dir.0.join(INTERMEDIATE_CERT));
    let root = one_cert(&dir.0.join(CA_CERT));
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], root);
    let (_, root_cert) = X509Certificate::from_der(&root).unwrap();
    let (_, inter) = X509Certificate::from_der(&chain[0]).unwrap();
    inter
        .verify_signature(Some(root_cert.public_key()))
        .unwrap();
    assert_eq!(inter.issuer(), root_cert.subject());
    let bc = inter.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint == Some(0));

    // A leaf signed by the intermediate (as an SVID would be) chains to the root bundle.
    let key_pem = std::fs::read_to_string(dir.0.join(INTERMEDIATE_KEY)).unwrap();
    let inter_key = KeyPair::from_pem(&key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(&chain[0], inter_key).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from("spiffe://example.org/x").unwrap(),
    )];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.not_before = OffsetDateTime::now_utc() - Duration::minutes(1);
    leaf.not_after = OffsetDateTime::now_utc() + Duration::minutes(10);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    verify_chain(
        leaf.der(),
        &chain[..1],
        &root,
        webpki::KeyUsage::client_auth(),
    )
    .unwrap();
}

#[test]
fn refuses_to_overwrite_and_writes_nothing() {
    let dir = TempDir::new();
    let opts = KeygenOptions::new(&dir.0);
    generate(&opts).unwrap();
    let before = std::fs::read(dir.0.join(CA_KEY)).unwrap();
    let err = generate(&opts).unwrap_err();
    assert!(matches!(err, KeyError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(dir.0.join(CA_KEY)).unwrap(), before);

    // One existing file (the last one written) stops the whole run before any write.
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join(BROKER_TOML), "# mine\n").unwrap();
    let err = generate(&KeygenOptions::new(&dir.0)).unwrap_err();
    assert!(err.to_string().contains(BROKER_TOML), "{err}");
    assert_eq!(listing(&dir.0), BTreeSet::from([BROKER_TOML.to_string()]));
    assert_eq!(
        std::fs::read_to_string(dir.0.join(BROKER_TOML)).unwrap(),
        "# mine\n"
    );
}

#[test]
fn bad_options_are_refused_before_anything_is_written() {
    let dir = TempDir::new();
    for (td, sans) in [
        ("Not A Domain", vec![]),
        ("example.org", vec!["bad name".to_string()]),
        ("example.org", vec!["".to_string()]),
        ("example.org", vec!["exämple.org".to_string()]),
    ] {
        let opts = KeygenOptions {
            trust_domain: td.into(),
            sans,
            ..KeygenOptions::new(&dir.0)
        };
        let err = generate(&opts).unwrap_err();
        assert!(matches!(err, KeyError::Options(_)), "{err}");
    }
    assert!(!dir.0.exists());
}

#[test]
fn jwt_key_pem_is_pkcs8_p256() {
    let pem = generate_jwt_key_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let keys = SigningKeys::from_pems(&[pem]).unwrap();
    assert_eq!(keys.active().alg(), "ES256");
}

/// The committed `keys.example/` is usable as shown: the config parses and the keys load.
#[test]
fn keys_example_is_consistent() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys.example");
    let config = Config::load(&dir.join(BROKER_TOML)).unwrap();
    let keys = SigningKeys::load(&config.jwt.signing_keys).unwrap();
    assert_eq!(keys.active().alg(), "ES256");
    for path in [
        config.server.tls_cert.clone().unwrap(),
        config.x509.ca_cert.clone(),
        config
            .attestor("legacy-pki")
            .unwrap()
            .ca_bundle
            .clone()
            .unwrap(),
    ] {
        assert!(!certs(&path).is_empty(), "{}", path.display());
    }
    let jwks_file = config.attestor("k8s").unwrap().jwks_file.clone().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(jwks_file).unwrap()).unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    let token = std::fs::read_to_string(dir.join(ADMIN_TOKEN)).unwrap();
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.trim_end().as_bytes(),
    ));
    assert_eq!(config.admin.token_sha256.as_deref(), Some(digest.as_str()));
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("EXAMPLE"));
}

/// Regenerates the example key material in `keys.example/` (never `broker.toml`, which
/// is written by hand after Appendix A). Run with
/// `cargo test --lib regenerate_keys_example -- --ignored`.
#[test]
#[ignore = "rewrites the committed keys.example/ files"]
fn regenerate_keys_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys.example");
    let dir = TempDir::new();
    let opts = KeygenOptions {
        sans: vec!["broker.example.org".into()],
        ..KeygenOptions::new(&dir.0)
    };
    for path in generate(&opts).unwrap() {
        let name = path.file_name().unwrap();
        if name == BROKER_TOML {
            continue;
        }
        let target = example.join(name);
        std::fs::copy(&path, &target).unwrap();
        std::fs::set_permissions(&target, std::fs::metadata(&path).unwrap().permissions()).unwrap();
    }
    // A stand-in for a Kubernetes API server's service-account JWKS (public key only).
    let sa_key = josekit::jwk::alg::rsa::RsaKeyPair::generate(2048).unwrap();
    let sa_pem = String::from_utf8(josekit::jwk::KeyPair::to_pem_private_key(&sa_key)).unwrap();
    let jwks = SigningKeys::from_pems(&[sa_pem]).unwrap().jwks();
    let text = serde_json::to_string_pretty(&jwks).unwrap() + "\n";
    std::fs::write(example.join("k8s-jwks.json"), text).unwrap();

    // Point the example config at the new admin token.
    let token = std::fs::read_to_string(example.join(ADMIN_TOKEN)).unwrap();
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.trim_end().as_bytes(),
    ));
    let toml_path = example.join(BROKER_TOML);
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let start = toml.find("token_sha256 = \"").unwrap() + "token_sha256 = \"".len();
    let toml = format!("{}{digest}{}", &toml[..start], &toml[start + 64..]);
    std::fs::write(&toml_path, toml).unwrap();
}

//! `credbroker keys generate`: a complete, working key set and `broker.toml` (SPEC §5.3, §10).
//!
//! Everything is generated in memory first; then, if none of the output files exists,
//! each is created with `create_new` (keys mode 0600, certificates 0644). A failure while
//! writing removes the files this run created, so a folder is never left half-populated.
//! Key generation and file I/O block: async callers use `spawn_blocking`.
//!
//! CA layout: `ca.pem`/`ca.key` is the root, which also signs the broker's TLS certificate
//! (so one `ca.pem` lets clients trust both the HTTPS endpoint and the SVIDs). With
//! `intermediate`, `intermediate-ca.pem` holds the intermediate followed by the root and
//! is the `[x509] ca_cert` that signs SVIDs, and `bundle` stays `ca.pem` (the root).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    string::Ia5String,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use super::KeyError;
use crate::identity::TrustDomain;

/// The trust domain used when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";

/// The JWT signing key (PKCS#8 PEM, EC P-256).
pub const JWT_KEY: &str = "jwt-es256.key";
/// The root CA certificate; also the trust bundle and the CA of the broker's TLS cert.
pub const CA_CERT: &str = "ca.pem";
/// The root CA key.
pub const CA_KEY: &str = "ca.key";
/// The intermediate CA followed by the root (with `intermediate`).
pub const INTERMEDIATE_CERT: &str = "intermediate-ca.pem";
/// The intermediate CA key (with `intermediate`).
pub const INTERMEDIATE_KEY: &str = "intermediate-ca.key";
/// The broker's HTTPS certificate, signed by the root.
pub const TLS_CERT: &str = "broker-tls.pem";
/// The broker's HTTPS key.
pub const TLS_KEY: &str = "broker-tls.key";
/// An example CA for the `mtls` attestor, separate from the broker's CA.
pub const ATTESTATION_CA_CERT: &str = "attestation-ca.pem";
/// The example attestation CA key.
pub const ATTESTATION_CA_KEY: &str = "attestation-ca.key";
/// A client certificate from the attestation CA (CN example-host, O acme-hosts).
pub const CLIENT_CERT: &str = "client.pem";
/// The client certificate's key.
pub const CLIENT_KEY: &str = "client.key";
/// The admin token (its SHA-256 is in `broker.toml`).
pub const ADMIN_TOKEN: &str = "admin-token";
/// The broker configuration that uses every file above.
pub const BROKER_TOML: &str = "broker.toml";

/// How long every generated certificate is valid.
const VALIDITY: Duration = Duration::days(365);
/// `notBefore` is set this far in the past to tolerate clock skew.
const BACKDATE: Duration = Duration::minutes(5);

/// Options of `credbroker keys generate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeygenOptions {
    /// The folder to write into (created when missing).
    pub out: PathBuf,
    /// The trust domain of the CA and the generated `broker.toml`.
    pub trust_domain: String,
    /// Extra names for the broker's TLS certificate (an IP address becomes an IP SAN).
    pub sans: Vec<String>,
    /// Also create an intermediate CA that signs SVIDs.
    pub intermediate: bool,
}

impl KeygenOptions {
    /// Options with the defaults: trust domain `example.org`, no extra SAN, no intermediate.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            sans: Vec::new(),
            intermediate: false,
        }
    }
}

/// Writes a complete key set and `broker.toml` into `opts.out`; returns the files written.
///
/// Refuses (writing nothing) when any of the output files exists already.
pub fn generate(opts: &KeygenOptions) -> Result<Vec<PathBuf>, KeyError> {
    let trust_domain = TrustDomain::parse(&opts.trust_domain)
        .map_err(|e| KeyError::Options(format!("--trust-domain {:?}: {e}", opts.trust_domain)))?;
    let tls_names = tls_names(&opts.sans)?;
    let files = build(&trust_domain, tls_names, opts.intermediate)?;

    std::fs::create_dir_all(&opts.out).map_err(|source| KeyError::Write {
        path: opts.out.clone(),
        source,
    })?;
    for file in &files {
        let path = opts.out.join(file.name);
        match path.symlink_metadata() {
            Ok(_) => return Err(KeyError::Exists { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KeyError::Write { path, source }),
        }
    }

    let mut written = Vec::with_capacity(files.len());
    for file in &files {
        let path = opts.out.join(file.name);
        if let Err(e) = write_new(&path, file.contents.as_bytes(), file.secret) {
            // Leave the folder as it was: remove what this run created.
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(written)
}

/// A new JWT signing key: EC P-256, PKCS#8 PEM.
pub fn generate_jwt_key_pem() -> Result<String, KeyError> {
    Ok(new_p256("JWT signing key")?.serialize_pem())
}

/// One output file, generated and waiting to be written.
struct OutFile {
    name: &'static str,
    contents: String,
    /// Keys and tokens: mode 0600. Otherwise 0644.
    secret: bool,
}

impl OutFile {
    fn secret(name: &'static str, contents: String) -> Self {
        Self {
            name,
            contents,
            secret: true,
        }
    }

    fn public(name: &'static str, contents: String) -> Self {
        Self {
            name,
            contents,
            secret: false,
        }
    }
}

/// Generates every key, certificate and the config, in memory.
fn build(
    trust_domain: &TrustDomain,
    tls_names: Vec<SanType>,
    intermediate: bool,
) -> Result<Vec<OutFile>, KeyError> {
    let td = trust_domain.as_str();
    let rng = SystemRandom::new();
    let not_before = OffsetDateTime::now_utc() - BACKDATE;
    let not_after = not_before + BACKDATE + VALIDITY;
    let validity = (not_before, not_after);
    let mut files = Vec::with_capacity(16);

    files.push(OutFile::secret(JWT_KEY, generate_jwt_key_pem()?));

    // Root CA: signs the TLS certificate, and SVIDs unless there is an intermediate.
    let mut root_params = ca_params(
        &rng,
        validity,
        &format!("credbroker root CA ({td})"),
        Some(&trust_domain.id_string()),
        BasicConstraints::Unconstrained,
    )?;
    root_params.use_authority_key_identifier_extension = false; // self-signed
    let root = CertifiedIssuer::self_signed(root_params, new_p256("root CA key")?)
        .map_err(gen_err("root CA certificate"))?;
    let root_pem = root.pem();
    files.push(OutFile::public(CA_CERT, root_pem.clone()));
    files.push(OutFile::secret(CA_KEY, root.key().serialize_pem()));

    if intermediate {
        let params = ca_params(
            &rng,
            validity,
            &format!("credbroker intermediate CA ({td})"),
            Some(&trust_domain.id_string()),
            BasicConstraints::Constrained(0),
        )?;
        let key = new_p256("intermediate CA key")?;
        let cert = params
            .signed_by(&key, &*root)
            .map_err(gen_err("intermediate CA certificate"))?;
        files.push(OutFile::public(
            INTERMEDIATE_CERT,
            format!("{}{root_pem}", cert.pem()),
        ));
        files.push(OutFile::secret(INTERMEDIATE_KEY, key.serialize_pem()));
    }

    // The broker's HTTPS certificate.
    let mut tls = leaf_params(&rng, validity, "credbroker")?;
    tls.subject_alt_names = tls_names;
    tls.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let tls_key = new_p256("broker TLS key")?;
    let tls_cert = tls
        .signed_by(&tls_key, &*root)
        .map_err(gen_err("broker TLS certificate"))?;
    files.push(OutFile::public(TLS_CERT, tls_cert.pem()));
    files.push(OutFile::secret(TLS_KEY, tls_key.serialize_pem()));

    // An example PKI for the `mtls` attestor: its own CA and one host certificate.
    let mut att_params = ca_params(
        &rng,
        validity,
        "credbroker example attestation CA",
        None,
        BasicConstraints::Constrained(0),
    )?;
    att_params.use_authority_key_identifier_extension = false; // self-signed
    let att_ca = CertifiedIssuer::self_signed(att_params, new_p256("attestation CA key")?)
        .map_err(gen_err("attestation CA certificate"))?;
    files.push(OutFile::public(ATTESTATION_CA_CERT, att_ca.pem()));
    files.push(OutFile::secret(
        ATTESTATION_CA_KEY,
        att_ca.key().serialize_pem(),
    ));

    let mut client = leaf_params(&rng, validity, "example-host")?;
    client
        .distinguished_name
        .push(DnType::OrganizationName, "acme-hosts");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = new_p256("client key")?;
    let client_cert = client
        .signed_by(&client_key, &*att_ca)
        .map_err(gen_err("client certificate"))?;
    files.push(OutFile::public(CLIENT_CERT, client_cert.pem()));
    files.push(OutFile::secret(CLIENT_KEY, client_key.serialize_pem()));

    let mut token = [0u8; 32];
    rng.fill(&mut token).map_err(|_| KeyError::Random)?;
    let token = URL_SAFE_NO_PAD.encode(token);
    let token_sha256 = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ));
    files.push(OutFile::secret(ADMIN_TOKEN, format!("{token}\n")));

    files.push(OutFile::public(
        BROKER_TOML,
        broker_toml(trust_domain, &token_sha256, intermediate),
    ));
    Ok(files)
}

fn gen_err(what: &'static str) -> impl Fn(rcgen::Error) -> KeyError {
    move |e| KeyError::Generate {
        what,
        reason: e.to_string(),
    }
}

fn new_p256(what: &'static str) -> Result<KeyPair, KeyError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err(what))
}

/// A positive serial number with 127 random bits.
fn random_serial(rng: &SystemRandom) -> Result<SerialNumber, KeyError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| KeyError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // never a leading zero byte: the DER length stays fixed
    Ok(SerialNumber::from_slice(&bytes))
}

fn base_params(
    rng: &SystemRandom,
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    common_name: &str,
) -> Result<CertificateParams, KeyError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial(rng)?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A CA: `CA:true` (critical), keyCertSign + cRLSign (critical), no name constraints;
/// signing certificates of a trust domain carry its SPIFFE ID as URI SAN (X509-SVID §2).
fn ca_params(
    rng: &SystemRandom,
    validity: (OffsetDateTime, OffsetDateTime),
    common_name: &str,
    spiffe_id: Option<&str>,
    constraints: BasicConstraints,
) -> Result<CertificateParams, KeyError> {
    let mut params = base_params(rng, validity, common_name)?;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if let Some(id) = spiffe_id {
        let uri = Ia5String::try_from(id).map_err(gen_err("CA SPIFFE ID"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    Ok(params)
}

/// An end-entity certificate: `CA:false`, digitalSignature (critical).
fn leaf_params(
    rng: &SystemRandom,
    validity: (OffsetDateTime, OffsetDateTime),
    common_name: &str,
) -> Result<CertificateParams, KeyError> {
    let mut params = base_params(rng, validity, common_name)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// `localhost`, `127.0.0.1`, `::1` and each `--san` (IP addresses as IP SANs), deduplicated.
fn tls_names(extra: &[String]) -> Result<Vec<SanType>, KeyError> {
    let mut names: Vec<SanType> = Vec::with_capacity(3 + extra.len());
    let defaults = ["localhost", "127.0.0.1", "::1"];
    for name in defaults
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let name = name.trim();
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if !is_dns_name(name) {
                    return Err(KeyError::Options(format!(
                        "--san {name:?}: neither a DNS name nor an IP address"
                    )));
                }
                let dns = Ia5String::try_from(name.to_ascii_lowercase())
                    .map_err(|e| KeyError::Options(format!("--san {name:?}: {e}")))?;
                SanType::DnsName(dns)
            }
        };
        if !names.contains(&san) {
            names.push(san);
        }
    }
    Ok(names)
}

/// A DNS name as a certificate SAN: ASCII labels of letters, digits and `-`, at most 253
/// bytes, optionally a leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && name.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The generated `broker.toml`: every file above, a Redis store, two attestors and two rules.
fn broker_toml(trust_domain: &TrustDomain, admin_token_sha256: &str, intermediate: bool) -> String {
    let td = trust_domain.as_str();
    let (ca_cert, ca_key) = if intermediate {
        (INTERMEDIATE_CERT, INTERMEDIATE_KEY)
    } else {
        (CA_CERT, CA_KEY)
    };
    format!(
        r#"# Generated by `credbroker keys generate`. Paths are relative to this file's folder.
trust_domain = "{td}"
issuer = "https://localhost:8443"   # the `iss` of every JWT

[server]
listen = "127.0.0.1:8443"
tls_cert = "{TLS_CERT}"
tls_key = "{TLS_KEY}"

[jwt]
signing_keys = ["{JWT_KEY}"]        # first = active; the rest are published only
default_ttl = "5m"
max_ttl = "1h"
leeway = "30s"

[x509]
ca_cert = "{ca_cert}"{ca_comment}
ca_key = "{ca_key}"
bundle = "{CA_CERT}"                # roots handed to workloads
default_ttl = "10m"
max_ttl = "1h"

[revocation]
store = "redis"                     # or "memory"
redis_url = "redis://127.0.0.1:6379/0"
key_prefix = "credbroker:"

[admin]
token_sha256 = "{admin_token_sha256}"   # sha256 of the token in `{ADMIN_TOKEN}`

[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "{ATTESTATION_CA_CERT}"

[[attestor]]
name = "bootstrap"
kind = "join_token"

[[rule]]
name = "legacy-hosts"
attestor = "legacy-pki"
owner = "team-infra"
match = {{ "/subject/o" = "acme-hosts" }}
spiffe_id = "spiffe://{td}/host/{{/subject/cn}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]

[[rule]]
name = "join-token-hosts"
attestor = "bootstrap"
owner = "team-platform"
spiffe_id = "{{/spiffe_id}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]
"#,
        ca_comment = if intermediate {
            "   # intermediate followed by the root"
        } else {
            ""
        },
    )
}

/// Creates `path` (never replacing a file), writes `contents`, sets the mode and syncs.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), KeyError> {
    let io_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    let mode = if secret { 0o600 } else { 0o644 };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io_err(source)
        }
    })?;
    let filled = (|| {
        // The creation mode is filtered by the umask; set it exactly.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = secret;
        file.write_all(contents)?;
        file.sync_all()
    })();
    filled.map_err(|source| {
        // Never leave a half-written file behind.
        let _ = std::fs::remove_file(path);
        io_err(source)
    })
}

#[cfg(test)]
#[path = "keygen_tests.rs"]
mod tests;

//! `credbroker inspect CREDENTIAL|@FILE|-`: decode a credbroker JWT or a PEM certificate
//! and show who it is for, who owns it, where it comes from and when it is valid; with
//! `--broker`, also check it against the broker (signature, time, revocation).
//!
//! Output is for people; the exit status is for scripts: non-zero when any check run fails.

use std::io::Read;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::CliError;
use crate::attest::jwks::{KeySet, Origin};
use crate::revoke::entry::rfc3339;

/// Clock skew tolerated by the time check, as the broker's default `[jwt] leeway`.
const LEEWAY: i64 = 30;
/// Largest input read.
const MAX_INPUT: u64 = 1024 * 1024;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The credential: a JWT or PEM text, `@FILE` to read a file, `-` for stdin.
    // PEM text begins with "-----BEGIN": a value, not a flag.
    #[arg(allow_hyphen_values = true)]
    credential: String,
    /// The broker to verify against.
    #[arg(long, env = "CREDBROKER_URL")]
    broker: Option<String>,
    /// A PEM CA file to trust for the broker's HTTPS (and as the bundle for certificates).
    #[arg(long, env = "CREDBROKER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Admin token: lets `inspect` check a JWT's revocation through introspection.
    #[arg(
        long,
        env = "CREDBROKER_ADMIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    admin_token: Option<String>,
}

/// The result of the checks, printed as they run.
#[derive(Default)]
struct Report {
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => println!("  {name:<11} ok{}", suffix(&detail)),
            Err(why) => {
                println!("  {name:<11} FAILED: {why}");
                self.failed.push(name.to_string());
            }
        }
    }
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

pub async fn run(args: InspectArgs) -> Result<(), CliError> {
    let input = read_input(&args.credential)?;
    let now = crate::store::wall_ms() / 1000;
    let mut report = Report::default();
    if input.contains("-----BEGIN") {
        inspect_certificate(&args, &input, now, &mut report).await?;
    } else {
        inspect_jwt(&args, &input, now, &mut report).await?;
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "check(s) failed: {}",
            report.failed.join(", ")
        )))
    }
}

fn read_input(arg: &str) -> Result<String, CliError> {
    let mut text = String::new();
    if arg == "-" {
        std::io::stdin()
            .take(MAX_INPUT)
            .read_to_string(&mut text)
            .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INPUT).read_to_string(&mut text))
            .map_err(|e| CliError::new(format!("cannot read {path}: {e}")))?;
    } else {
        text = arg.to_string();
    }
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(CliError::new("no credential given"));
    }
    Ok(text)
}

fn time(unix: i64, now: i64) -> String {
    let delta = unix - now;
    let rel = if delta >= 0 {
        format!("in {}", human(delta))
    } else {
        format!("{} ago", human(-delta))
    };
    format!("{} ({rel})", rfc3339::format(unix))
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn decode_segment(segment: &str) -> Result<Value, CliError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| CliError::new("not a JWT: a segment is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| CliError::new("not a JWT: a segment is not JSON"))
}

fn field(v: &Value, name: &str) -> String {
    match v.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
        None => "-".into(),
    }
}

async fn inspect_jwt(
    args: &InspectArgs,
    token: &str,
    now: i64,
    report: &mut Report,
) -> Result<(), CliError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, _] = parts.as_slice() else {
        return Err(CliError::new(
            "not a JWT (three dot-separated segments) nor a PEM certificate",
        ));
    };
    let header = decode_segment(header_b64)?;
    let claims = decode_segment(payload_b64)?;
    println!(
        "JWT ({}, kid {})",
        field(&header, "alg"),
        field(&header, "kid")
    );
    println!("  identity   {}", field(&claims, "sub"));
    println!("  owner      {}", field(&claims, "owner"));
    println!("  rule       {}", field(&claims, "rule"));
    if let Some(att) = claims.get("att") {
        println!(
            "  attested   {} ({})",
            field(att, "attestor"),
            field(att, "kind")
        );
    }
    println!("  audience   {}", field(&claims, "aud"));
    if claims.get("scope").is_some() {
        println!("  scope      {}", field(&claims, "scope"));
    }
    println!("  id (jti)   {}", field(&claims, "jti"));
    println!("  issuer     {}", field(&claims, "iss"));
    let num = |name: &str| claims.get(name).and_then(Value::as_i64);
    for (label, name) in [("issued", "iat"), ("not before", "nbf"), ("expires", "exp")] {
        if let Some(t) = num(name) {
            println!("  {label:<10} {}", time(t, now));
        }
    }
    let mut act = claims.get("act");
    let mut actors = Vec::new();
    while let Some(a) = act {
        actors.push(field(a, "sub"));
        act = a.get("act");
        if actors.len() > 8 {
            break;
        }
    }
    if !actors.is_empty() {
        println!("  acted by   {}", actors.join(" <- "));
    }
    println!("  source     {}", field(&claims, "src"));
    println!("  lineage    {}", field(&claims, "chain"));
    if let Some(cnf) = claims.get("cnf") {
        println!(
            "  bound to   certificate x5t#S256 {}",
            field(cnf, "x5t#S256")
        );
    }

    let Some(broker) = args.broker.as_deref() else {
        return Ok(());
    };
    println!("checks against {broker}:");
    let http = http_client(args.ca_file.as_ref())?;
    let base = broker.trim_end_matches('/');
    // Signature with the broker's published keys.
    let signature = async {
        let jwks = get(&http, &format!("{base}/.well-known/jwks.json")).await?;
        let keys = KeySet::parse(&jwks, &["ES256", "RS256", "EdDSA"], Origin::Fetched)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        let verifier = keys
            .select(kid, alg)
            .map_err(|_| "no key published by the broker matches its kid/alg".to_string())?;
        let sig = token.rsplit('.').next().unwrap_or("");
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| "the signature is not base64url".to_string())?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        verifier
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| "the signature does not verify".to_string())?;
        Ok::<_, String>(format!("kid {}", kid.unwrap_or("-")))
    }
    .await;
    report.check("signature", signature);
    let issuer = async {
        let meta = get(
            &http,
            &format!("{base}/.well-known/oauth-authorization-server"),
        )
        .await?;
        let meta: Value = serde_json::from_slice(&meta).map_err(|_| "bad metadata".to_string())?;
        let expected = field(&meta, "issuer");
        if field(&claims, "iss") == expected {
            Ok(String::new())
        } else {
            Err(format!("the broker's issuer is {expected}"))
        }
    }
    .await;
    report.check("issuer", issuer);
    let times = match (num("exp"), num("nbf")) {
        (Some(exp), _) if now > exp + LEEWAY => Err(format!("expired {}", time(exp, now))),
        (_, Some(nbf)) if nbf > now + LEEWAY => Err(format!("not valid before {}", time(nbf, now))),
        (None, _) => Err("no exp".into()),
        _ => Ok(String::new()),
    };
    report.check("time", times);
    match args.admin_token.as_deref() {
        Some(admin) => {
            let revocation = async {
                let resp = http
                    .post(format!("{base}/v1/introspect"))
                    .bearer_auth(admin)
                    .form(&[("token", token)])
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("introspection answered HTTP {}", resp.status()));
                }
                let body: Value = resp.json().await.map_err(|_| "bad introspection answer")?;
                if body.get("active") == Some(&Value::Bool(true)) {
                    Ok("active per introspection".to_string())
                } else {
                    Err("inactive: revoked (or invalid) per introspection".to_string())
                }
            }
            .await;
            report.check("revocation", revocation);
        }
        None => println!("  revocation not checked (give --admin-token to use introspection)"),
    }
    Ok(())
}

async fn inspect_certificate(
    args: &InspectArgs,
    pem: &str,
    now: i64,
    report: &mut Report,
) -> Result<(), CliError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::new(format!("not a PEM certificate: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| CliError::new("no certificate in the PEM input"))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|_| CliError::new("the certificate cannot be parsed"))?;
    println!("X.509 certificate");
    println!("  subject    {}", cert.subject());
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(u) => {
                        uris.push(u.to_string());
                        println!("  SAN URI    {u}");
                    }
                    GeneralName::DNSName(d) => println!("  SAN DNS    {d}"),
                    GeneralName::IPAddress(ip) => println!("  SAN IP     {}", hex::encode(ip)),
                    other => println!("  SAN        {other:?}"),
                }
            }
        }
    }
    if let [uri] = uris.as_slice()
        && uri.starts_with("spiffe://")
    {
        println!("  identity   {uri}");
    }
    println!(
        "  serial     {}",
        crate::verify::serial_hex(cert.raw_serial())
    );
    println!("  issuer     {}", cert.issuer());
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    println!("  not before {}", time(not_before, now));
    println!("  expires    {}", time(not_after, now));
    if let Some(lineage) = crate::issue::x509::Lineage::of(&cert) {
        println!("  rule       {}", lineage.rule);
        println!("  source     {}", lineage.src);
        if !lineage.chain.is_empty() {
            println!("  lineage    {}", lineage.chain.join(" → "));
        }
    }
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == crate::issue::x509::LINEAGE_OID_STR {
            continue;
        }
        let known = !matches!(
            ext.parsed_extension(),
            ParsedExtension::UnsupportedExtension { .. }
        );
        if known {
            continue;
        }
        // Anything else we do not know is shown raw.
        let value = ext.value;
        let shown = String::from_utf8(value.to_vec())
            .ok()
            .filter(|s| s.chars().all(|c| !c.is_control()))
            .unwrap_or_else(|| hex::encode(&value[..value.len().min(256)]));
        println!(
            "  extension  {}{} {}",
            ext.oid,
            if ext.critical { " (critical)" } else { "" },
            shown
        );
    }

    let Some(broker) = args.broker.as_deref() else {
        return Ok(());
    };
    println!("checks against {broker}:");
    let http = http_client(args.ca_file.as_ref())?;
    let base = broker.trim_end_matches('/');
    // The bundle: the broker's, else the CA file.
    let bundle = match get(&http, &format!("{base}/v1/bundle.pem")).await {
        Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
        Err(_) => match &args.ca_file {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => String::new(),
        },
    };
    let anchors_der: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle.as_bytes())
            .filter_map(Result::ok)
            .collect();
    let chain_check = (|| {
        let anchors: Vec<_> = anchors_der
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        if anchors.is_empty() {
            return Err("no trust bundle (the broker serves none; give --ca-file)".to_string());
        }
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
        let algs = crate::tls::provider().signature_verification_algorithms.all;
        ee.verify_for_usage(
            algs,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| String::new())
        .map_err(|e| e.to_string())
    })();
    report.check("chain", chain_check);
    let times = if now > not_after {
        Err(format!("expired {}", time(not_after, now)))
    } else if not_before > now {
        Err(format!("not valid before {}", time(not_before, now)))
    } else {
        Ok(String::new())
    };
    report.check("time", times);
    match get(&http, &format!("{base}/v1/crl")).await {
        Ok(der) => {
            let serial = cert.raw_serial().to_vec();
            let revoked = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                .map_err(|_| "the broker's CRL cannot be parsed".to_string())
                .map(|(_, crl)| {
                    crl.iter_revoked_certificates()
                        .any(|r| r.raw_serial() == serial.as_slice())
                });
            report.check(
                "revocation",
                match revoked {
                    Ok(false) => Ok("not in the broker's CRL".into()),
                    Ok(true) => Err("revoked: listed in the broker's CRL".into()),
                    Err(e) => Err(e),
                },
            );
        }
        Err(_) => println!("  revocation not checked (the broker serves no CRL)"),
    }
    Ok(())
}

fn http_client(ca_file: Option<&PathBuf>) -> Result<reqwest::Client, CliError> {
    crate::tls::install_default_provider();
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?
        {
            let cert = cert.map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(10))
        .build()?)
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot reach the broker: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.without_url().to_string())
}

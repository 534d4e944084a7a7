//! X.509-SVID issuance throughput and latency beside the raw ceiling, and the cost of an
//! mTLS handshake (SPEC §11).
//!
//! `cargo run --release --example bench_svid [-- SECONDS [memory|redis]]`
//!
//! 1. The ceiling: parse + verify one P-256 CSR and build + sign one X.509-SVID with the
//!    broker's own code (`VerifiedCsr::parse` + `X509Ca::mint`), on one core and on all.
//! 2. `POST /v1/svid` over HTTPS keep-alive connections on loopback (a minimal HTTP/1.1
//!    client over rustls, as wrk would), attested by the example client certificate
//!    (`mtls` attestor, path-validated once per connection), memory store (or a
//!    `redis-server` of its own with `redis`, where each SVID's record and its note for
//!    later brokers' CRLs are written), at concurrency 1, 16 and 64 with the client on the
//!    broker's workers, then at 16 and 64 with the client on a thread of its own (see
//!    `bench_support::Client`).
//! 3. New mTLS connections per second (full handshake with a client certificate, then one
//!    `GET /healthz`), at concurrency 16.

#[path = "bench_support/mod.rs"]
mod bench_support;

// The allocator the `credbroker` binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bench_support::{
    BenchBroker, BenchRedis, Client, all_cores, drive, drive_raw, http_request, one_core,
};
use credbroker::issue::x509::{Lineage, SvidRequest, VerifiedCsr, X509Ca};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let level_time = Duration::from_secs(seconds);
    let dir = tempfile::tempdir().expect("tempdir");
    credbroker::issue::keygen::generate(&credbroker::issue::KeygenOptions::new(dir.path()))
        .expect("keys");
    credbroker::tls::install_default_provider();

    // CSRs from P-256 keys (a small pool; the broker does not care that keys repeat).
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..32)
            .map(|_| {
                let key = KeyPair::generate().expect("key");
                let mut params = CertificateParams::default();
                params.distinguished_name = DistinguishedName::new();
                params.serialize_request(&key).unwrap().pem().unwrap()
            })
            .collect(),
    );

    // ---- 1. the ceiling
    let x509 = credbroker::config::X509Config {
        ca_cert: dir.path().join("ca.pem"),
        ca_key: dir.path().join("ca.key"),
        bundle: None,
        default_ttl: credbroker::config::Dur(Duration::from_secs(600)),
        max_ttl: credbroker::config::Dur(Duration::from_secs(3600)),
        crl_next_update: credbroker::config::Dur(Duration::from_secs(300)),
    };
    let ca = Arc::new(X509Ca::load(&x509).expect("ca"));
    let lineage = Arc::new(Lineage {
        src: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        rule: "bench".into(),
        chain: Vec::new(),
    });
    let op = {
        let (ca, csrs, lineage) = (ca.clone(), csrs.clone(), lineage.clone());
        move || {
            let csr = VerifiedCsr::parse(csrs[0].as_bytes()).expect("csr");
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let req = SvidRequest {
                spiffe_id: "spiffe://example.org/host/bench",
                ttl: Duration::from_secs(600),
                now,
                lineage: &lineage,
            };
            let _ = ca.mint(&csr, &req).expect("mint");
        }
    };
    let ceiling_time = Duration::from_secs(2);
    let one = one_core(ceiling_time, op.clone());
    let all = all_cores(ceiling_time, op);
    println!("== ceiling: verify one P-256 CSR + build and sign one X.509-SVID (P-256 CA)");
    println!("   {one:>8.0}/s one core   {all:>8.0}/s all cores");

    // ---- 2. the real endpoint
    let redis = match std::env::args().nth(2).as_deref() {
        None | Some("memory") => None,
        Some("redis") => Some(BenchRedis::start().expect("redis-server on PATH")),
        Some(other) => panic!("store {other:?}: memory or redis"),
    };
    let store = match &redis {
        Some(r) => format!("store = \"redis\"\nredis_url = \"{}\"", r.url),
        None => "store = \"memory\"".to_string(),
    };
    let config_path = dir.path().join("bench-svid.toml");
    std::fs::write(&config_path, CONFIG.replace("store = \"memory\"", &store)).unwrap();
    let broker = BenchBroker::start(&config_path);
    let https = broker.https.expect("https");
    let tls = client_tls(dir.path());
    println!(
        "\n== POST /v1/svid, P-256 CSR, mTLS attestation (mtls attestor), {} store, HTTPS keep-alive on loopback",
        if redis.is_some() { "redis" } else { "memory" }
    );
    println!(
        "   {:>7} {:>5} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "client", "conns", "SVIDs/s", "p50 ms", "p99 ms", "ceiling%", "errors"
    );
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        csrs.iter()
            .map(|csr| {
                let body = serde_json::json!({ "csr": csr }).to_string();
                http_request("POST", "/v1/svid", "application/json", body.as_bytes())
            })
            .collect(),
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()));
    let workers = Client::OnBrokerWorkers(broker.runtime.handle());
    let levels = [(workers, 1usize), (workers, 16), (workers, 64)];
    let wrk_like = [(Client::OwnThread, 16), (Client::OwnThread, 64)];
    for (client, conns) in levels.into_iter().chain(wrk_like) {
        let connector = connector.clone();
        let result = drive_raw(
            client,
            conns,
            level_time,
            2_000_000,
            move || {
                let connector = connector.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(https).await?;
                    tcp.set_nodelay(true)?;
                    let name = rustls::pki_types::ServerName::try_from("localhost")
                        .map_err(std::io::Error::other)?;
                    connector.connect(name, tcp).await
                }
            },
            requests.clone(),
        );
        println!(
            "   {:>7} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>8.0}% {:>8}",
            client.label(),
            conns,
            result.rate(),
            result.percentile_ms(50.0),
            result.percentile_ms(99.0),
            100.0 * result.rate() / all,
            result.failed
        );
    }

    // ---- 3. mTLS handshakes
    let health = format!("https://localhost:{}/healthz", https.port());
    let result = drive(
        16,
        level_time,
        2_000_000,
        || https_client(&tls, false),
        move |client, _| {
            let url = health.clone();
            async move {
                match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        },
    );
    println!("\n== new mTLS connections (full handshake with client certificate + GET /healthz)");
    println!(
        "   16 conns: {:>8.0} handshakes/s   p50 {:.2} ms   p99 {:.2} ms   errors {}",
        result.rate(),
        result.percentile_ms(50.0),
        result.percentile_ms(99.0),
        result.failed
    );
    drop(broker);
}

const CONFIG: &str = r#"trust_domain = "example.org"
issuer = "https://broker.bench"
[server]
listen = "127.0.0.1:0"
tls_cert = "broker-tls.pem"
tls_key = "broker-tls.key"
listen_http = "127.0.0.1:0"
[jwt]
signing_keys = ["jwt-es256.key"]
[x509]
ca_cert = "ca.pem"
ca_key = "ca.key"
[revocation]
store = "memory"
[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "attestation-ca.pem"
[[rule]]
name = "hosts"
attestor = "legacy-pki"
owner = "team-bench"
match = { "/subject/o" = "acme-hosts" }
spiffe_id = "spiffe://example.org/host/{/subject/cn}"
credentials = ["x509"]
"#;

/// A rustls client config trusting the broker's CA and presenting the example client cert.
fn client_tls(dir: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join("client.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
    rustls::ClientConfig::builder_with_provider(credbroker::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

/// An HTTPS client presenting the workload's certificate; without keep-alive every request
/// opens a new connection (a full TLS handshake).
fn https_client(tls: &rustls::ClientConfig, keep_alive: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .pool_max_idle_per_host(usize::from(keep_alive))
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

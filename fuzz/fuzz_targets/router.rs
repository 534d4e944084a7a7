//! Drives the whole HTTP router in-process with arbitrary requests: the first three bytes pick
//! the method and path, the content type and how the caller authenticates (none, the admin
//! token, the body's first line as a bearer, a `DPoP` header, or a client certificate ahead
//! of the body); a GET's or DELETE's first body line is its query; the rest is the body. A
//! panic or a 500 is a finding.
//!
//! The broker is `credbroker dev`'s shape on the memory store, with keys in `fuzz/keys/`. On
//! its first run the target writes seeds — a valid request of every kind, with a demo platform
//! token, CSRs and admin bodies — into `fuzz/corpus/router/`.
//!
//! `cargo +nightly fuzz run router -s none -- -dict=fuzz/router.dict`
//! (`CREDBROKER_FUZZ_DEBUG=1` prints each response, to check what an input reaches.)
#![no_main]
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use credbroker::broker::Broker;
use credbroker::clock::SystemClock;
use credbroker::config::Config;
use credbroker::http::{AppState, ConnInfo, router};
use credbroker::issue::keygen::{KeygenOptions, generate, generate_jwt_key_pem};
use credbroker::issue::keys::SigningKeys;
use credbroker::revoke::RevocationMirror;
use credbroker::store::Store;
use credbroker::tls::PeerCertificates;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tower::ServiceExt;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/keys");
const ADMIN: &str = "fuzz-admin-token";

struct Env {
    rt: tokio::runtime::Runtime,
    app: Router,
}

fn config() -> String {
    let sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        ADMIN.as_bytes(),
    ));
    format!(
        r#"trust_domain = "example.org"
issuer = "http://127.0.0.1:8080"
dev = true
[server]
listen_http = "127.0.0.1:0"
[jwt]
signing_keys = ["jwt-es256.key"]
default_ttl = "5m"
max_ttl = "1h"
[x509]
ca_cert = "ca.pem"
ca_key = "ca.key"
default_ttl = "10m"
max_ttl = "1h"
[revocation]
store = "memory"
[admin]
token_sha256 = "{sha}"
[[attestor]]
name = "demo-ci"
kind = "jwt"
issuer = "https://ci.demo"
jwks_file = "demo-jwks.json"
audiences = ["credbroker"]
algorithms = ["ES256"]
[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "attestation-ca.pem"
[[attestor]]
name = "bootstrap"
kind = "join_token"
[[rule]]
name = "demo-ci-main"
attestor = "demo-ci"
owner = "team-dev"
match = {{ "/repository" = "acme/*", "/ref" = "refs/heads/main" }}
spiffe_id = "spiffe://example.org/ci/{{/repository}}/{{/workflow}}"
credentials = ["jwt", "x509"]
audiences = ["demo-api", "inventory"]
scopes = ["read", "deploy:staging"]
max_ttl = "15m"
[[rule]]
name = "legacy-hosts"
attestor = "legacy-pki"
owner = "team-infra"
match = {{ "/subject/o" = "acme-hosts" }}
spiffe_id = "spiffe://example.org/host/{{/subject/cn}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]
[[rule]]
name = "join-token-hosts"
attestor = "bootstrap"
owner = "team-platform"
spiffe_id = "{{/spiffe_id}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]
"#
    )
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = Path::new(DIR);
        if !dir.join("jwt-es256.key").exists() {
            std::fs::create_dir_all(dir).unwrap();
            generate(&KeygenOptions::new(dir)).unwrap();
            std::fs::write(dir.join("demo.key"), generate_jwt_key_pem().unwrap()).unwrap();
        }
        let demo =
            SigningKeys::from_pems(&[std::fs::read_to_string(dir.join("demo.key")).unwrap()])
                .unwrap();
        std::fs::write(dir.join("demo-jwks.json"), demo.jwks().to_string()).unwrap();
        std::fs::write(dir.join("broker.toml"), config()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = rt.block_on(async {
            let config = Arc::new(Config::load(&dir.join("broker.toml")).unwrap());
            let store = Store::connect(&config.revocation).await.unwrap();
            let mirror = Arc::new(RevocationMirror::new());
            credbroker::revoke::initial_load(&store, &mirror)
                .await
                .unwrap();
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(credbroker::revoke::run_mirror_sync(
                store.clone(),
                mirror.clone(),
                stopped,
            ));
            // The sync loop stops when its sender goes: keep it for the whole process.
            std::mem::forget(stop);
            let broker = Broker::new(config, Arc::new(SystemClock), store, mirror).unwrap();
            router(AppState {
                broker: Arc::new(broker),
                metrics: None,
            })
        });
        write_seeds(&demo);
        Env { rt, app }
    })
}

const PATHS: &[(&str, &str)] = &[
    ("POST", "/v1/token"),
    ("POST", "/v1/svid"),
    ("POST", "/v1/introspect"),
    ("POST", "/v1/revoke"),
    ("POST", "/v1/lock"),
    ("DELETE", "/v1/lock"),
    ("POST", "/v1/join-tokens"),
    ("GET", "/v1/identities"),
    ("GET", "/v1/locks"),
    ("GET", "/v1/revocations"),
    ("GET", "/v1/crl"),
    ("GET", "/v1/bundle"),
];
const TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/json",
    "application/pkcs10",
    "application/x-www-form-urlencoded; charset=utf-8",
    "text/plain",
];

fuzz_target!(
    // Before libFuzzer reads the corpus, so that the seeds are in it from the first run.
    init: {
        env();
    },
    |data: &[u8]| one_request(data)
);

fn one_request(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let env = env();
    let (method, path) = PATHS[data[0] as usize % PATHS.len()];
    let ctype = TYPES[data[1] as usize % TYPES.len()];
    let mut body = &data[3..];
    let uri = if method == "GET" || method == "DELETE" {
        // The body's first line is the query.
        let end = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
        let q = String::from_utf8_lossy(&body[..end]).into_owned();
        body = &body[(end + 1).min(body.len())..];
        format!("{path}?{q}")
    } else {
        path.to_string()
    };
    if axum::http::Uri::try_from(uri.as_str()).is_err() {
        return;
    }
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ctype);
    let mut peer_certs = None;
    match data[2] % 5 {
        1 => req = req.header("authorization", format!("Bearer {ADMIN}")),
        2 => {
            // The first line of the body is the bearer.
            let end = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
            if let Ok(v) =
                axum::http::HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &body[..end]].concat())
            {
                req = req.header("authorization", v);
            }
            body = &body[(end + 1).min(body.len())..];
        }
        3 => req = req.header("dpop", "x"),
        4 if body.len() >= 2 => {
            // A client certificate, its DER length in two bytes ahead of it.
            let len = usize::from(u16::from_be_bytes([body[0], body[1]])).min(body.len() - 2);
            let leaf = CertificateDer::from(body[2..2 + len].to_vec());
            peer_certs = Some(PeerCertificates::new(vec![leaf]));
            body = &body[2 + len..];
        }
        _ => {}
    }
    let Ok(mut req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    req.extensions_mut().insert(ConnInfo {
        remote: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        peer_certs,
    });
    let resp = env.rt.block_on(env.app.clone().oneshot(req)).unwrap();
    let status = resp.status().as_u16();
    if std::env::var_os("CREDBROKER_FUZZ_DEBUG").is_some() {
        let body = env
            .rt
            .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
            .unwrap_or_default();
        eprintln!(
            "{method} {path} -> {status} {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    assert!(status != 500, "500 for {method} {path}");
}

/// Seeds for the corpus: valid requests of every kind, for the fuzzer to mutate.
fn write_seeds(demo: &SigningKeys) {
    let corpus = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/router"));
    if corpus.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return;
    }
    std::fs::create_dir_all(corpus).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "https://ci.demo", "aud": "credbroker", "sub": "repo:acme/web:ref:refs/heads/main",
        "repository": "acme/web", "ref": "refs/heads/main", "workflow": "deploy",
        "iat": now, "nbf": now, "exp": now + 86400, "jti": "seed-jti"
    });
    let map = claims.as_object().unwrap().clone();
    let tok = demo.active().sign_jwt(&map).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let client = std::fs::read_to_string(Path::new(DIR).join("client.pem")).unwrap();
    let client = CertificateDer::from_pem_slice(client.as_bytes()).unwrap();
    let with_cert = |route: u8, ctype: u8, body: &[u8]| {
        let len = u16::try_from(client.len()).unwrap().to_be_bytes();
        [&[route, ctype, 4][..], &len, client.as_ref(), body].concat()
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("mtls-token", with_cert(0, 0, b"grant_type=client_credentials&audience=inventory")),
        ("mtls-svid", with_cert(1, 2, csr.der().as_ref())),
        ("token", [&[0u8, 0, 0][..], format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token={tok}&audience=demo-api&scope=read").as_bytes()].concat()),
        ("token-actor", [&[0u8, 0, 0][..], format!("grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token_type=urn:ietf:params:oauth:token-type:jwt&subject_token={tok}&actor_token={tok}&actor_token_type=urn:ietf:params:oauth:token-type:jwt&requested_token_type=urn:ietf:params:oauth:token-type:jwt&audience=inventory&resource=spiffe://example.org/x").as_bytes()].concat()),
        ("token-cc", [&[0u8, 0, 2][..], format!("{tok}\ngrant_type=client_credentials&audience=inventory").as_bytes()].concat()),
        ("svid-der", [&[1u8, 2, 2][..], format!("{tok}\n").as_bytes(), csr.der().as_ref()].concat()),
        ("svid-pem", [&[1u8, 2, 2][..], format!("{tok}\n{}", csr.pem().unwrap()).as_bytes()].concat()),
        ("introspect", [&[2u8, 0, 1][..], format!("token={tok}&token_type_hint=access_token").as_bytes()].concat()),
        ("revoke-json", [&[3u8, 1, 1][..], br#"{"spiffe_id":"spiffe://example.org/ci/acme/web","issued_before":"2030-01-01T00:00:00Z","reason":"seed"}"#.as_slice()].concat()),
        ("revoke-json2", [&[3u8, 1, 1][..], br#"{"credential_id":"abc","reason":"x"}"#.as_slice()].concat()),
        ("revoke-form", [&[3u8, 0, 1][..], format!("token={tok}").as_bytes()].concat()),
        ("lock", [&[4u8, 1, 1][..], br#"{"spiffe_id":"spiffe://example.org/a","reason":"r","ttl":300}"#.as_slice()].concat()),
        ("unlock", [&[5u8, 1, 1][..], b"spiffe_id=spiffe://example.org/a\n".as_slice()].concat()),
        ("join", [&[6u8, 1, 1][..], br#"{"spiffe_id":"spiffe://example.org/host/a","ttl":3600}"#.as_slice()].concat()),
        ("identities", [&[7u8, 0, 1][..], b"owner=team-dev&limit=10\n".as_slice()].concat()),
        ("revocations", [&[9u8, 0, 0][..], b"after=0-0&limit=5\n".as_slice()].concat()),
    ];
    for (name, bytes) in seeds {
        std::fs::write(corpus.join(name), bytes).unwrap();
    }
}

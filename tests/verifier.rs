//! The relying-party library (`credbroker::verify`, SPEC §9) against a real broker binary
//! and a real Redis: local JWT verification, revocation pushed through the feed, resuming
//! after a broker restart, the axum extractor and the rustls verifiers.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::verify::{FeedCredential, VerifiedJwt, Verifier, VerifierConfig, VerifyError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use support::broker::{BrokerProcess, KeyDir, base_config, client, decode_segment, exchange_form};
use support::issuer::{ISSUER, TestIssuer};
use support::redis::RedisServer;

fn rules() -> String {
    format!(
        r#"
[[attestor]]
name = "ci"
kind = "jwt"
issuer = "{ISSUER}"
jwks_file = "ci-jwks.json"
audiences = ["credbroker"]

[[rule]]
name = "workloads"
attestor = "ci"
owner = "team-runtime"
match = {{ "/sa" = "*" }}
spiffe_id = "spiffe://example.org/sa/{{/sa}}"
audiences = ["payments", "ledger"]
"#
    )
}

struct Env {
    keys: KeyDir,
    issuer: TestIssuer,
    redis: RedisServer,
    broker: BrokerProcess,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker on a fixed HTTPS port (so it can be restarted on it) with a Redis store.
fn config_on(keys: &KeyDir, redis: &RedisServer, port: u16) -> String {
    let store = format!("store = \"redis\"\nredis_url = \"{}\"", redis.url);
    base_config(keys, &store).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    ) + &rules()
}

fn start() -> Env {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    let redis = RedisServer::start();
    let config = config_on(&keys, &redis, free_port());
    let broker = BrokerProcess::start(&keys, &config);
    let http = client(&keys, None);
    Env {
        keys,
        issuer,
        redis,
        broker,
        http,
    }
}

impl Env {
    async fn verifier(&self, max_staleness: Duration) -> Verifier {
        Verifier::connect(
            VerifierConfig::new(self.broker.url(""))
                .ca_file(self.keys.path("ca.pem"))
                .audience("payments")
                .feed_credential(FeedCredential::AdminToken(self.keys.admin_token()))
                .max_staleness(max_staleness),
        )
        .await
        .expect("verifier connects")
    }

    async fn token(&self, sa: &str, audience: &str) -> String {
        let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
        claims.insert("sa".into(), json!(sa));
        let platform = self.issuer.sign_rs256(&claims);
        let resp = self
            .http
            .post(self.broker.url("/v1/token"))
            .form(&exchange_form(&platform, &[("audience", audience)]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
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
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }
}

fn jti(token: &str) -> Value {
    decode_segment(token, 1)["jti"].clone()
}

/// Polls `check` every millisecond for up to `limit`; the elapsed time when it held.
async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_locally_within_milliseconds() {
    let mut env = start();
    let verifier = env.verifier(Duration::from_secs(5)).await;
    let token = env.token("web", "payments").await;
    let other = env.token("web", "payments").await;
    let claims = verifier
        .verify_jwt(&token, "payments")
        .expect("valid token");
    assert_eq!(claims.sub, "spiffe://example.org/sa/web");
    assert_eq!(claims.owner, "team-runtime");

    // Refusals that need no broker at all.
    assert_eq!(
        verifier.verify_jwt(&token, "ledger"),
        Err(VerifyError::WrongAudience)
    );
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert_eq!(
        verifier.verify_jwt(&tampered, "payments"),
        Err(VerifyError::BadSignature)
    );
    assert!(matches!(
        verifier.verify_jwt("a.b", "payments"),
        Err(VerifyError::Malformed(_))
    ));
    let forged = TestIssuer::unsigned(&serde_json::from_value(decode_segment(&token, 1)).unwrap());
    assert!(matches!(
        verifier.verify_jwt(&forged, "payments"),
        Err(VerifyError::Algorithm(_))
    ));

    env.revoke_at(&env.broker, json!({"credential_id": jti(&token)}))
        .await;
    let revoked_at = Instant::now();
    let took = wait_until(Duration::from_secs(5), || {
        verifier.verify_jwt(&token, "payments").is_err()
    })
    .await;
    let took = took.expect("the revocation reached the verifier");
    println!(
        "revocation enforced by the library {:.2} ms after the admin call returned (poll included)",
        revoked_at.elapsed().min(took).as_secs_f64() * 1000.0
    );
    assert!(matches!(
        verifier.verify_jwt(&token, "payments"),
        Err(VerifyError::Revoked(_))
    ));

    // No call to the broker on the request path: with the broker gone, verification goes
    // on (until max_staleness) and the revoked token stays refused.
    env.broker.kill();
    assert!(verifier.verify_jwt(&other, "payments").is_ok());
    assert!(matches!(
        verifier.verify_jwt(&token, "payments"),
        Err(VerifyError::Revoked(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_survives_a_broker_restart_and_fails_closed_meanwhile() {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    let redis = RedisServer::start();
    let port = free_port();
    let config = config_on(&keys, &redis, port);
    let broker = BrokerProcess::start(&keys, &config);
    // A second broker sharing the Redis, to revoke while the first one is down.
    let other_path = keys.path("broker-other.toml");
    std::fs::write(&other_path, config_on(&keys, &redis, free_port())).unwrap();
    let other = BrokerProcess::start_with(&other_path);
    let mut env = Env {
        http: client(&keys, None),
        keys,
        issuer,
        redis,
        broker,
    };
    let verifier = env.verifier(Duration::from_secs(1)).await;
    let first = env.token("web", "payments").await;
    let second = env.token("web", "payments").await;
    assert!(verifier.verify_jwt(&first, "payments").is_ok());

    env.broker.kill();
    env.revoke_at(&other, json!({"credential_id": jti(&first)}))
        .await;
    // Fail closed once the feed has been down for longer than max_staleness.
    let stale = wait_until(Duration::from_secs(30), || {
        verifier.verify_jwt(&second, "payments") == Err(VerifyError::Stale)
    })
    .await;
    assert!(stale.is_some(), "the verifier never failed closed");

    // Same port, same Redis: the verifier resumes from its cursor and learns the
    // revocation published while it was disconnected.
    env.broker = BrokerProcess::start(&env.keys, &config);
    let back = wait_until(Duration::from_secs(30), || {
        verifier.verify_jwt(&second, "payments").is_ok()
    })
    .await;
    assert!(back.is_some(), "the verifier never reconnected");
    assert!(matches!(
        verifier.verify_jwt(&first, "payments"),
        Err(VerifyError::Revoked(_))
    ));
    // And it keeps following the feed.
    env.revoke_at(&env.broker, json!({"credential_id": jti(&second)}))
        .await;
    let took = wait_until(Duration::from_secs(5), || {
        verifier.verify_jwt(&second, "payments").is_err()
    })
    .await;
    assert!(took.is_some());
    drop(other);
    let _ = &env.redis;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_extractor_answers_401_with_a_bearer_challenge() {
    use axum::routing::get;
    let env = start();
    let verifier = env.verifier(Duration::from_secs(5)).await;
    let app = axum::Router::new()
        .route(
            "/hello",
            get(|VerifiedJwt(claims): VerifiedJwt| async move { format!("hello {}", claims.sub) }),
        )
        .layer(axum::Extension(verifier.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://{addr}/hello");
    let plain = support::broker::plain_client();

    let resp = plain.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"credbroker\""
    );

    let good = env.token("web", "payments").await;
    let resp = plain.get(&url).bearer_auth(&good).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "hello spiffe://example.org/sa/web"
    );

    for bad in [env.token("web", "ledger").await, "not-a-jwt".to_string()] {
        let resp = plain.get(&url).bearer_auth(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer realm=\"credbroker\", error=\"invalid_token\""),
            "{challenge}"
        );
        let body = resp.text().await.unwrap();
        assert!(!body.contains(&bad) && !challenge.contains(&bad));
    }

    env.revoke_at(&env.broker, json!({"credential_id": jti(&good)}))
        .await;
    assert!(
        wait_until(Duration::from_secs(5), || verifier
            .verify_jwt(&good, "payments")
            .is_err())
        .await
        .is_some()
    );
    let resp = plain.get(&url).bearer_auth(&good).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("revoked")
    );
}

/// An X.509-SVID for `spiffe_id` signed by the key folder's CA, with a given serial.
fn mint_svid(
    keys: &KeyDir,
    spiffe_id: &str,
    serial: &[u8],
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{
        CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType, SerialNumber,
    };
    let ca_pem = std::fs::read_to_string(keys.path("ca.pem")).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(keys.path("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

/// One mTLS exchange: the client sends "ping", the server answers "pong".
async fn mtls_ping(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let result = async {
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf == b"pong" {
            Ok(())
        } else {
            Err("bad answer".to_string())
        }
    }
    .await;
    let server_side = tokio::time::timeout(Duration::from_secs(5), serve).await;
    match (result, server_side) {
        (Ok(()), Ok(Ok(Ok(())))) => Ok(()),
        (Err(e), _) => Err(e),
        (_, other) => Err(format!("server side: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_with_a_revoked_svid_are_refused_both_ways() {
    let env = start();
    let verifier = env.verifier(Duration::from_secs(5)).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let serial = [0x00, 0x5e, 0xc0, 0x1d, 0xab, 0x1e, 0x00, 0x01];
    let (client_chain, client_key) =
        mint_svid(&env.keys, "spiffe://example.org/sa/client", &serial);
    let (server_chain, server_key) = mint_svid(
        &env.keys,
        "spiffe://example.org/sa/server",
        &[0x11, 0x22, 0x33, 0x44, 0x55],
    );

    let mut server = verifier
        .mtls_server_config(server_chain.clone(), server_key, true)
        .unwrap();
    server.alpn_protocols.clear();
    let server = Arc::new(server);
    let server_id =
        credbroker::identity::SpiffeId::parse("spiffe://example.org/sa/server").unwrap();
    let client_config =
        |chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, expected| {
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(verifier.server_cert_verifier(expected))
                    .with_client_auth_cert(chain, key)
                    .unwrap(),
            )
        };
    let good_client = client_config(
        client_chain.clone(),
        client_key.clone_key(),
        Some(server_id.clone()),
    );
    mtls_ping(server.clone(), good_client.clone())
        .await
        .expect("valid SVIDs shake hands");

    // The client pins another server identity: refused by the server verifier.
    let other_id = credbroker::identity::SpiffeId::parse("spiffe://example.org/sa/else").unwrap();
    let pinned_wrong = client_config(client_chain.clone(), client_key.clone_key(), Some(other_id));
    assert!(mtls_ping(server.clone(), pinned_wrong).await.is_err());

    // A certificate from another CA is refused.
    let stranger_keys = KeyDir::generate();
    let (stranger_chain, stranger_key) =
        mint_svid(&stranger_keys, "spiffe://example.org/sa/client", &[9, 9, 9]);
    let stranger = client_config(stranger_chain, stranger_key, None);
    assert!(mtls_ping(server.clone(), stranger).await.is_err());

    // Revoke the client's serial (openssl spelling, upper case with colons).
    env.revoke_at(
        &env.broker,
        json!({"credential_id": "00:5E:C0:1D:AB:1E:00:01"}),
    )
    .await;
    let refused = wait_until(Duration::from_secs(5), || {
        verifier
            .verify_client_svid(&client_chain, rustls::pki_types::UnixTime::now())
            .is_err()
    })
    .await;
    assert!(refused.is_some());
    let err = mtls_ping(server.clone(), good_client).await.unwrap_err();
    println!("revoked client SVID: {err}");

    // Revoke the server's identity: clients refuse to talk to it.
    env.revoke_at(
        &env.broker,
        json!({"spiffe_id": "spiffe://example.org/sa/server"}),
    )
    .await;
    let (fresh_chain, fresh_key) =
        mint_svid(&env.keys, "spiffe://example.org/sa/client2", &[7, 7, 7]);
    let fresh_client = client_config(fresh_chain, fresh_key, Some(server_id));
    let refused = wait_until(Duration::from_secs(5), || {
        verifier
            .verify_server_svid(&server_chain, rustls::pki_types::UnixTime::now())
            .is_err()
    })
    .await;
    assert!(refused.is_some());
    let err = mtls_ping(server.clone(), fresh_client).await.unwrap_err();
    println!("revoked server SVID: {err}");
}

//! `rediss://`: the store talks to Redis over TLS (rustls with the ring provider), and
//! verifies the server's certificate.
//!
//! Its own test binary: it points `SSL_CERT_FILE` at a test CA for the whole process.

#[path = "support/redis.rs"]
mod redis_support;

use credbroker::config::{RevocationConfig, StoreKind};
use credbroker::revoke::RevocationEntry;
use credbroker::store::Store;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use redis_support::{RedisServer, Tls};

#[tokio::test]
async fn rediss_urls_work_and_verify_the_server() {
    let dir = std::env::temp_dir().join(format!("credbroker-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "credbroker test redis CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let tls = Tls {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
        ca_file: dir.join("ca.pem"),
    };
    std::fs::write(&tls.cert_file, server_cert.pem()).unwrap();
    std::fs::write(&tls.key_file, server_key.serialize_pem()).unwrap();
    std::fs::write(&tls.ca_file, ca.pem()).unwrap();

    let server = RedisServer::start_tls(tls.clone());
    let url = server.tls_url.clone().unwrap();
    let cfg = RevocationConfig {
        store: StoreKind::Redis,
        redis_url: Some(url),
        ..RevocationConfig::default()
    };

    // Not yet trusted: the connection is refused, with a clear error.
    assert!(Store::connect(&cfg).await.is_err());

    // Trusted through the platform store (here SSL_CERT_FILE): it works.
    // SAFETY: this test binary has this one test; nothing else reads the environment now.
    unsafe { std::env::set_var("SSL_CERT_FILE", &tls.ca_file) };
    let store = Store::connect(&cfg).await.unwrap();
    let cursor = store
        .publish_revocation(&RevocationEntry::credential("over-tls", i64::MAX, None))
        .await
        .unwrap();
    let (entries, loaded_cursor) = store.load_revocations().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(loaded_cursor, cursor);

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

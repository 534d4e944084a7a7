//! Relying-party verification, beside the raw crypto, and revocation propagation from the
//! admin call to a library verifier (SPEC §9, §11).
//!
//! `cargo run --release --example bench_verify [-- REVOCATIONS]`
//!
//! 1. `Verifier::verify_jwt` per second on one core, beside one raw ES256 verify (ring,
//!    which the verifier uses, and josekit/OpenSSL).
//! 2. A broker in this process (Redis store when `redis-server` is on PATH, else memory),
//!    a `Verifier` following its revocation feed, and N revocations (default 1 000) made
//!    one after another through `POST /v1/revoke`: for each, the time from the admin
//!    call's response until `verify_jwt` refuses the token (p50/p99/max; target p99 < 10 ms).

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{BenchBroker, BenchRedis, one_core, percentile};
use credbroker::issue::SigningKeys;
use credbroker::issue::jwt::{JwtRequest, mint};
use credbroker::verify::{FeedCredential, Verifier, VerifierConfig, VerifyError};

const ISSUER: &str = "https://broker.bench";

fn main() {
    let revocations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    credbroker::issue::keygen::generate(&credbroker::issue::KeygenOptions::new(dir.path()))
        .expect("keys");
    let admin = std::fs::read_to_string(dir.path().join("admin-token"))
        .expect("admin token")
        .trim()
        .to_string();
    let keys = SigningKeys::load(&[dir.path().join("jwt-es256.key")]).expect("signing key");
    let redis = BenchRedis::start();
    let store = match &redis {
        Some(r) => format!("store = \"redis\"\nredis_url = \"{}\"", r.url),
        None => {
            println!("(redis-server not on PATH: using the memory store)");
            "store = \"memory\"".to_string()
        }
    };
    let admin_sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        admin.as_bytes(),
    ));
    let config_path = dir.path().join("bench-verify.toml");
    std::fs::write(
        &config_path,
        format!(
            "trust_domain = \"example.org\"\nissuer = \"{ISSUER}\"\n[server]\nlisten_http = \"127.0.0.1:0\"\n\
             [jwt]\nsigning_keys = [\"jwt-es256.key\"]\n[revocation]\n{store}\n[admin]\ntoken_sha256 = \"{admin_sha}\"\n"
        ),
    )
    .expect("config");
    let broker = BenchBroker::start(&config_path);
    let base = format!("http://{}", broker.http);

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let verifier = client_rt
        .block_on(Verifier::connect(
            VerifierConfig::new(&base)
                .ca_file(dir.path().join("ca.pem"))
                .feed_credential(FeedCredential::AdminToken(admin.clone())),
        ))
        .expect("verifier");
    let new_token = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let audiences = vec!["bench".to_string()];
        let issued = mint(
            &keys,
            &JwtRequest {
                issuer: ISSUER,
                spiffe_id: "spiffe://example.org/bench",
                audiences: &audiences,
                scopes: &[],
                owner: "team-bench",
                attestor: "bench",
                attestor_kind: "jwt",
                ttl: Duration::from_secs(600),
                now,
                cnf_x5t_s256: None,
                act: None,
                source: "bench",
                rule: "bench",
                chain: &["root-credential".to_string()],
            },
        )
        .expect("mint");
        (issued.token, issued.jti)
    };

    // 1. Verification rate on one core.
    let (token, _) = new_token();
    assert!(verifier.verify_jwt(&token, "bench").is_ok());
    let secs = Duration::from_secs(2);
    let library = one_core(secs, || {
        let _ = verifier.verify_jwt(&token, "bench");
    });
    let (josekit_raw, ring_raw) = raw_es256(&keys, &token);
    let josekit_rate = one_core(secs, josekit_raw);
    let ring_rate = one_core(secs, ring_raw);
    println!("== verify one ES256 credbroker JWT, one core");
    println!("   Verifier::verify_jwt (all checks): {library:>9.0}/s");
    println!("   raw ES256 verify, josekit/OpenSSL: {josekit_rate:>9.0}/s");
    println!(
        "   raw ES256 verify, ring:            {ring_rate:>9.0}/s  (library = {:.0}% of it)",
        100.0 * library / ring_rate
    );

    // 2. Propagation.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let http = Arc::new(http);
    let mut micros: Vec<u32> = Vec::with_capacity(revocations);
    let mut missed = 0;
    for _ in 0..revocations {
        let (token, jti) = new_token();
        let body = serde_json::json!({"credential_id": jti});
        let ok = client_rt.block_on(async {
            http.post(format!("{base}/v1/revoke"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
        let answered = Instant::now();
        if !ok {
            missed += 1;
            continue;
        }
        let deadline = answered + Duration::from_secs(2);
        loop {
            if matches!(
                verifier.verify_jwt(&token, "bench"),
                Err(VerifyError::Revoked(_))
            ) {
                micros.push(answered.elapsed().as_micros().min(u32::MAX as u128) as u32);
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            std::thread::yield_now();
        }
    }
    micros.sort_unstable();
    let ms = |p: f64| percentile(&micros, p) as f64 / 1000.0;
    println!(
        "\n== revocation propagation, admin response → verify_jwt refuses ({} store, SSE feed)",
        if redis.is_some() { "redis" } else { "memory" }
    );
    println!(
        "   {} revocations: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (missed {missed}; target p99 < 10 ms)",
        micros.len(),
        ms(50.0),
        ms(99.0),
        micros.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    drop(verifier);
    drop(broker);
}

/// One raw ES256 signature verification of `token`, with josekit and with ring.
fn raw_es256(keys: &SigningKeys, token: &str) -> (impl Fn() + use<>, impl Fn() + use<>) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = keys.active().public_jwk();
    let jwk =
        josekit::jwk::Jwk::from_map(jwk.as_object().cloned().unwrap_or_default()).expect("jwk");
    let verifier = josekit::jws::ES256
        .verifier_from_jwk(&jwk)
        .expect("verifier");
    let (signed, sig) = token.rsplit_once('.').expect("jws");
    let signed = signed.as_bytes().to_vec();
    let sig = URL_SAFE_NO_PAD.decode(sig).expect("sig");
    let coord = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(
                jwk.parameter(name)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
            )
            .unwrap_or_default()
    };
    let mut point = vec![4u8];
    point.extend(coord("x"));
    point.extend(coord("y"));
    let (s1, g1) = (signed.clone(), sig.clone());
    let josekit_op = move || {
        let _ = josekit::jws::JwsVerifier::verify(&verifier, &s1, &g1);
    };
    let ring_op = move || {
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &point,
        );
        let _ = key.verify(&signed, &sig);
    };
    (josekit_op, ring_op)
}

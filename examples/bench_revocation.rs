//! Revocation benchmarks (SPEC §11): the local check, mirror memory, start-up with 100 k
//! entries, and propagation across three brokers sharing one Redis.
//!
//! `cargo run --release --example bench_revocation [-- REVOCATIONS]` (needs `redis-server`).

#[path = "bench_support/mod.rs"]
mod bench_support;

// The allocator the `credbroker` binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use bench_support::{BenchBroker, BenchRedis, percentile};
use credbroker::config::{RevocationConfig, StoreKind};
use credbroker::revoke::entry::RevocationEntry;
use credbroker::revoke::mirror::{CredentialRef, RevocationMirror};
use credbroker::revoke::sync::initial_load;
use credbroker::store::Store;
use serde_json::{Value, json};

fn main() {
    let revocations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    check_and_memory();
    let Some(redis) = BenchRedis::start() else {
        eprintln!("redis-server is not on PATH: install it to run the Redis benchmarks");
        std::process::exit(1);
    };
    startup(&redis);
    propagation(&redis, revocations);
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// 1 M credential entries: bytes of mirror, and ns per check (hits and misses).
fn check_and_memory() {
    const N: usize = 1_000_000;
    let ids: Vec<String> = (0..N)
        .map(|i| format!("{:022x}", i as u128 * 0x9e37_79b9_7f4a_7c15))
        .collect();
    let before = rss_kib();
    let mirror = RevocationMirror::new();
    let exp = now() + 3600;
    let entries: Vec<RevocationEntry> = ids
        .iter()
        .map(|id| RevocationEntry::credential(id, exp, None))
        .collect();
    mirror.replace_all(entries, "0-0".into());
    let after = rss_kib();
    let chain: Vec<String> = vec!["root-credential".into(), "parent-credential".into()];
    let n_lookups = 5_000_000usize;
    let t = Instant::now();
    let mut hits = 0usize;
    let now = now();
    for i in 0..n_lookups {
        let id = &ids[(i * 7919) % N];
        let probe = if i % 2 == 0 {
            id.as_str()
        } else {
            "not-revoked-credential"
        };
        let c = CredentialRef {
            id: probe,
            spiffe_id: "spiffe://example.org/ns/prod/sa/web",
            source: "c3JjLWhhc2gtZXhhbXBsZQ",
            issued_at: now - 10,
            chain: &chain,
            actors: &[],
        };
        if mirror.check(&c, now).is_some() {
            hits += 1;
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / n_lookups as f64;
    println!("== revocation check, {N} entries in the mirror");
    println!(
        "   {ns:.0} ns per check (half hits, half misses; id + 2 chain ids + identity + source + global), {hits} hits"
    );
    println!(
        "   mirror memory: {:.0} MB (RSS growth while loading)",
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}

/// Time to load a mirror of 100 k entries from Redis (what a broker does at start).
fn startup(redis: &BenchRedis) {
    const N: usize = 100_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = RevocationConfig {
            store: StoreKind::Redis,
            redis_url: Some(redis.url.clone()),
            key_prefix: "startup:".into(),
            stream_max_len: 1000,
            ..RevocationConfig::default()
        };
        let store = Store::connect(&config).await.unwrap();
        let exp = now() + 3600;
        let t = Instant::now();
        let mut pending = Vec::new();
        for i in 0..N {
            let store = store.clone();
            pending.push(tokio::spawn(async move {
                let _ = store
                    .publish_revocation(&RevocationEntry::credential(
                        &format!("startup-{i:08}"),
                        exp,
                        None,
                    ))
                    .await;
            }));
            if pending.len() == 256 {
                for p in pending.drain(..) {
                    let _ = p.await;
                }
            }
        }
        for p in pending {
            let _ = p.await;
        }
        let fill = t.elapsed();
        let mirror = RevocationMirror::new();
        let t = Instant::now();
        initial_load(&store, &mirror).await.unwrap();
        println!("\n== start-up: full mirror load from Redis");
        println!(
            "   {} entries loaded in {:.0} ms (written in {:.1} s)",
            mirror.len(),
            t.elapsed().as_secs_f64() * 1000.0,
            fill.as_secs_f64()
        );
    });
}

/// Three brokers on one Redis: from the admin call's response to inactive everywhere.
fn propagation(redis: &BenchRedis, revocations: usize) {
    let dir = tempfile::tempdir().unwrap();
    credbroker::issue::keygen::generate(&credbroker::issue::KeygenOptions::new(dir.path()))
        .unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let admin_hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        admin.as_bytes(),
    ));
    let join_rule = r#"
[[attestor]]
name = "bootstrap"
kind = "join_token"
[[rule]]
name = "hosts"
attestor = "bootstrap"
owner = "team-bench"
spiffe_id = "{/spiffe_id}"
audiences = ["bench"]
"#;
    let config = format!(
        "trust_domain = \"example.org\"\nissuer = \"https://broker.bench\"\n[server]\nlisten_http = \"127.0.0.1:0\"\n[jwt]\nsigning_keys = [\"jwt-es256.key\"]\n[revocation]\nstore = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"prop:\"\n[admin]\ntoken_sha256 = \"{admin_hash}\"\n{join_rule}",
        redis.url
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let brokers: Vec<BenchBroker> = (0..3).map(|_| BenchBroker::start(&path)).collect();
    let urls: Vec<String> = brokers
        .iter()
        .map(|b| format!("http://{}", b.http))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let samples = rt.block_on(async {
        let http = reqwest::Client::new();
        // Credentials to revoke: join tokens redeemed for JWTs.
        let mut tokens = Vec::with_capacity(revocations);
        for i in 0..revocations {
            let r: Value = http
                .post(format!("{}/v1/join-tokens", urls[0]))
                .bearer_auth(&admin)
                .json(&json!({"spiffe_id": format!("spiffe://example.org/host/h{i}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let join = r["token"].as_str().unwrap().to_string();
            let r: Value = http
                .post(format!("{}/v1/token", urls[i % 3]))
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token_type", "urn:credbroker:token-type:join-token"),
                    ("subject_token", join.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens.push(r["access_token"].as_str().unwrap().to_string());
        }
        let mut samples = Vec::with_capacity(revocations);
        for (i, token) in tokens.iter().enumerate() {
            let r = http
                .post(format!("{}/v1/revoke", urls[i % 3]))
                .bearer_auth(&admin)
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let t0 = Instant::now();
            let waits = urls.iter().map(|u| {
                let http = http.clone();
                let admin = admin.clone();
                let u = u.clone();
                let token = token.clone();
                async move {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < deadline {
                        let a: Value = http
                            .post(format!("{u}/v1/introspect"))
                            .bearer_auth(&admin)
                            .form(&[("token", token.as_str())])
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        if a["active"] == false {
                            return t0.elapsed();
                        }
                    }
                    Duration::from_secs(5)
                }
            });
            let all = futures_util::future::join_all(waits).await;
            samples.push(all.into_iter().max().unwrap_or_default().as_micros() as u32);
        }
        samples
    });
    println!("\n== revocation propagation: 3 brokers on one Redis, {revocations} revocations");
    println!("   from the admin call's response to inactive at every broker's introspection:");
    println!(
        "   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(&samples, 50.0) as f64 / 1000.0,
        percentile(&samples, 99.0) as f64 / 1000.0,
        percentile(&samples, 100.0) as f64 / 1000.0
    );
    drop(brokers);
}

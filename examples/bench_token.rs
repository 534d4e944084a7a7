//! Token-exchange throughput and latency, beside the raw crypto ceiling (SPEC §11).
//!
//! `cargo run --release --example bench_token [-- SECONDS [memory|redis]]`
//!
//! 1. The ceiling: one RS256 verify (the platform token) + one ES256 sign (our JWT),
//!    with ring (what the broker signs and verifies with) and with josekit/OpenSSL, on
//!    one core and on all cores.
//! 2. The real endpoint: a broker in this process serving plain HTTP on loopback,
//!    driven over keep-alive connections by a minimal HTTP/1.1 client (as wrk would):
//!    at concurrency 1, 16 and 64 with the client's tasks on the broker's two workers,
//!    then at 16 and 64 with the client on a thread of its own, as wrk on the same
//!    machine (see `bench_support::Client`), and at 16 and 64 with `wrk` if it is on
//!    PATH; with the memory store and (if `redis-server` is on PATH) a Redis store; then
//!    `GET /healthz`, the HTTP floor.
//! 3. The ceiling again (the higher of the two counts), then the tables. Beside each rate:
//!    the machine's CPU time per token, idle and stolen shares (see `CpuTicks`).
//!
//! Every token is for one identity unless `CREDBROKER_BENCH_IDENTITIES=N` spreads them over
//! N (the Redis store updates an identity's inventory record once per batch).

#[path = "bench_support/mod.rs"]
mod bench_support;

// The allocator the `credbroker` binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use bench_support::exchange::{self, FORM};
use bench_support::{
    BenchBroker, BenchRedis, Client, CpuUse, Summary, all_cores, drive_raw, drive_wrk,
    http_request, log_like_serve, one_core, with_cpu,
};
use josekit::jws::{ES256, JwsHeader, RS256};
use josekit::jwt::{self, JwtPayload};

/// One table row: store, client, connections, figures with the machine's CPU meanwhile,
/// and `redis-server`'s CPU per token.
type Run = (
    &'static str,
    &'static str,
    usize,
    (Summary, Option<CpuUse>),
    Option<f64>,
);

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let level_time = Duration::from_secs(seconds);
    let dir = tempfile::tempdir().expect("tempdir");

    // The platform issuer and a token it signed.
    let platform = exchange::platform(dir.path());
    let platform_token = platform.token.clone();

    // ---- 1. the crypto ceiling
    let verifier = Arc::new(RS256.verifier_from_jwk(&platform.public_jwk).unwrap());
    let ec = ES256.generate_key_pair().unwrap();
    let ec_signer = Arc::new(ES256.signer_from_der(ec.to_der_private_key()).unwrap());
    let token_j = platform_token.clone();
    let josekit_op = move || {
        let _ = jwt::decode_with_verifier(&token_j, verifier.as_ref()).unwrap();
        let mut h = JwsHeader::new();
        h.set_token_type("JWT");
        let _ = jwt::encode_with_signer(&JwtPayload::new(), &h, ec_signer.as_ref()).unwrap();
    };
    let ring_op = ring_ceiling(&platform.rsa.to_der_public_key(), &platform_token);
    let ceiling_time = Duration::from_secs(2);
    let josekit_one = one_core(ceiling_time, josekit_op.clone());
    let josekit_all = all_cores(ceiling_time, josekit_op);
    let ring_one = one_core(ceiling_time, ring_op.clone());
    let ring_all = with_cpu(|| all_cores(ceiling_time, ring_op.clone()));
    let ceiling = Ceiling::new(josekit_all.max(ring_all.0), &ring_all, ceiling_time);
    println!("== crypto ceiling: one RS256 verify + one ES256 sign per operation");
    println!("   josekit/OpenSSL: {josekit_one:>8.0}/s one core   {josekit_all:>8.0}/s all cores");
    println!(
        "   ring:            {ring_one:>8.0}/s one core   {:>8.0}/s all cores{}",
        ring_all.0,
        ceiling.cpu_note()
    );

    // ---- 2. the real endpoint
    credbroker::issue::keygen::generate(&credbroker::issue::KeygenOptions::new(dir.path()))
        .expect("keys");
    let redis = BenchRedis::start();
    let mut stores = vec![("memory", "store = \"memory\"".to_string())];
    match &redis {
        Some(r) => stores.push((
            "redis",
            format!("store = \"redis\"\nredis_url = \"{}\"", r.url),
        )),
        None => println!("(redis-server not on PATH: skipping the Redis store run)"),
    }
    if let Some(nice) = redis
        .as_ref()
        .and_then(BenchRedis::nice)
        .filter(|n| *n != 0)
    {
        println!("(redis-server runs at nice {nice}: CREDBROKER_BENCH_REDIS_NICE)");
    }
    if let Some(format) = log_like_serve() {
        println!("(the broker logs as `serve` does, {format:?} to stderr: CREDBROKER_BENCH_LOG)");
    }
    let body = exchange::form(&platform_token);
    // All tokens are for one identity (a CI fan-out), unless spread over several: each
    // connection then asks for each identity in turn.
    let identities: usize = std::env::var("CREDBROKER_BENCH_IDENTITIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let request = Arc::new(if identities == 1 {
        vec![http_request("POST", "/v1/token", FORM, body.as_bytes())]
    } else {
        println!(
            "(tokens for {identities} identities, the `wrk` rows' for one: CREDBROKER_BENCH_IDENTITIES)"
        );
        (0..identities)
            .map(|k| {
                let form = exchange::form(&platform.token_for(&format!("acme/web-{k}")));
                http_request("POST", "/v1/token", FORM, form.as_bytes())
            })
            .collect()
    });
    let only = std::env::args().nth(2);
    stores.retain(|(name, _)| only.as_deref().is_none_or(|o| o == *name));
    let mut runs: Vec<Run> = Vec::new();
    let mut floor = None;
    let mut no_wrk = false;
    for (name, store) in stores {
        let config_path = dir.path().join(format!("bench-{name}.toml"));
        std::fs::write(&config_path, exchange::config(&store)).unwrap();
        let broker = BenchBroker::start(&config_path);
        let workers = Client::OnBrokerWorkers(broker.runtime.handle());
        let levels = [(workers, 1usize), (workers, 16), (workers, 64)];
        let wrk_like = [(Client::OwnThread, 16), (Client::OwnThread, 64)];
        for (client, conns) in levels.into_iter().chain(wrk_like) {
            let addr = broker.http;
            eprintln!(
                "   running: {name} store, {} client, {conns} connections",
                client.label()
            );
            let redis_before = redis_cpu(name, &redis);
            let level = with_cpu(|| {
                drive_raw(
                    client,
                    conns,
                    level_time,
                    2_000_000,
                    move || connect(addr),
                    request.clone(),
                )
            });
            let summary = Summary::from(&level.0);
            let redis_per_token = redis_before
                .zip(redis_cpu(name, &redis))
                .map(|(b, e)| 1e6 * (e - b) / (summary.ok as f64).max(1.0));
            runs.push((
                name,
                client.label(),
                conns,
                (summary, level.1),
                redis_per_token,
            ));
        }
        for conns in [16, 64] {
            eprintln!("   running: {name} store, wrk, {conns} connections");
            let form = ("POST", "/v1/token", FORM, body.as_bytes());
            match with_cpu(|| drive_wrk(dir.path(), broker.http, conns, level_time, form)) {
                (Some(summary), cpu) => runs.push((name, "wrk", conns, (summary, cpu), None)),
                (None, _) => {
                    no_wrk = true;
                    break;
                }
            }
        }
        if name == "memory" {
            let addr = broker.http;
            let healthz = Arc::new(vec![http_request("GET", "/healthz", "text/plain", b"")]);
            eprintln!("   running: GET /healthz, workers client, 64 connections");
            floor = Some(with_cpu(|| {
                drive_raw(
                    workers,
                    64,
                    level_time,
                    2_000_000,
                    move || connect(addr),
                    healthz,
                )
            }));
        }
        drop(broker);
    }
    // Measured again after the load: on a shared VM one two-second sample can land in a
    // dip, and a low ceiling would flatter every ratio. The higher of the two counts.
    let again = with_cpu(|| all_cores(ceiling_time, ring_op));
    let ceiling = ceiling.max(Ceiling::new(again.0, &again, ceiling_time));
    println!(
        "   ring again after the load: {:>8.0}/s all cores; ceiling used for ratios: {:.0}/s{}",
        again.0,
        ceiling.rate,
        ceiling.cpu_note()
    );

    let mut last = "";
    if no_wrk {
        println!("\n(wrk not on PATH, or its output unreadable: no wrk rows)");
    }
    for (name, client, conns, (result, cpu), redis_us) in &runs {
        if last != *name {
            last = name;
            println!(
                "\n== POST /v1/token, token exchange, {name} store, plain HTTP keep-alive on loopback"
            );
            println!(
                "   {:>7} {:>5} {:>10} {:>9} {:>9} {:>9} {:>8}   {:>11} {:>9} {:>6} {:>6} {:>9}",
                "client",
                "conns",
                "tokens/s",
                "p50 ms",
                "p99 ms",
                "ceiling%",
                "errors",
                "CPU µs/tok",
                "CPU eff%",
                "idle%",
                "steal%",
                "Redis µs"
            );
        }
        let per_token = cpu.as_ref().map(|c| c.micros_per(result.ok as f64));
        println!(
            "   {:>7} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>8.0}% {:>8}   {:>11} {:>9} {:>6} {:>6} {:>9}",
            client,
            conns,
            result.rate,
            result.p50_ms,
            result.p99_ms,
            100.0 * result.rate / ceiling.rate,
            result.failed,
            per_token.map_or("-".into(), |t| format!("{t:.1}")),
            per_token
                .zip(ceiling.cpu_per_op_us)
                .map_or("-".into(), |(t, c)| format!("{:.0}%", 100.0 * c / t)),
            cpu.as_ref()
                .map_or("-".into(), |c| format!("{:.0}%", 100.0 * c.idle_share)),
            cpu.as_ref()
                .map_or("-".into(), |c| format!("{:.0}%", 100.0 * c.steal_share)),
            redis_us.map_or("-".into(), |r| format!("{r:.1}")),
        );
    }
    print_spread(&runs);
    if let Some((result, cpu)) = floor {
        println!(
            "\n== the HTTP floor: GET /healthz on the memory-store broker, 64 connections\n   {:.0} requests/s, {} CPU µs per request",
            result.rate(),
            cpu.map_or("-".into(), |c| format!(
                "{:.1}",
                c.micros_per(result.ok as f64)
            ))
        );
    }
    println!(
        "\n   CPU µs/tok: CPU time of the whole machine (broker, load generator, Redis) per token;\n   CPU eff%: the ceiling's CPU per operation over that — the ratio when nothing is stolen;\n   Redis µs: the part of CPU µs/tok that `redis-server` spent."
    );
}

/// `redis-server`'s CPU seconds so far, when `store` is the Redis one.
fn redis_cpu(store: &str, redis: &Option<BenchRedis>) -> Option<f64> {
    redis.as_ref().filter(|_| store == "redis")?.cpu_seconds()
}

/// Connects the load generator to `addr` the way wrk does (TCP_NODELAY).
async fn connect(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The all-core crypto ceiling, in operations per second and (where /proc/stat is
/// readable) CPU microseconds per operation.
struct Ceiling {
    rate: f64,
    cpu_per_op_us: Option<f64>,
}

impl Ceiling {
    fn new(rate: f64, measured: &(f64, Option<CpuUse>), duration: Duration) -> Ceiling {
        let ops = measured.0 * duration.as_secs_f64();
        Ceiling {
            rate,
            cpu_per_op_us: measured.1.as_ref().map(|c| c.micros_per(ops)),
        }
    }

    /// The higher rate; the lower (stricter) CPU cost per operation.
    fn max(self, other: Ceiling) -> Ceiling {
        Ceiling {
            rate: self.rate.max(other.rate),
            cpu_per_op_us: match (self.cpu_per_op_us, other.cpu_per_op_us) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    fn cpu_note(&self) -> String {
        self.cpu_per_op_us
            .map_or(String::new(), |c| format!(" ({c:.1} CPU µs per operation)"))
    }
}

/// The same operation with ring: RS256 verify with the RSA public key, ES256 sign.
fn ring_ceiling(public_der: &[u8], token: &str) -> impl Fn() + Clone + Send + Sync + 'static {
    use ring::signature;
    use x509_parser::prelude::FromDer;
    // SubjectPublicKeyInfo → the RSAPublicKey inside it, which ring takes.
    let spki = x509_parser::x509::SubjectPublicKeyInfo::from_der(public_der)
        .map(|(_, s)| s.subject_public_key.data.to_vec())
        .expect("spki");
    let (signing_input, sig) = token.rsplit_once('.').expect("jws");
    let sig =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    let signing_input = signing_input.as_bytes().to_vec();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
    let ec = Arc::new(
        signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap(),
    );
    let spki = Arc::new(spki);
    let signing_input = Arc::new(signing_input);
    let sig = Arc::new(sig);
    move || {
        let key = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            spki.as_slice(),
        );
        key.verify(&signing_input, &sig).unwrap();
        let _ = ec
            .sign(&ring::rand::SystemRandom::new(), b"header.payload")
            .unwrap();
    }
}

/// The latency distribution at 64 connections and the work each connection got done: a
/// p99 far above the p50 with every connection served alike is spread within each
/// connection (which queue a request waits in), not unfairness between them.
fn print_spread(runs: &[Run]) {
    println!(
        "\n== latency spread at 64 connections, `workers` client\n   {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}   tokens per connection",
        "store", "p1", "p10", "p50", "p90", "p99", "p99.9 ms"
    );
    for (name, client, conns, (summary, _), _) in runs {
        let Some(spread) = summary.spread.as_ref() else {
            continue;
        };
        if *client != "workers" || *conns != 64 {
            continue;
        }
        let [p1, p10, p50, p90, p99, p999] = spread.percentiles_ms;
        let (fewest, most) = spread.per_connection;
        println!(
            "   {name:>7} {p1:>7.2} {p10:>7.2} {p50:>7.2} {p90:>7.2} {p99:>7.2} {p999:>8.2}   {fewest}–{most}"
        );
    }
}

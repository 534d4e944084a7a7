//! Instructions per token exchange, counted by callgrind: the same for the same binary on
//! any host, where `bench_token`'s rates move with the host and its neighbours. For
//! judging a change to the non-crypto path, whose effect is often below a VM's noise.
//!
//! `cargo build --release --example bench_instructions &&
//!  target/release/examples/bench_instructions [TOKENS [memory|redis]]`
//!
//! It runs itself under `valgrind --tool=callgrind` (valgrind must be on PATH; Redis needs
//! `redis-server`): a broker in the process, as in `bench_token`; 200 tokens to warm up;
//! then the counters are zeroed, TOKENS tokens (default 500) are exchanged one after another
//! over one keep-alive connection, and the counters are dumped. It prints instructions per
//! token for the whole process (broker and the minimal client), split into ring's — the
//! crypto — and the rest. With Redis each token is its own pipeline here (nothing to batch
//! with at concurrency 1), so the Redis client's share is larger than under load. With
//! `CREDBROKER_BENCH_INSTRUCTIONS_KEEP=FILE` the dump is kept in FILE, where
//! `callgrind_annotate FILE` tells which functions the instructions went to. With
//! `CREDBROKER_BENCH_LOG=text` or `json` the broker logs as `credbroker serve` does (one
//! audit line per token, to stderr).

#[path = "bench_support/mod.rs"]
mod bench_support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use bench_support::exchange::{self, FORM};
use bench_support::{BenchBroker, BenchRedis, http_request, log_like_serve};

/// Set in the child that valgrind runs.
const CHILD: &str = "CREDBROKER_BENCH_INSTRUCTIONS_CHILD";
/// A path to copy the measured part's dump to, for `callgrind_annotate`.
const KEEP: &str = "CREDBROKER_BENCH_INSTRUCTIONS_KEEP";
const WARM_UP: usize = 200;
/// ring's functions, by symbol: its Rust modules and its C and assembly routines.
const CRYPTO: &[&str] = &[
    "ring::",
    "ring_core_",
    "bn_",
    "ecp_nistz256",
    "LIMBS_",
    "p256_",
    "sha256_block",
    "sha512_block",
];

fn main() {
    let tokens: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let store = std::env::args().nth(2).unwrap_or_else(|| "memory".into());
    if std::env::var_os(CHILD).is_some() {
        log_like_serve();
        exchange_tokens(tokens, &store);
    } else {
        measure(tokens, &store);
    }
}

/// Runs this program under callgrind and prints what the dump of the measured part says.
fn measure(tokens: usize, store: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("callgrind.out");
    let status = Command::new("valgrind")
        .args(["-q", "--tool=callgrind"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe().expect("current exe"))
        .args([tokens.to_string(), store.to_string()])
        .env(CHILD, "1")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("the run under callgrind failed: {s}"),
        Err(e) => panic!("valgrind could not be started ({e}): install valgrind"),
    }
    // `callgrind_control -d` wrote the measured part as the first numbered dump.
    let dump = dir.path().join("callgrind.out.1");
    let total = total_instructions(&dump);
    let crypto = crypto_instructions(&dump);
    if let Some(keep) = std::env::var_os(KEEP) {
        std::fs::copy(&dump, &keep).expect("copy the dump");
        println!(
            "(the dump, for callgrind_annotate: {})",
            Path::new(&keep).display()
        );
    }
    let per = |n: u64| n as f64 / tokens as f64;
    println!("== instructions per token exchange, {store} store, {tokens} tokens at concurrency 1");
    if let Ok(format) = std::env::var("CREDBROKER_BENCH_LOG") {
        println!("   (the broker logs as `serve` does, {format} to stderr: CREDBROKER_BENCH_LOG)");
    }
    println!("   all:        {:>9.0}", per(total));
    println!("   crypto:     {:>9.0}  (ring)", per(crypto));
    println!("   the rest:   {:>9.0}", per(total - crypto));
}

fn total_instructions(dump: &Path) -> u64 {
    let text = std::fs::read_to_string(dump).expect("read the callgrind dump");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|n| n.trim().parse().ok())
        .expect("the dump's totals")
}

/// The exclusive instructions of ring's functions, from `callgrind_annotate`.
fn crypto_instructions(dump: &Path) -> u64 {
    let annotated = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100", "--auto=no"])
        .arg(dump)
        .output()
        .expect("callgrind_annotate (part of valgrind)");
    String::from_utf8_lossy(&annotated.stdout)
        .lines()
        .filter(|line| CRYPTO.iter().any(|name| line.contains(name)))
        .filter_map(|line| {
            line.split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The child: a broker, a warm-up, then the measured tokens between a zeroing and a dump.
fn exchange_tokens(tokens: usize, store: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let platform = exchange::platform(dir.path());
    credbroker::issue::keygen::generate(&credbroker::issue::KeygenOptions::new(dir.path()))
        .expect("keys");
    let redis = (store == "redis").then(|| BenchRedis::start().expect("redis-server on PATH"));
    let store_lines = match &redis {
        Some(r) => format!("store = \"redis\"\nredis_url = \"{}\"", r.url),
        None => "store = \"memory\"".into(),
    };
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, exchange::config(&store_lines)).expect("config");
    let broker = BenchBroker::start(&config_path);
    let request = http_request(
        "POST",
        "/v1/token",
        FORM,
        exchange::form(&platform.token).as_bytes(),
    );
    let mut conn = std::net::TcpStream::connect(broker.http).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0; 64 * 1024];
    for _ in 0..WARM_UP {
        round_trip(&mut conn, &request, &mut buf);
    }
    let pid = std::process::id().to_string();
    callgrind_control("-z", &pid);
    for _ in 0..tokens {
        round_trip(&mut conn, &request, &mut buf);
    }
    callgrind_control("-d", &pid);
}

fn callgrind_control(what: &str, pid: &str) {
    let status = Command::new("callgrind_control")
        .args([what, pid])
        .output()
        .expect("callgrind_control (part of valgrind)");
    assert!(status.status.success(), "callgrind_control {what} failed");
}

/// One request and its whole response, which must be a 200.
fn round_trip(conn: &mut std::net::TcpStream, request: &[u8], buf: &mut [u8]) {
    conn.write_all(request).expect("send");
    let mut got = 0;
    loop {
        let n = conn.read(&mut buf[got..]).expect("receive");
        assert!(n > 0, "the broker closed the connection");
        got += n;
        let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).expect("head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        if got >= end + 4 + length {
            return;
        }
    }
}

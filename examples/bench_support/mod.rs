//! Shared pieces of the benchmark programs: a broker in its own runtime, a Redis
//! spawned on a free port, a keep-alive load generator, and percentile maths.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::clock::SystemClock;
use credbroker::config::Config;
use credbroker::server::Server;

/// A broker running on its own tokio runtime, so load generation cannot starve it of a scheduler.
pub struct BenchBroker {
    pub runtime: tokio::runtime::Runtime,
    pub server: Option<Server>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
}

impl BenchBroker {
    pub fn start(config_path: &Path) -> BenchBroker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = Config::load(config_path).expect("config");
        let server = runtime
            .block_on(Server::start(config, Arc::new(SystemClock)))
            .expect("start broker");
        let http = server.http_addr().expect("listen_http");
        let https = server.https_addr();
        BenchBroker {
            runtime,
            server: Some(server),
            http,
            https,
        }
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

/// A throwaway `redis-server` on a free loopback port.
pub struct BenchRedis {
    child: Child,
    pub url: String,
}

impl BenchRedis {
    pub fn start() -> Option<BenchRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(BenchRedis {
                    child,
                    url: format!("redis://127.0.0.1:{port}/0"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one load level.
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }
}

/// The p-th percentile (0..=100) of a sample, in the sample's unit.
pub fn percentile(sample: &[u32], p: f64) -> u32 {
    if sample.is_empty() {
        return 0;
    }
    let mut sorted = sample.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A keep-alive HTTP/1.1 client, one connection per client.
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Runs `connections` clients (each from `make_client`), each sending requests back to
/// back, until `max_requests` in total or `duration` has passed, whichever is first.
/// `make_request` gets its client and the request's number on that connection.
pub fn drive<C, F, Fut>(
    connections: usize,
    duration: Duration,
    max_requests: usize,
    make_client: C,
    make_request: F,
) -> LoadResult
where
    C: Fn() -> reqwest::Client,
    F: Fn(reqwest::Client, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async move {
        let per_conn = max_requests.div_ceil(connections);
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let make = make_request.clone();
            let client = make_client();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_conn.min(100_000));
                let (mut ok, mut failed) = (0usize, 0usize);
                for i in 0..per_conn {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    if make(client.clone(), i).await {
                        ok += 1;
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed, lat)
            }));
        }
        let mut result = LoadResult {
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
        };
        for t in tasks {
            if let Ok((ok, failed, lat)) = t.await {
                result.ok += ok;
                result.failed += failed;
                result.latencies_us.extend(lat);
            }
        }
        result.elapsed = start.elapsed();
        result
    })
}

/// Runs `work` on every core for `duration` and returns operations per second in total.
pub fn all_cores<F>(duration: Duration, work: F) -> f64
where
    F: Fn() + Send + Sync + Clone + 'static,
{
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let handles: Vec<_> = (0..cores)
        .map(|_| {
            let work = work.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < duration {
                    work();
                    n += 1;
                }
                n as f64 / start.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).sum()
}

/// Operations per second of `work` on this thread.
pub fn one_core<F: Fn()>(duration: Duration, work: F) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        work();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

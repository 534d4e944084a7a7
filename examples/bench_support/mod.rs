//! Shared pieces of the benchmark programs: a broker in its own runtime, a Redis
//! spawned on a free port, a keep-alive load generator, and percentile maths.
#![allow(dead_code)]

pub mod exchange;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::clock::SystemClock;
use credbroker::config::{Config, LogFormat};
use credbroker::server::Server;
use tokio::io::{AsyncRead, AsyncWrite};

/// With `CREDBROKER_BENCH_LOG=text` or `json`, logs as `credbroker serve` does: to stderr,
/// filtered by `CREDBROKER_LOG`, so one audit line per credential at the default `info`.
/// Unset, the broker logs nothing. Call it before the broker starts.
pub fn log_like_serve() -> Option<LogFormat> {
    let format = match std::env::var("CREDBROKER_BENCH_LOG").ok()?.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => panic!("CREDBROKER_BENCH_LOG={other:?}: use text or json"),
    };
    credbroker::cli::init_logging(format);
    Some(format)
}

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
            .thread_name("broker")
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
    /// The server's CPU time so far (user and system), from `/proc/PID/stat`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let utime: f64 = self.stat_field(14)?;
        let stime: f64 = self.stat_field(15)?;
        // In USER_HZ ticks, which Linux's ABI fixes at 100 a second.
        Some((utime + stime) / 100.0)
    }

    /// The server's nice value, as the kernel has it.
    pub fn nice(&self) -> Option<i32> {
        self.stat_field(19)
    }

    /// Field `n` of `/proc/PID/stat`, numbered from 1 as proc(5) does.
    fn stat_field<T: std::str::FromStr>(&self, n: usize) -> Option<T> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Counted after field 2, the command name in parentheses (it may hold spaces).
        let after_name = stat.rsplit_once(')')?.1;
        after_name
            .split_whitespace()
            .nth(n.checked_sub(3)?)?
            .parse()
            .ok()
    }

    /// Starts the server, at the nice value `CREDBROKER_BENCH_REDIS_NICE` when set: on the
    /// benchmark's two cores the broker keeps both busy, and at the default priority a
    /// pipeline that reaches `redis-server` may wait for a core.
    pub fn start() -> Option<BenchRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut command = match std::env::var("CREDBROKER_BENCH_REDIS_NICE") {
            Ok(nice) => {
                let mut command = Command::new("nice");
                command.args(["-n", &nice, "redis-server"]);
                command
            }
            Err(_) => Command::new("redis-server"),
        };
        let child = command
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
    /// Successes of each connection, to tell unfairness between connections from spread
    /// within each.
    pub per_connection: Vec<usize>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }
}

/// A table row's figures for one load level, whichever load generator produced them.
pub struct Summary {
    pub ok: usize,
    pub failed: usize,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Only from our own load generator; `wrk` reports no more than p50 and p99.
    pub spread: Option<Spread>,
}

/// How one load level's latencies and work were distributed.
pub struct Spread {
    /// p1, p10, p50, p90, p99 and p99.9 (`PERCENTILES`), in milliseconds.
    pub percentiles_ms: [f64; 6],
    /// The fewest and the most successes of one connection.
    pub per_connection: (usize, usize),
}

impl Spread {
    const PERCENTILES: [f64; 6] = [1.0, 10.0, 50.0, 90.0, 99.0, 99.9];
}

impl From<&LoadResult> for Summary {
    fn from(result: &LoadResult) -> Summary {
        let mut sorted = result.latencies_us.clone();
        sorted.sort_unstable();
        let percentiles_ms =
            Spread::PERCENTILES.map(|p| percentile_of_sorted(&sorted, p) as f64 / 1000.0);
        Summary {
            ok: result.ok,
            failed: result.failed,
            rate: result.rate(),
            p50_ms: percentiles_ms[2],
            p99_ms: percentiles_ms[4],
            spread: Some(Spread {
                percentiles_ms,
                per_connection: (
                    result.per_connection.iter().copied().min().unwrap_or(0),
                    result.per_connection.iter().copied().max().unwrap_or(0),
                ),
            }),
        }
    }
}

/// Drives `request` (method, path, content type, body) at `http://addr` with `wrk`, a
/// process of its own with one thread: how SPEC §11's reference figures were measured.
/// `None` when `wrk` is not on PATH or its output cannot be read; `dir` holds its script.
pub fn drive_wrk(
    dir: &Path,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    (method, path, content_type, body): (&str, &str, &str, &[u8]),
) -> Option<Summary> {
    let body_file = dir.join("wrk-body");
    std::fs::write(&body_file, body).ok()?;
    // Long brackets quote the path whatever it holds; `done` prints one line to parse.
    let script = format!(
        r#"local f = assert(io.open([==[{}]==], "rb"))
wrk.method = "{method}"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
done = function(s, latency)
  local e = s.errors
  io.write(string.format("credbroker-bench %d %d %d %d %d\n", s.requests, s.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#,
        body_file.display()
    );
    let script_file = dir.join("wrk-script.lua");
    std::fs::write(&script_file, script).ok()?;
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script_file)
        .arg(format!("http://{addr}{path}"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("credbroker-bench "))?;
    let [requests, micros, failed, p50_us, p99_us] = line
        .split_whitespace()
        .map(|n| n.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?[..]
    else {
        return None;
    };
    let ok = requests.saturating_sub(failed);
    Some(Summary {
        ok: ok as usize,
        failed: failed as usize,
        rate: ok as f64 / (micros.max(1) as f64 / 1e6),
        p50_ms: p50_us as f64 / 1000.0,
        p99_ms: p99_us as f64 / 1000.0,
        spread: None,
    })
}

/// The p-th percentile (0..=100) of a sample, in the sample's unit.
pub fn percentile(sample: &[u32], p: f64) -> u32 {
    let mut sorted = sample.to_vec();
    sorted.sort_unstable();
    percentile_of_sorted(&sorted, p)
}

/// [`percentile`] of a sample already sorted.
fn percentile_of_sorted(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
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
    let per_conn = max_requests.div_ceil(connections);
    run_load(Client::OwnThread, duration, |deadline| {
        (0..connections)
            .map(|_| {
                let make = make_request.clone();
                let client = make_client();
                tokio::spawn(async move {
                    let mut tally = Tally::new(per_conn);
                    for i in 0..per_conn {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t = Instant::now();
                        tally.record(t, make(client.clone(), i).await);
                    }
                    tally
                })
            })
            .collect()
    })
}

/// Like [`drive`], with a minimal HTTP/1.1 client instead of reqwest: each connection
/// (from `connect`) writes prepared request bytes (connection `c`'s request `i` is
/// `requests[(c + i) % len]`, so that connections do not move through them in step)
/// and reads one response (status line, headers, `Content-Length` body). It costs
/// little CPU, as wrk does, so that on a 2-core machine the broker, not the load
/// generator, is what gets measured.
pub fn drive_raw<S, C, Fut>(
    client: Client<'_>,
    connections: usize,
    duration: Duration,
    max_requests: usize,
    connect: C,
    requests: Arc<Vec<Vec<u8>>>,
) -> LoadResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    let per_conn = max_requests.div_ceil(connections);
    run_load(client, duration, |deadline| {
        (0..connections)
            .map(|c| {
                let requests = requests.clone();
                let connecting = connect();
                tokio::spawn(async move {
                    let mut tally = Tally::new(per_conn);
                    let Ok(stream) = connecting.await else {
                        tally.failed += 1;
                        return tally;
                    };
                    let mut conn = RawConn::new(stream);
                    for i in 0..per_conn {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t = Instant::now();
                        let ok = matches!(
                            conn.round_trip(&requests[(c + i) % requests.len()]).await,
                            Ok(200..=299)
                        );
                        tally.record(t, ok);
                        if !ok {
                            break;
                        }
                    }
                    tally
                })
            })
            .collect()
    })
}

/// An HTTP/1.1 request, ready to write: `method path`, headers, body with its length.
pub fn http_request(method: &str, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// One keep-alive connection of [`drive_raw`].
struct RawConn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    fn new(stream: S) -> Self {
        RawConn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one request and reads its response; returns the status code.
    async fn round_trip(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        self.buf.clear();
        let (head_len, status, body_len) = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| bad("head"))?;
                let status = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("status line"))?;
                let body_len = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(|| bad("no content-length"))?;
                break (end + 4, status, body_len);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(bad("connection closed"));
            }
        };
        while self.buf.len() < head_len + body_len {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(bad("connection closed mid-body"));
            }
        }
        Ok(status)
    }
}

/// One connection's count of successes and failures, and its latencies.
struct Tally {
    ok: usize,
    failed: usize,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn new(expected: usize) -> Tally {
        Tally {
            ok: 0,
            failed: 0,
            latencies_us: Vec::with_capacity(expected.min(100_000)),
        }
    }

    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.ok += 1;
            self.latencies_us
                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            self.failed += 1;
        }
    }
}

/// Where the load generator's connection tasks run.
#[derive(Clone, Copy)]
pub enum Client<'a> {
    /// On the broker's own worker threads. On two cores with two workers, nothing else
    /// is runnable: as when the clients are on other machines, no thread of theirs
    /// preempts a worker to read each response.
    OnBrokerWorkers(&'a tokio::runtime::Handle),
    /// On a thread of its own, as `wrk` on the same machine: a third runnable thread on
    /// two cores, woken for nearly every response, preempting a broker worker to run.
    OwnThread,
}

impl Client<'_> {
    /// A short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Client::OnBrokerWorkers(_) => "workers",
            Client::OwnThread => "thread",
        }
    }
}

/// Runs the connection tasks that `spawn` starts (given the deadline) where `client`
/// says and sums their tallies.
fn run_load<F>(client: Client<'_>, duration: Duration, spawn: F) -> LoadResult
where
    F: FnOnce(Instant) -> Vec<tokio::task::JoinHandle<Tally>>,
{
    let load = async move {
        let start = Instant::now();
        let tasks = spawn(start + duration);
        let mut result = LoadResult {
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
            per_connection: Vec::with_capacity(tasks.len()),
        };
        for t in tasks {
            if let Ok(tally) = t.await {
                result.per_connection.push(tally.ok);
                result.ok += tally.ok;
                result.failed += tally.failed;
                result.latencies_us.extend(tally.latencies_us);
            }
        }
        result.elapsed = start.elapsed();
        result
    };
    match client {
        // The calling thread only waits for the tasks; they run on the workers.
        Client::OnBrokerWorkers(broker) => broker.block_on(load),
        Client::OwnThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("load")
            .enable_all()
            .build()
            .expect("client runtime")
            .block_on(load),
    }
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

/// Machine-wide CPU time, read from `/proc/stat` (Linux; `None` elsewhere).
///
/// On a shared VM the hypervisor takes time away ("steal") in bursts, which moves ops/s
/// from run to run by ±30 %; CPU time per operation moves far less. Benchmarks print it
/// beside the rates so that two runs, or a run and its ceiling, can be compared per unit
/// of CPU the machine really had.
#[derive(Clone, Copy)]
pub struct CpuTicks {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// What the machine did between two [`CpuTicks`].
pub struct CpuUse {
    /// CPU-seconds spent running anything (user, system, interrupts), on all cores.
    pub busy_seconds: f64,
    /// Shares of all CPU time that were idle, and stolen by the hypervisor.
    pub idle_share: f64,
    pub steal_share: f64,
}

impl CpuTicks {
    pub fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return None;
        };
        Some(CpuTicks {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// The use since `self`, `wall` being the time between the two samples.
    pub fn until(self, end: CpuTicks, wall: Duration) -> CpuUse {
        let busy = end.busy.saturating_sub(self.busy) as f64;
        let idle = end.idle.saturating_sub(self.idle) as f64;
        let steal = end.steal.saturating_sub(self.steal) as f64;
        let total = (busy + idle + steal).max(1.0);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        CpuUse {
            busy_seconds: busy / total * cores * wall.as_secs_f64(),
            idle_share: idle / total,
            steal_share: steal / total,
        }
    }
}

impl CpuUse {
    /// CPU microseconds per operation, `ops` operations having been done.
    pub fn micros_per(&self, ops: f64) -> f64 {
        1e6 * self.busy_seconds / ops.max(1.0)
    }
}

/// Runs `work` and reports what it returned together with the machine's CPU use meanwhile.
pub fn with_cpu<R>(work: impl FnOnce() -> R) -> (R, Option<CpuUse>) {
    let before = CpuTicks::now();
    let start = Instant::now();
    let result = work();
    let used = before
        .zip(CpuTicks::now())
        .map(|(b, e)| b.until(e, start.elapsed()));
    (result, used)
}

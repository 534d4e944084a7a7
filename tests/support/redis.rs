//! A throw-away `redis-server` for integration tests.
//!
//! `RedisServer::start()` runs `redis-server` from `PATH` on a free loopback port, without
//! persistence of its own, in a private temporary folder; it is killed when dropped.
//! `stop()` shuts it down after saving a snapshot into that folder and `restart()` brings it
//! back on the same port with the same data: an outage, not a data loss. `crash()` kills it
//! without saving. `start_tls()` also listens with TLS, for `rediss://`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for the server to answer or to exit.
const WAIT: Duration = Duration::from_secs(10);

/// A running (or stopped) `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:<port>/0`
    pub url: String,
    /// `rediss://127.0.0.1:<tls port>/0` when started with [`RedisServer::start_tls`].
    pub tls_url: Option<String>,
    dir: PathBuf,
    tls: Option<Tls>,
    child: Option<Child>,
}

/// PEM files for the TLS listener.
#[derive(Clone)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// Panics when `redis-server` is not on `PATH`: tests that need Redis never skip.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server that also accepts TLS (server certificate and key as PEM files;
    /// clients are not asked for a certificate) on a second free port.
    pub fn start_tls(tls: Tls) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Tls>) -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "credbroker-redis-{}-{port}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&dir).expect("create a temporary folder for redis-server");
            let tls_url = tls
                .as_ref()
                .map(|_| format!("rediss://127.0.0.1:{}/0", free_port()));
            let mut server = Self {
                port,
                url: format!("redis://127.0.0.1:{port}/0"),
                tls_url,
                dir,
                tls: tls.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                // Most likely another process took the port in the meantime: try another.
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// Shuts the server down, saving its data, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = command(self.port, &["SHUTDOWN", "SAVE"]);
            if !wait_exit(&mut child, WAIT) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kills the server without saving: everything it held is lost.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// Starts the server again on the same port (after `stop` or `crash`).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port may linger for a moment after the old process exits.
                Err(e) if Instant::now() >= deadline => panic!("redis-server did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--dbfilename", "dump.rdb"])
        .arg("--dir")
        .arg(&self.dir);
        if let (Some(tls), Some(url)) = (&self.tls, &self.tls_url) {
            let tls_port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .unwrap_or("");
            cmd.args(["--tls-port", tls_port, "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found on PATH: install it (apt-get install redis-server)")
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited at start ({status}) on port {port}"
                ));
            }
            if command(self.port, &["PING"]).is_ok_and(|reply| reply.starts_with("+PONG")) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {port} did not answer PING within {WAIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Sends one command in RESP and returns the first line of the reply.
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap_or(0);
    let _ = stream.shutdown(Shutdown::Both);
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

//! Runs the real `credbroker` binary and talks to it over real HTTPS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

pub const BIN: &str = env!("CARGO_BIN_EXE_credbroker");

/// Runs the binary to completion with the given arguments.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("CREDBROKER_LOG", "warn")
        .output()
        .expect("run credbroker")
}

/// A key set written by `credbroker keys generate` into a temporary folder.
pub struct KeyDir {
    pub dir: tempfile::TempDir,
}

impl KeyDir {
    pub fn generate() -> KeyDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run_cli(&["keys", "generate", "--out", dir.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "keys generate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        KeyDir { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.path("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn admin_token_sha256(&self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            self.admin_token().as_bytes(),
        ))
    }
}

/// The config header every test broker shares; tests append attestors and rules.
pub fn base_config(keys: &KeyDir, store: &str) -> String {
    format!(
        r#"trust_domain = "example.org"
issuer = "https://broker.test"

[server]
listen = "127.0.0.1:0"
tls_cert = "broker-tls.pem"
tls_key = "broker-tls.key"
listen_http = "127.0.0.1:0"
max_body = "16KiB"

[jwt]
signing_keys = ["jwt-es256.key"]
default_ttl = "5m"
max_ttl = "1h"
leeway = "30s"

[x509]
ca_cert = "ca.pem"
ca_key = "ca.key"

[revocation]
{store}

[admin]
token_sha256 = "{}"
"#,
        keys.admin_token_sha256()
    )
}

/// A `credbroker serve` process; killed on drop.
pub struct BrokerProcess {
    child: Child,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub config_path: PathBuf,
}

impl BrokerProcess {
    /// Writes `config` as `broker.toml` into the key folder and starts `serve`.
    pub fn start(keys: &KeyDir, config: &str) -> BrokerProcess {
        let path = keys.path("broker-test.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_with(&path)
    }

    pub fn start_with(config_path: &Path) -> BrokerProcess {
        Self::spawn(config_path, "warn", None)
    }

    /// Starts `serve` with logging at `level`, collecting everything it logs into `log`.
    pub fn start_logging(
        keys: &KeyDir,
        config: &str,
        level: &str,
        log: std::sync::Arc<std::sync::Mutex<String>>,
    ) -> BrokerProcess {
        let path = keys.path("broker-logged.toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn(&path, level, Some(log))
    }

    fn spawn(
        config_path: &Path,
        level: &str,
        log: Option<std::sync::Arc<std::sync::Mutex<String>>>,
    ) -> BrokerProcess {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", config_path.to_str().unwrap()])
            .env("CREDBROKER_LOG", level)
            .stdout(Stdio::piped())
            .stderr(if log.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn credbroker serve");
        if let (Some(log), Some(stderr)) = (log, child.stderr.take()) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        // Lines are read on a thread so a broker that hangs fails the test instead of hanging it.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(line.trim().to_string());
                line.clear();
            }
        });
        let wants_http = std::fs::read_to_string(config_path)
            .map(|c| c.lines().any(|l| l.trim_start().starts_with("listen_http")))
            .unwrap_or(false);
        let (mut https, mut http) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while (https.is_none() || (wants_http && http.is_none())) && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening https://") {
                        https = a.parse().ok();
                    } else if let Some(a) = line.strip_prefix("listening http://") {
                        http = a.parse().ok();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("credbroker serve exited before listening: {status}");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!("credbroker serve exited before listening: {status:?}");
                }
            }
        }
        let Some(https) = https else {
            let _ = child.kill();
            panic!("credbroker serve did not announce its HTTPS address within 20 s");
        };
        BrokerProcess {
            child,
            https,
            http,
            config_path: config_path.to_path_buf(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.http.expect("listen_http configured")
        )
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTPS client that trusts the key folder's CA, optionally presenting a client cert.
pub fn client(keys: &KeyDir, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(keys.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let tls = match identity {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A plain HTTP client (for `listen_http`).
pub fn plain_client() -> reqwest::Client {
    install_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The RFC 8693 token-exchange form for a JWT subject token.
pub fn exchange_form<'a>(token: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("subject_token", token),
    ];
    form.extend_from_slice(extra);
    form
}

/// Decodes a compact JWS segment (header or payload) as JSON, without verifying.
pub fn decode_segment(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(index).expect("segment");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

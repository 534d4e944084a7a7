//! The HTTP client of the client commands, and their retry policy.
//!
//! TLS is rustls with the ring provider (aws-lc-rs is never compiled in). A broker on a
//! private CA is trusted through `--ca-file`, which then *replaces* the public roots, as
//! `curl --cacert` does: a CI job that names its broker's CA should not also trust every
//! public CA for that connection. Without it the web PKI roots of `webpki-roots` are used,
//! so the binary needs no system trust store (it works in a distroless image too).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Time allowed to open a connection (TCP + TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one whole request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest PEM file read for a CA bundle or a client identity.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a client could not be built; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    /// A CA or identity file is missing, unreadable or holds no usable PEM.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// reqwest refused the configuration.
    #[error("HTTP client: {0}")]
    Build(String),
}

/// An HTTP client for talking to a broker (or a CI platform's token endpoint).
///
/// `ca_file` holds the PEM roots to trust instead of the public ones; `identity` is a PEM
/// certificate chain (leaf first) and its PKCS#8/SEC1/PKCS#1 key, presented for mTLS.
pub fn build(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<reqwest::Client, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_pem(path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| file_error(path, e))?;
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
            if roots.is_empty() {
                return Err(file_error(path, "no certificates in the file"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert_path, key_path)) => {
            let pem = read_pem(cert_path)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(cert_path, e))?;
            if chain.is_empty() {
                return Err(file_error(cert_path, "no certificates in the file"));
            }
            let key = PrivateKeyDer::from_pem_slice(&read_pem(key_path)?)
                .map_err(|_| file_error(key_path, "no PEM private key in the file"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientSetupError::Tls(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientSetupError::Build(e.to_string()))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ClientSetupError> {
    let file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(path, e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(file_error(path, "file too large for a PEM bundle"));
    }
    Ok(bytes)
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> ClientSetupError {
    ClientSetupError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// When to try a request again: bounded both in attempts and in total waiting.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Waiting between attempts never makes the whole exchange exceed this.
    pub budget: Duration,
    /// First backoff; doubled at each retry, with jitter.
    pub base_delay: Duration,
    /// Largest backoff between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts within 10 s: a CI step fails fast but rides out a broker restart.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            budget: Duration::from_secs(10),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

/// A request that failed without an HTTP response.
#[derive(Debug)]
pub struct SendError {
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, without the URL (callers name the endpoint themselves).
    pub reason: String,
    /// The TLS handshake failed (e.g. the server's CA is not trusted).
    pub tls: bool,
}

/// Sends the request built by `make` until it gets an answer worth returning.
///
/// Retried, with exponential backoff and jitter: connection failures (nothing reached the
/// server; but not a failed TLS handshake, which would fail the same way again) and HTTP 503 / 429 (the server asked us to come back; a `Retry-After` in seconds
/// is honoured — an attempt never comes earlier than asked, and when the wait would exceed
/// the budget we give up instead). Not retried: timeouts after the request was sent and
/// every other status, because the request may have had its effect (a join token is
/// consumed by the first attempt that reaches the broker).
pub async fn send_with_retry<F>(
    policy: RetryPolicy,
    mut make: F,
) -> Result<reqwest::Response, SendError>
where
    F: FnMut() -> reqwest::RequestBuilder,
{
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let last = attempt >= policy.max_attempts;
        let wait = match make().send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                if (status != 503 && status != 429) || last {
                    return Ok(response);
                }
                let asked = retry_after(&response);
                let wait = backoff(&policy, attempt).max(asked.unwrap_or_default());
                if started.elapsed() + wait > policy.budget {
                    return Ok(response);
                }
                wait
            }
            Err(e) => {
                let reason = describe(&e);
                let tls = is_tls_failure(&e);
                if !e.is_connect() || tls || last {
                    return Err(SendError {
                        attempts: attempt,
                        reason,
                        tls,
                    });
                }
                let wait = backoff(&policy, attempt);
                if started.elapsed() + wait > policy.budget {
                    return Err(SendError {
                        attempts: attempt,
                        reason,
                        tls,
                    });
                }
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Whether a connection failed in the TLS handshake (an untrusted certificate, a name
/// mismatch): trying again cannot help, so it is reported at once.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    // Bounded: error chains are short, and this never loops on a cyclic one.
    for _ in 0..16 {
        let Some(s) = source else { return false };
        if s.is::<rustls::Error>() {
            return true;
        }
        // An `io::Error` hides the error it wraps from `source()` (and may wrap another
        // `io::Error`): look inside.
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            source = io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        } else {
            source = s.source();
        }
    }
    false
}

/// `Retry-After` in delta-seconds; the HTTP-date form is ignored (backoff applies).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The wait before attempt `attempt + 1`: base · 2^(attempt-1), capped, then jittered
/// into its upper half so that a fleet of CI jobs does not retry in step.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(policy.max_delay);
    let mut byte = [0u8; 1];
    let fraction = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte)
    {
        Ok(()) => 0.5 + f64::from(byte[0]) / 510.0,
        Err(_) => 1.0,
    };
    exp.mul_f64(fraction)
}

/// A short reason for a failed request, without the URL.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    // The innermost cause says why (connection refused, certificate unknown, …).
    let mut source = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    if let Some(cause) = innermost {
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_into_its_upper_half() {
        let policy = RetryPolicy::default();
        for attempt in 1..=10 {
            let exp = policy
                .base_delay
                .saturating_mul(1 << (attempt - 1))
                .min(policy.max_delay);
            let wait = backoff(&policy, attempt);
            assert!(wait <= exp && wait >= exp / 2, "{attempt}: {wait:?}");
        }
        assert!(backoff(&policy, 40) <= policy.max_delay);
    }

    #[test]
    fn a_missing_ca_file_names_the_file() {
        let err = build(Some(Path::new("/nonexistent/ca.pem")), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}

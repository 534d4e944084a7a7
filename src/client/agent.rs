//! `credbroker agent`: mTLS client bootstrap and renewal on the workload side (SPEC §10).
//!
//! The key is generated here and never leaves the machine; the broker sees only a CSR.
//! The agent bootstraps with a platform token, a join token or an existing certificate,
//! writes `svid.pem`, `svid.key` (0600) and `bundle.pem` atomically, then renews over mTLS
//! with its current SVID at the broker's `refresh_after`, backing off with jitter when the
//! broker cannot be reached.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The SVID certificate chain (leaf first).
pub const SVID_FILE: &str = "svid.pem";
/// The SVID private key (mode 0600).
pub const KEY_FILE: &str = "svid.key";
/// The trust bundle (roots).
pub const BUNDLE_FILE: &str = "bundle.pem";
/// The projected service-account token `--attest kubernetes` reads by default.
pub const KUBERNETES_TOKEN: &str = "/var/run/secrets/tokens/credbroker";

/// First retry delay after a failure; doubled each time up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest an `--exec-on-rotate` command may run before it is killed.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-request timeout towards the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest token file read for `--attest file:`/`kubernetes`.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Why the agent failed. Never contains a token or key material.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("--attest: {0}")]
    Attest(String),
    #[error("cannot reach the broker: {0}")]
    Transport(String),
    #[error("the broker refused: {status} {error}: {description}")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    #[error("unexpected broker response: {0}")]
    Response(String),
    #[error("key or CSR generation failed: {0}")]
    Key(String),
}

impl AgentError {
    /// Whether retrying the same request can help (network, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Transport(_) => true,
            AgentError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// How the agent proves what it is for its first SVID.
#[derive(Clone, PartialEq, Eq)]
pub enum Attest {
    /// A Kubernetes projected service-account token file.
    Kubernetes(PathBuf),
    /// A one-time join token.
    JoinToken(String),
    /// A file holding a platform token (re-read on every use).
    File(PathBuf),
    /// An existing client certificate and key, presented over mTLS.
    Cert { cert: PathBuf, key: PathBuf },
}

impl std::fmt::Debug for Attest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attest::Kubernetes(p) => write!(f, "Kubernetes({})", p.display()),
            Attest::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Attest::File(p) => write!(f, "File({})", p.display()),
            Attest::Cert { cert, .. } => write!(f, "Cert({})", cert.display()),
        }
    }
}

impl std::str::FromStr for Attest {
    type Err = String;

    /// `kubernetes`, `kubernetes:PATH`, `join-token:T`, `file:PATH`, `cert:CERT,KEY`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "kubernetes" {
            return Ok(Attest::Kubernetes(PathBuf::from(KUBERNETES_TOKEN)));
        }
        let (kind, value) = s
            .split_once(':')
            .ok_or("use kubernetes, join-token:T, file:PATH or cert:CERT,KEY")?;
        if value.is_empty() {
            return Err(format!("{kind}: needs a value"));
        }
        match kind {
            "kubernetes" => Ok(Attest::Kubernetes(value.into())),
            "join-token" => Ok(Attest::JoinToken(value.to_string())),
            "file" => Ok(Attest::File(value.into())),
            "cert" => {
                let (cert, key) = value.split_once(',').ok_or("cert: use cert:CERT,KEY")?;
                Ok(Attest::Cert {
                    cert: cert.into(),
                    key: key.into(),
                })
            }
            other => Err(format!(
                "unknown attestation {other:?}; use kubernetes, join-token:T, file:PATH or cert:CERT,KEY"
            )),
        }
    }
}

/// Everything `credbroker agent` was told.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The broker's base URL (`https://…`).
    pub broker: String,
    /// PEM roots to trust for the broker's HTTPS certificate (default: the system's).
    pub ca_file: Option<PathBuf>,
    pub attest: Attest,
    pub out: PathBuf,
    /// Requested SVID lifetime.
    pub ttl: Option<Duration>,
    /// Bootstrap, write the files and exit.
    pub once: bool,
    /// Run through `sh -c` after each rotation.
    pub exec_on_rotate: Option<String>,
}

/// The §6.2 response.
#[derive(Debug, Clone, Deserialize)]
pub struct SvidResponse {
    pub spiffe_id: String,
    pub svid_chain: String,
    pub bundle: String,
    pub expires_at: String,
    pub refresh_after: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Runs the agent until `shutdown` resolves (or once, with `--once`).
pub async fn run(
    opts: AgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&opts.out).map_err(|e| file_err(&opts.out, e))?;
    tokio::pin!(shutdown);
    let mut current = bootstrap(&opts, &mut shutdown).await?;
    let Some(mut svid) = current.take() else {
        return Ok(()); // shut down before the first SVID
    };
    if opts.once {
        return Ok(());
    }
    loop {
        let wait = until(&svid.refresh_after);
        tracing::info!(spiffe_id = %svid.spiffe_id, renew_in = ?wait, "SVID written; waiting to renew");
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        let mut backoff = MIN_BACKOFF;
        loop {
            match renew(&opts).await {
                Ok(next) => {
                    svid = next;
                    break;
                }
                Err(e) => {
                    let expired = until(&svid.expires_at).is_zero();
                    tracing::warn!(error = %e, expired, "renewal failed; retrying");
                    if expired && !matches!(opts.attest, Attest::JoinToken(_)) {
                        // The SVID can no longer renew itself: attest afresh.
                        if let Ok(next) = issue(&opts, Credential::Bootstrap).await {
                            svid = next;
                            break;
                        }
                    }
                    let delay = jittered(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The first SVID: renew an existing valid one in `--out` (a restart), else attest.
/// Transient failures are retried with backoff; `None` when shut down meanwhile.
async fn bootstrap(
    opts: &AgentOptions,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Option<SvidResponse>, AgentError> {
    let mut backoff = MIN_BACKOFF;
    loop {
        let attempt = if existing_svid_valid(&opts.out) {
            match renew(opts).await {
                Ok(s) => Ok(s),
                Err(e) if e.is_transient() => Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "the SVID in --out cannot renew; attesting afresh");
                    issue(opts, Credential::Bootstrap).await
                }
            }
        } else {
            issue(opts, Credential::Bootstrap).await
        };
        match attempt {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.is_transient() && !opts.once => {
                tracing::warn!(error = %e, "bootstrap failed; retrying");
                let delay = jittered(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn renew(opts: &AgentOptions) -> Result<SvidResponse, AgentError> {
    issue(opts, Credential::CurrentSvid).await
}

/// Which credential a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// The `--attest` evidence.
    Bootstrap,
    /// The SVID in `--out`, over mTLS.
    CurrentSvid,
}

/// One issuance: new key, CSR, request, atomic writes, `--exec-on-rotate`.
async fn issue(opts: &AgentOptions, credential: Credential) -> Result<SvidResponse, AgentError> {
    let (key_pem, csr_pem) = tokio::task::spawn_blocking(new_key_and_csr)
        .await
        .map_err(|e| AgentError::Key(e.to_string()))??;
    let (identity, bearer) = match (credential, &opts.attest) {
        (Credential::CurrentSvid, _) => (
            Some((opts.out.join(SVID_FILE), opts.out.join(KEY_FILE))),
            None,
        ),
        (Credential::Bootstrap, Attest::Cert { cert, key }) => {
            (Some((cert.clone(), key.clone())), None)
        }
        (Credential::Bootstrap, Attest::JoinToken(t)) => (None, Some(t.clone())),
        (Credential::Bootstrap, Attest::Kubernetes(p) | Attest::File(p)) => {
            (None, Some(read_token(p)?))
        }
    };
    let client = http_client(opts.ca_file.as_deref(), identity.as_ref())?;
    let mut body = serde_json::json!({ "csr": csr_pem });
    if let Some(ttl) = opts.ttl {
        body["ttl"] = ttl.as_secs().max(1).into();
    }
    let url = format!("{}/v1/svid", opts.broker.trim_end_matches('/'));
    let mut request = client.post(&url).json(&body);
    if let Some(token) = &bearer {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| AgentError::Transport(error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| AgentError::Transport(error_chain(&e)))?;
    if !status.is_success() {
        let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        return Err(AgentError::Refused {
            status: status.as_u16(),
            error: body.as_ref().map_or("unknown".into(), |b| b.error.clone()),
            description: body.map(|b| b.error_description).unwrap_or_default(),
        });
    }
    let svid: SvidResponse =
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Response(e.to_string()))?;
    write_svid(&opts.out, &svid, &key_pem)?;
    if let Some(cmd) = &opts.exec_on_rotate {
        exec_on_rotate(cmd, &opts.out).await;
    }
    Ok(svid)
}

/// Writes the bundle, then the key, then the chain, each atomically; a reader that
/// reloads on `--exec-on-rotate` (or after `svid.pem` changes) sees a matching pair.
pub fn write_svid(out: &Path, svid: &SvidResponse, key_pem: &str) -> Result<(), AgentError> {
    write_atomic(&out.join(BUNDLE_FILE), svid.bundle.as_bytes(), 0o644)?;
    write_atomic(&out.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
    write_atomic(&out.join(SVID_FILE), svid.svid_chain.as_bytes(), 0o644)?;
    Ok(())
}

/// A file being replaced atomically: written to a temporary file in the same folder,
/// synced, then renamed over the target. Dropped without [`AtomicFile::commit`] (an
/// error, or a crash mid-write), the target is untouched and the temporary file removed.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<std::fs::File>,
}

impl AtomicFile {
    /// Starts replacing `target`; the new content gets `mode` (Unix permissions).
    pub fn create(target: &Path, mode: u32) -> Result<AtomicFile, AgentError> {
        let dir = target.parent().unwrap_or_else(|| Path::new("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut rnd = [0u8; 6];
        SystemRandom::new()
            .fill(&mut rnd)
            .map_err(|_| AgentError::Key("no randomness".into()))?;
        let temp = dir.join(format!(".{name}.tmp-{}", hex::encode(rnd)));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let file = options.open(&temp).map_err(|e| file_err(&temp, e))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// Appends bytes to the new content.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| file_err(&self.temp, "already committed"))?;
        file.write_all(bytes).map_err(|e| file_err(&self.temp, e))
    }

    /// Syncs the new content and renames it over the target (then syncs the folder).
    pub fn commit(mut self) -> Result<(), AgentError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| file_err(&self.temp, "already committed"))?;
        file.sync_all().map_err(|e| file_err(&self.temp, e))?;
        drop(file);
        std::fs::rename(&self.temp, &self.target).map_err(|e| file_err(&self.target, e))?;
        if let Some(dir) = self.target.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Replaces `target` with `bytes` atomically (temp file, fsync, rename).
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    let mut f = AtomicFile::create(target, mode)?;
    f.write(bytes)?;
    f.commit()
}

/// A new P-256 key (PKCS#8 PEM) and a CSR for it; the broker ignores the CSR's names.
pub fn new_key_and_csr() -> Result<(String, String), AgentError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// Whether `out` holds an SVID and key that are still valid for a while.
fn existing_svid_valid(out: &Path) -> bool {
    let Ok(pem) = std::fs::read(out.join(SVID_FILE)) else {
        return false;
    };
    if !out.join(KEY_FILE).exists() {
        return false;
    }
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() else {
        return false;
    };
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    cert.validity().not_after.timestamp() > OffsetDateTime::now_utc().unix_timestamp() + 5
}

fn read_token(path: &Path) -> Result<String, AgentError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    if meta.len() > MAX_TOKEN_FILE {
        return Err(file_err(path, "token file too large"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(file_err(path, "token file is empty"));
    }
    Ok(token.to_string())
}

/// An HTTPS client trusting `ca_file` (or the system roots), presenting `identity`.
pub fn http_client(
    ca_file: Option<&Path>,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<reqwest::Client, AgentError> {
    crate::tls::install_default_provider();
    let Some(ca_file) = ca_file else {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert).map_err(|e| file_err(cert, e))?;
            pem.extend(std::fs::read(key).map_err(|e| file_err(key, e))?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|_| file_err(cert, "not a PEM certificate and key"))?;
            builder = builder.identity(id);
        }
        return builder
            .build()
            .map_err(|e| AgentError::Transport(error_chain(&e)));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = crate::tls::load_certs(ca_file).map_err(|e| file_err(ca_file, e))?;
    for c in certs {
        roots.add(c).map_err(|e| file_err(ca_file, e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Transport(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match identity {
        Some((cert, key)) => {
            let chain = crate::tls::load_certs(cert).map_err(|e| file_err(cert, e))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| file_err(key, "not a PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_err(cert, e))?
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| AgentError::Transport(error_chain(&e)))
}

async fn exec_on_rotate(cmd: &str, out: &Path) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("CREDBROKER_SVID_DIR", out)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "--exec-on-rotate could not start");
            return;
        }
    };
    match tokio::time::timeout(EXEC_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(%status, "--exec-on-rotate command failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "--exec-on-rotate command failed"),
        Err(_) => tracing::warn!("--exec-on-rotate command timed out and was killed"),
    }
}

/// How long until an RFC 3339 time (zero when past or unparsable).
fn until(rfc3339: &str) -> Duration {
    let Ok(t) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return Duration::ZERO;
    };
    let d = t - OffsetDateTime::now_utc();
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// `base` ± up to 50 %, so a fleet that failed together does not retry together.
fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if SystemRandom::new().fill(&mut b).is_ok() {
        u16::from_le_bytes(b) as f64 / u16::MAX as f64
    } else {
        0.5
    };
    base.mul_f64(0.5 + r)
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        if depth >= 4 {
            break;
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
        depth += 1;
    }
    text
}

//! `credbroker token`: a CI step swaps its platform token for a scoped broker credential.
//!
//! Three steps, each with its own failure class so that a pipeline can tell them apart by
//! exit code: get the platform token ([`fetch_subject_token`], exit 5 when it cannot be
//! had), exchange it at `/v1/token` ([`exchange`]; a refusal is exit 3, a broker that
//! cannot be reached or is unavailable exit 4), and print the credential ([`render`],
//! [`append_github_env`]). Tokens are carried in [`Secret`], whose `Debug` never shows
//! them, and no error message ever contains one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::http::{RetryPolicy, SendError, send_with_retry};
use crate::attest::join_token::JOIN_TOKEN_TYPE;
use crate::http::token::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};

/// Exit codes of `credbroker token` (documented in `docs/readme-ci.md`).
pub mod exit {
    /// Anything else: an unusable broker response, output that cannot be written.
    pub const FAILURE: u8 = 1;
    /// Bad usage: a wrong flag or value (clap reports most of them with the same code).
    pub const USAGE: u8 = 2;
    /// The broker refused the exchange (any 4xx but 429): attestation or policy denied.
    pub const DENIED: u8 = 3;
    /// The broker could not be reached, or stayed unavailable (5xx, 503/429) after retries.
    pub const UNAVAILABLE: u8 = 4;
    /// The platform token could not be had (missing variable or file, CI endpoint failure).
    pub const PLATFORM_TOKEN: u8 = 5;
}

/// The default projected service-account token path (see `examples/kubernetes/`).
pub const KUBERNETES_TOKEN_FILE: &str = "/var/run/secrets/tokens/credbroker";
/// The default GitLab `id_tokens` variable.
pub const GITLAB_VARIABLE: &str = "CREDBROKER_ID_TOKEN";
/// The default audience requested from GitHub's OIDC endpoint.
pub const PLATFORM_AUDIENCE: &str = "credbroker";
/// Largest platform token read from a file or variable (real ones are a few KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Largest broker or CI-endpoint response body read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// A token; its `Debug` is redacted so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Secret(token.into())
    }

    /// The token itself, for the one place that must send or print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where the platform token comes from (`--from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// GitHub Actions' OIDC endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL` / `_TOKEN`).
    GithubActions,
    /// A GitLab CI `id_tokens` variable.
    Gitlab,
    /// A projected Kubernetes service-account token file.
    Kubernetes,
    /// A file holding a JWT (or a join token).
    File(PathBuf),
    /// An environment variable holding a JWT (or a join token).
    Env(String),
    /// A one-time join token given on the command line.
    JoinToken(Secret),
}

impl Source {
    /// Parses `--from`. The error never repeats the value, which may hold a join token.
    pub fn parse(text: &str) -> Result<Source, TokenError> {
        let usage = || {
            TokenError::Usage(
                "--from must be github-actions, gitlab, kubernetes, file:PATH, env:VAR or join-token:TOKEN"
                    .into(),
            )
        };
        match text {
            "github-actions" => return Ok(Source::GithubActions),
            "gitlab" => return Ok(Source::Gitlab),
            "kubernetes" => return Ok(Source::Kubernetes),
            _ => {}
        }
        let (kind, value) = text.split_once(':').ok_or_else(usage)?;
        if value.is_empty() {
            return Err(TokenError::Usage(format!(
                "--from {kind}: needs a value after the colon"
            )));
        }
        match kind {
            "file" => Ok(Source::File(PathBuf::from(value))),
            "env" => Ok(Source::Env(value.to_string())),
            "join-token" => Ok(Source::JoinToken(Secret::new(value.trim()))),
            _ => Err(usage()),
        }
    }
}

/// Settings of the platform-token sources.
#[derive(Debug, Clone)]
pub struct PlatformOptions {
    /// The `audience` asked of GitHub's OIDC endpoint.
    pub platform_audience: String,
    /// The GitLab `id_tokens` variable.
    pub gitlab_var: String,
    /// The projected Kubernetes token file.
    pub token_file: PathBuf,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        PlatformOptions {
            platform_audience: PLATFORM_AUDIENCE.into(),
            gitlab_var: GITLAB_VARIABLE.into(),
            token_file: PathBuf::from(KUBERNETES_TOKEN_FILE),
        }
    }
}

/// The token presented to the broker, with its RFC 8693 `subject_token_type`.
#[derive(Debug, Clone)]
pub struct SubjectToken {
    /// The token.
    pub token: Secret,
    /// `urn:ietf:params:oauth:token-type:jwt` or the join-token type.
    pub token_type: &'static str,
}

impl SubjectToken {
    /// A JWT from `file:`/`env:` is sent as a JWT; anything that is not a compact JWS
    /// (three dot-separated parts) as a join token, so a join token need not be put on
    /// the command line, where other users of the machine could read it.
    fn detect(token: String) -> SubjectToken {
        let token_type = if token.split('.').count() == 3 {
            TOKEN_TYPE_JWT
        } else {
            JOIN_TOKEN_TYPE
        };
        SubjectToken {
            token: Secret(token),
            token_type,
        }
    }

    fn jwt(token: String) -> SubjectToken {
        SubjectToken {
            token: Secret(token),
            token_type: TOKEN_TYPE_JWT,
        }
    }
}

/// What is asked of the broker.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `audience` parameters (repeated).
    pub audiences: Vec<String>,
    /// Scopes, sent space-separated in one `scope` parameter.
    pub scopes: Vec<String>,
    /// Requested lifetime, sent as whole seconds in `ttl`.
    pub ttl: Option<Duration>,
}

/// A credential the broker issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT.
    pub access_token: Secret,
    /// The whole token response, as the broker sent it.
    pub response: Value,
}

/// Why `credbroker token` failed; [`TokenError::exit_code`] maps it to the documented code.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A flag or its value is wrong.
    #[error("{0}")]
    Usage(String),
    /// The platform token could not be obtained.
    #[error("no platform token: {0}")]
    PlatformToken(String),
    /// The broker answered with a refusal.
    #[error("the broker refused the exchange (HTTP {status} {error}): {description}")]
    Denied {
        status: u16,
        error: String,
        description: String,
    },
    /// The broker could not be reached or stayed unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl TokenError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            TokenError::Usage(_) => exit::USAGE,
            TokenError::PlatformToken(_) => exit::PLATFORM_TOKEN,
            TokenError::Denied { .. } => exit::DENIED,
            TokenError::Unavailable(_) => exit::UNAVAILABLE,
            TokenError::Other(_) => exit::FAILURE,
        }
    }
}

/// The `/v1/token` URL of a broker base URL (`https://host:port[/prefix]`).
pub fn token_endpoint(broker: &str) -> Result<reqwest::Url, TokenError> {
    let base = broker.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}/v1/token"))
        .map_err(|e| TokenError::Usage(format!("--broker {base:?} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(TokenError::Usage(format!(
            "--broker {base:?} must be an http:// or https:// URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(TokenError::Usage(
            "--broker must be a base URL without credentials, query or fragment".into(),
        ));
    }
    Ok(url)
}

/// Obtains the platform token from `source`.
///
/// `ci_client` is used for GitHub's OIDC endpoint only (it is on the public web PKI,
/// whatever CA the broker uses).
pub async fn fetch_subject_token(
    source: &Source,
    options: &PlatformOptions,
    ci_client: &reqwest::Client,
) -> Result<SubjectToken, TokenError> {
    match source {
        Source::GithubActions => github_actions_token(ci_client, &options.platform_audience)
            .await
            .map(SubjectToken::jwt),
        Source::Gitlab => {
            let hint = format!(
                "add `id_tokens: {0}: aud: credbroker` to the job, or name the variable with --gitlab-var",
                options.gitlab_var
            );
            read_env(&options.gitlab_var, &hint).map(SubjectToken::jwt)
        }
        Source::Kubernetes => read_file(
            &options.token_file,
            "mount a projected service-account token there (audience credbroker), or name the file with --token-file",
        )
        .await
        .map(SubjectToken::jwt),
        Source::File(path) => read_file(path, "").await.map(SubjectToken::detect),
        Source::Env(name) => read_env(name, "").map(SubjectToken::detect),
        Source::JoinToken(token) => Ok(SubjectToken {
            token: token.clone(),
            token_type: JOIN_TOKEN_TYPE,
        }),
    }
}

fn read_env(name: &str, hint: &str) -> Result<String, TokenError> {
    let value = std::env::var(name).unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        return Err(TokenError::PlatformToken(format!(
            "environment variable {name} is not set or empty{hint}"
        )));
    }
    if value.len() as u64 > MAX_TOKEN_BYTES {
        return Err(TokenError::PlatformToken(format!(
            "environment variable {name} is too large for a token"
        )));
    }
    Ok(value.to_string())
}

async fn read_file(path: &Path, hint: &str) -> Result<String, TokenError> {
    let with_hint = |reason: String| {
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        TokenError::PlatformToken(format!("{}: {reason}{hint}", path.display()))
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| with_hint(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| with_hint(e.to_string()))?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(with_hint("too large for a token".into()));
    }
    let text = String::from_utf8(bytes).map_err(|_| with_hint("not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(with_hint("the file is empty".into()));
    }
    Ok(token.to_string())
}

/// Requests the job's OIDC token the way GitHub documents it: GET the request URL with an
/// `audience` query parameter added, `Authorization: Bearer <request token>`, JSON `value`.
async fn github_actions_token(
    client: &reqwest::Client,
    audience: &str,
) -> Result<String, TokenError> {
    let hint = "does the job have `permissions: id-token: write`?";
    let url = std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL").unwrap_or_default();
    let bearer = std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN").unwrap_or_default();
    if url.is_empty() || bearer.is_empty() {
        return Err(TokenError::PlatformToken(format!(
            "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN must be set ({hint})"
        )));
    }
    let mut url = reqwest::Url::parse(&url).map_err(|_| {
        TokenError::PlatformToken("ACTIONS_ID_TOKEN_REQUEST_URL is not a valid URL".into())
    })?;
    // The URL GitHub gives already has a query string; `append_pair` adds `&audience=`
    // to it (or starts one with `?`), percent-encoding the value.
    url.query_pairs_mut().append_pair("audience", audience);
    let endpoint = "GitHub's OIDC token endpoint";
    let response = send_with_retry(RetryPolicy::default(), || {
        client
            .get(url.clone())
            .bearer_auth(&bearer)
            .header(reqwest::header::ACCEPT, "application/json")
    })
    .await
    .map_err(|e| TokenError::PlatformToken(format!("{endpoint}: {}", e.reason)))?;
    let status = response.status();
    let body = read_body(response)
        .await
        .map_err(|e| TokenError::PlatformToken(format!("{endpoint}: {e}")))?;
    if !status.is_success() {
        return Err(TokenError::PlatformToken(format!(
            "{endpoint} answered HTTP {} ({hint})",
            status.as_u16()
        )));
    }
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("value").and_then(Value::as_str).map(str::to_string))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            TokenError::PlatformToken(format!("{endpoint} returned no token in `value`"))
        })
}

/// Exchanges the subject token at the broker (RFC 8693 token exchange).
pub async fn exchange(
    client: &reqwest::Client,
    endpoint: &reqwest::Url,
    subject: &SubjectToken,
    request: &TokenRequest,
    policy: RetryPolicy,
) -> Result<Issued, TokenError> {
    let mut form: Vec<(&str, String)> = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE.into()),
        ("subject_token_type", subject.token_type.into()),
        ("subject_token", subject.token.expose().into()),
    ];
    for audience in &request.audiences {
        form.push(("audience", audience.clone()));
    }
    if !request.scopes.is_empty() {
        form.push(("scope", request.scopes.join(" ")));
    }
    if let Some(ttl) = request.ttl {
        form.push(("ttl", ttl.as_secs().to_string()));
    }
    let broker = broker_name(endpoint);
    let response = send_with_retry(policy, || {
        client
            .post(endpoint.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
    })
    .await
    .map_err(
        |SendError {
             attempts,
             reason,
             tls,
         }| {
            let tries = if attempts == 1 {
                "1 attempt".to_string()
            } else {
                format!("{attempts} attempts")
            };
            let hint = if tls {
                " (for a broker on a private CA, pass --ca-file)"
            } else {
                ""
            };
            TokenError::Unavailable(format!(
                "cannot reach the broker at {broker} ({tries}): {reason}{hint}"
            ))
        },
    )?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("; retry after {}s", scrub(v, &[])));
    let body = read_body(response).await.map_err(|e| {
        TokenError::Unavailable(format!(
            "the broker at {broker} answered HTTP {status} but the body could not be read: {e}"
        ))
    })?;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let secrets = [subject.token.expose()];
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(|s| scrub(s, &secrets))
    };
    match status {
        200 => {
            let response = json.ok_or_else(|| {
                TokenError::Other(format!("the broker at {broker} answered 200 without JSON"))
            })?;
            let token = response
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    TokenError::Other(format!(
                        "the broker at {broker} answered without a usable access_token"
                    ))
                })?;
            Ok(Issued {
                access_token: Secret::new(token),
                response,
            })
        }
        429 | 500..=599 => {
            let what = match (field("error"), field("error_description")) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e,
                _ => "no description".into(),
            };
            Err(TokenError::Unavailable(format!(
                "the broker at {broker} is unavailable (HTTP {status}, {what}{})",
                retry_after.unwrap_or_default()
            )))
        }
        400..=499 => Err(TokenError::Denied {
            status,
            error: field("error").unwrap_or_else(|| "error".into()),
            description: field("error_description")
                .unwrap_or_else(|| format!("no error description (is {broker} a credbroker?)")),
        }),
        _ => Err(TokenError::Other(format!(
            "the broker at {broker} answered HTTP {status}"
        ))),
    }
}

/// The broker's origin, for messages (never a path or query).
fn broker_name(endpoint: &reqwest::Url) -> String {
    endpoint.origin().ascii_serialization()
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| super::http::describe(&e))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("response too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Makes server-provided text safe for one line of stderr: no control characters, no
/// token we sent (should a server echo one), bounded length.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        text = text.replace(secret, "[redacted]");
    }
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    if text.chars().count() > 500 {
        line.push('…');
    }
    line
}

/// Output formats (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The token alone.
    Raw,
    /// The broker's token response.
    Json,
    /// `NAME=<token>`.
    Env,
    /// Appended to `$GITHUB_ENV`, with `::add-mask::` on stdout.
    GithubEnv,
}

/// Whether `name` is a portable environment variable name.
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What `format` prints on stdout (each line newline-terminated).
pub fn render(format: Format, env_name: &str, issued: &Issued) -> String {
    let token = issued.access_token.expose();
    match format {
        Format::Raw => format!("{token}\n"),
        Format::Json => format!("{}\n", issued.response),
        Format::Env => format!("{env_name}={token}\n"),
        // The workflow command that makes the runner mask the token in every later log line.
        Format::GithubEnv => format!("::add-mask::{token}\n"),
    }
}

/// Appends `NAME=<token>` to the `$GITHUB_ENV` file, so later steps see the variable.
///
/// The token is checked to be one printable line before (a newline would let a broker
/// inject other variables), and a file whose last line is unterminated gets a newline first.
pub fn append_github_env(path: &Path, name: &str, token: &Secret) -> Result<(), TokenError> {
    use std::io::{Seek, SeekFrom, Write};
    let fail = |e: std::io::Error| TokenError::Other(format!("{}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(fail)?;
    let len = file.seek(SeekFrom::End(0)).map_err(fail)?;
    let mut prefix = "";
    if len > 0 {
        use std::io::Read;
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1)).map_err(fail)?;
        file.read_exact(&mut last).map_err(fail)?;
        if last[0] != b'\n' {
            prefix = "\n";
        }
    }
    let line = format!("{prefix}{name}={}\n", token.expose());
    file.write_all(line.as_bytes()).map_err(fail)?;
    file.flush().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parses_every_source_and_never_echoes_the_value() {
        assert_eq!(
            Source::parse("github-actions").ok(),
            Some(Source::GithubActions)
        );
        assert_eq!(Source::parse("gitlab").ok(), Some(Source::Gitlab));
        assert_eq!(Source::parse("kubernetes").ok(), Some(Source::Kubernetes));
        assert_eq!(
            Source::parse("file:/a/b:c").ok(),
            Some(Source::File("/a/b:c".into()))
        );
        assert_eq!(Source::parse("env:X").ok(), Some(Source::Env("X".into())));
        assert_eq!(
            Source::parse("join-token:s3cr3t").ok(),
            Some(Source::JoinToken(Secret::new("s3cr3t")))
        );
        for bad in ["join-tokn:s3cr3t-value", "s3cr3t-value", "env:", "file:"] {
            let err = Source::parse(bad).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(!err.is_empty(), "{bad} must be refused");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        assert_eq!(
            format!("{:?}", Source::JoinToken(Secret::new("s3cr3t"))),
            "JoinToken(Secret([redacted]))"
        );
    }

    #[test]
    fn token_endpoint_appends_the_path_and_refuses_odd_urls() {
        let url = |s| token_endpoint(s).map(|u| u.to_string()).ok();
        assert_eq!(
            url("https://b.example:8443").as_deref(),
            Some("https://b.example:8443/v1/token")
        );
        assert_eq!(
            url("http://127.0.0.1:8080/").as_deref(),
            Some("http://127.0.0.1:8080/v1/token")
        );
        assert_eq!(
            url("https://b.example/prefix").as_deref(),
            Some("https://b.example/prefix/v1/token")
        );
        for bad in ["ftp://b", "b.example", "https://u:p@b", "https://b/?x=1"] {
            assert!(url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn subject_type_is_detected_for_file_and_env() {
        assert_eq!(
            SubjectToken::detect("a.b.c".into()).token_type,
            TOKEN_TYPE_JWT
        );
        assert_eq!(
            SubjectToken::detect("Zm9vYmFy-_x".into()).token_type,
            JOIN_TOKEN_TYPE
        );
    }

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("CREDBROKER_TOKEN"));
        assert!(valid_env_name("_x1"));
        for bad in ["", "1A", "A-B", "A=B", "A B", "A\nB"] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn scrub_removes_controls_and_echoed_secrets() {
        let s = scrub("bad\ntoken abcdefghijk here\x1b[31m", &["abcdefghijk"]);
        assert_eq!(s, "bad token [redacted] here [31m");
        assert!(scrub(&"x".repeat(2000), &[]).chars().count() <= 501);
    }

    #[test]
    fn github_env_is_appended_on_a_line_of_its_own() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let path = dir.path().join("env");
        let _ = std::fs::write(&path, "A=1");
        assert!(append_github_env(&path, "T", &Secret::new("x.y.z")).is_ok());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            "A=1\nT=x.y.z\n"
        );
    }
}

//! `broker.toml` → a typed, validated [`Config`].
//!
//! Parsing happens once, at start-up; everything after works with checked values.
//! Every error names the file, the table and the key, and the broker refuses to start.

pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::identity::{SpiffeId, TrustDomain};

/// The longest lifetime any credential may have (SPEC §4).
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);
/// The widest clock-skew allowance an attestor may configure (SPEC §3).
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// A config that cannot be used, with where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: [{table}] {key}: {message}")]
    Invalid {
        path: PathBuf,
        table: String,
        key: String,
        message: String,
    },
}

/// A duration as written in the config (`"30s"`, `"5m"`, `"1h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        units::parse_duration(&text)
            .map(Dur)
            .map_err(de::Error::custom)
    }
}

/// A byte size as written in the config (`"64KiB"`), or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(t) => units::parse_size(&t).map(Size).map_err(de::Error::custom),
        }
    }
}

/// One string or a list of strings (`attestor = "a"` or `attestor = ["a", "b"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a slice-like vector.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The whole broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for error messages).
    pub path: PathBuf,
    pub trust_domain: TrustDomain,
    /// The `iss` of every JWT and the base of discovery URLs.
    pub issuer: String,
    pub server: ServerConfig,
    pub jwt: JwtConfig,
    pub x509: X509Config,
    pub revocation: RevocationConfig,
    pub admin: AdminConfig,
    pub attestors: Vec<AttestorConfig>,
    pub rules: Vec<RuleConfig>,
    /// `dev` mode: relaxed authentication for introspection, loud banners.
    pub dev: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    issuer: String,
    server: ServerConfig,
    jwt: JwtConfig,
    #[serde(default)]
    x509: Option<X509Config>,
    #[serde(default)]
    revocation: RevocationConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default, rename = "attestor")]
    attestors: Vec<AttestorConfig>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    dev: bool,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTPS listener (rustls). Optional only when `listen_http` is set.
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP listener: no mTLS attestation on it.
    #[serde(default)]
    pub listen_http: Option<SocketAddr>,
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    /// Largest accepted request head (request line + headers).
    #[serde(default = "default_max_header")]
    pub max_header: Size,
    /// Requests served concurrently before new ones wait.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Log format: `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
}

fn default_max_body() -> Size {
    Size(64 * 1024)
}
fn default_max_header() -> Size {
    Size(16 * 1024)
}
fn default_max_concurrency() -> usize {
    4096
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[jwt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// PKCS#8 PEM files; the first signs, all are published in the JWKS.
    pub signing_keys: Vec<PathBuf>,
    #[serde(default = "default_jwt_ttl")]
    pub default_ttl: Dur,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Dur,
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
}

fn default_jwt_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_x509_ttl() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_max_ttl() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}

/// `[x509]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509Config {
    /// The issuing CA certificate (a root, or an intermediate followed by its chain).
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Roots handed to workloads; defaults to the last certificate of `ca_cert`.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    #[serde(default = "default_x509_ttl")]
    pub default_ttl: Dur,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Dur,
    /// CRL `nextUpdate` distance.
    #[serde(default = "default_crl_next_update")]
    pub crl_next_update: Dur,
}

fn default_crl_next_update() -> Dur {
    Dur(Duration::from_secs(300))
}

/// Where revocations, join tokens, inventory and audit live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Redis,
    Memory,
}

/// `[revocation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    #[serde(default)]
    pub store: StoreKind,
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_max_staleness")]
    pub max_staleness: Dur,
    #[serde(default)]
    pub fail_open: bool,
    /// Revocation events kept in the stream for mirrors that reconnect.
    #[serde(default = "default_stream_max_len")]
    pub stream_max_len: usize,
    /// Audit events kept in the audit stream.
    #[serde(default = "default_audit_max_len")]
    pub audit_max_len: usize,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Redis,
            redis_url: None,
            key_prefix: default_key_prefix(),
            max_staleness: default_max_staleness(),
            fail_open: false,
            stream_max_len: default_stream_max_len(),
            audit_max_len: default_audit_max_len(),
        }
    }
}

fn default_key_prefix() -> String {
    "credbroker:".into()
}
fn default_max_staleness() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_stream_max_len() -> usize {
    100_000
}
fn default_audit_max_len() -> usize {
    100_000
}

/// `[admin]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Lowercase hex SHA-256 of the admin token's UTF-8 bytes.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// SPIFFE IDs that are admins when they present their SVID over mTLS.
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
}

/// The kinds of `[[attestor]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestorKind {
    Jwt,
    Mtls,
    JoinToken,
    /// Built in: a credential this broker issued.
    Svid,
}

impl AttestorKind {
    /// The name used in config and in the `att` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestorKind::Jwt => "jwt",
            AttestorKind::Mtls => "mtls",
            AttestorKind::JoinToken => "join_token",
            AttestorKind::Svid => "svid",
        }
    }
}

impl fmt::Display for AttestorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One-time use policy for platform tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPolicy {
    #[default]
    Allow,
    Reject,
}

/// `[[attestor]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestorConfig {
    pub name: String,
    pub kind: AttestorKind,
    /// Fills issuer and JWKS URL for a known platform (`github-actions`, `gitlab`).
    #[serde(default)]
    pub preset: Option<String>,
    // --- kind = "jwt"
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Inline JWKS: a JSON string or a TOML table.
    #[serde(default)]
    pub jwks: Option<InlineJwks>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub max_token_age: Option<Dur>,
    #[serde(default)]
    pub replay: ReplayPolicy,
    /// Claim naming the attested subject (for `src` and revocation by source).
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// Shortest interval between two JWKS fetches triggered by unknown `kid`s.
    #[serde(default)]
    pub jwks_refresh_cooldown: Option<Dur>,
    /// How long a fetched JWKS is used before it is fetched again.
    #[serde(default)]
    pub jwks_cache_ttl: Option<Dur>,
    /// Extra PEM roots for fetching `jwks_url` from a private CA.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    // --- kind = "mtls"
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

/// An inline JWKS in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum InlineJwks {
    Json(String),
    Table(serde_json::Value),
}

/// Which credential types a rule may issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialType {
    Jwt,
    X509,
}

impl CredentialType {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Jwt => "jwt",
            CredentialType::X509 => "x509",
        }
    }
}

/// One `match` condition as written: a string (exact or glob) or a list of alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawCondition {
    One(String),
    Any(Vec<String>),
}

/// `[[rule]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub attestor: OneOrMany,
    #[serde(default)]
    pub owner: Option<String>,
    pub spiffe_id: String,
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, RawCondition>,
    #[serde(default = "default_credentials")]
    pub credentials: Vec<CredentialType>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    #[serde(default)]
    pub max_ttl: Option<Dur>,
    #[serde(default)]
    pub source_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub rate: Option<String>,
    #[serde(default = "default_true")]
    pub bind_to_certificate: bool,
    /// SPIFFE IDs that may act for this identity through token exchange (SPEC §6.3).
    #[serde(default)]
    pub delegate: Vec<String>,
    /// SPIFFE IDs whose presence anywhere in a delegation chain refuses the request.
    #[serde(default)]
    pub deny_in_chain: Vec<String>,
}

fn default_credentials() -> Vec<CredentialType> {
    vec![CredentialType::Jwt]
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` locates relative file names and errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Validator { path, base: &base }.validate(raw)
    }

    /// The longest lifetime any credential can have under this config, plus the leeway:
    /// how long a revocation entry must be kept when nothing better is known.
    pub fn longest_credential_life(&self) -> Duration {
        self.jwt.max_ttl.0.max(self.x509.max_ttl.0) + self.jwt.leeway.0
    }

    /// The attestor called `name`.
    pub fn attestor(&self, name: &str) -> Option<&AttestorConfig> {
        self.attestors.iter().find(|a| a.name == name)
    }
}

struct Validator<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Validator<'_> {
    fn err(&self, table: impl Into<String>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            table: table.into(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let trust_domain = TrustDomain::parse(&raw.trust_domain)
            .map_err(|e| self.err("top level", "trust_domain", e.to_string()))?;
        if !(raw.issuer.starts_with("https://") || raw.issuer.starts_with("http://")) {
            return Err(self.err("top level", "issuer", "must be an http(s) URL"));
        }
        let issuer = raw.issuer.trim_end_matches('/').to_string();

        let mut server = raw.server;
        if server.listen.is_none() && server.listen_http.is_none() {
            return Err(self.err(
                "server",
                "listen",
                "set `listen` (HTTPS), `listen_http`, or both",
            ));
        }
        if server.listen.is_some() {
            let cert = server.tls_cert.as_ref().ok_or_else(|| {
                self.err(
                    "server",
                    "tls_cert",
                    "required when `listen` (HTTPS) is set",
                )
            })?;
            let key = server.tls_key.as_ref().ok_or_else(|| {
                self.err("server", "tls_key", "required when `listen` (HTTPS) is set")
            })?;
            server.tls_cert = Some(self.resolve(cert));
            server.tls_key = Some(self.resolve(key));
        }
        if server.max_body.0 == 0 {
            return Err(self.err("server", "max_body", "must be positive"));
        }

        let mut jwt = raw.jwt;
        if jwt.signing_keys.is_empty() {
            return Err(self.err(
                "jwt",
                "signing_keys",
                "at least one signing key is required",
            ));
        }
        jwt.signing_keys = jwt.signing_keys.iter().map(|p| self.resolve(p)).collect();
        self.check_ttls("jwt", jwt.default_ttl, jwt.max_ttl, MAX_CREDENTIAL_TTL)?;
        if jwt.leeway.0 > MAX_LEEWAY {
            return Err(self.err("jwt", "leeway", "must be at most 60s"));
        }

        let x509 = match raw.x509 {
            Some(mut x) => {
                x.ca_cert = self.resolve(&x.ca_cert);
                x.ca_key = self.resolve(&x.ca_key);
                x.bundle = x.bundle.as_ref().map(|b| self.resolve(b));
                self.check_ttls("x509", x.default_ttl, x.max_ttl, MAX_CREDENTIAL_TTL)?;
                Some(x)
            }
            None => None,
        };

        let revocation = raw.revocation;
        if revocation.store == StoreKind::Redis && revocation.redis_url.is_none() {
            return Err(self.err("revocation", "redis_url", "required when store = \"redis\""));
        }
        if let Some(url) = &revocation.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
        {
            return Err(self.err(
                "revocation",
                "redis_url",
                "must be a redis:// or rediss:// URL",
            ));
        }

        let admin = raw.admin;
        if let Some(h) = &admin.token_sha256
            && !(h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(self.err(
                "admin",
                "token_sha256",
                "must be 64 lowercase hex digits (sha256 of the token)",
            ));
        }
        for id in &admin.spiffe_ids {
            SpiffeId::parse(id)
                .map_err(|e| self.err("admin", "spiffe_ids", format!("{id:?}: {e}")))?;
        }

        let mut names = HashSet::new();
        let mut attestors = Vec::with_capacity(raw.attestors.len());
        for (i, mut a) in raw.attestors.into_iter().enumerate() {
            let table = format!("attestor #{} ({:?})", i + 1, a.name);
            if a.name.is_empty() {
                return Err(self.err(table, "name", "must not be empty"));
            }
            if a.name == "svid" || a.kind == AttestorKind::Svid {
                return Err(self.err(
                    table,
                    "name",
                    "\"svid\" is built in and cannot be configured",
                ));
            }
            if !names.insert(a.name.clone()) {
                return Err(self.err(table, "name", "duplicate attestor name"));
            }
            a.jwks_file = a.jwks_file.as_ref().map(|p| self.resolve(p));
            a.ca_bundle = a.ca_bundle.as_ref().map(|p| self.resolve(p));
            a.jwks_ca_file = a.jwks_ca_file.as_ref().map(|p| self.resolve(p));
            self.validate_attestor(&table, &mut a)?;
            attestors.push(a);
        }

        let config_ttl = |c: CredentialType| match c {
            CredentialType::Jwt => jwt.max_ttl,
            CredentialType::X509 => x509.as_ref().map(|x| x.max_ttl).unwrap_or(jwt.max_ttl),
        };
        let mut rule_names = HashSet::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let table = format!("rule #{} ({:?})", i + 1, r.name);
            if !rule_names.insert(r.name.clone()) {
                return Err(self.err(table, "name", "duplicate rule name"));
            }
            match &r.owner {
                Some(o) if !o.trim().is_empty() => {}
                _ => {
                    return Err(self.err(
                        table,
                        "owner",
                        "every rule must name an owner (the team or person responsible)",
                    ));
                }
            }
            for att in r.attestor.to_vec() {
                if att != "svid" && !names.contains(&att) {
                    return Err(self.err(table, "attestor", format!("unknown attestor {att:?}")));
                }
            }
            if r.credentials.is_empty() {
                return Err(self.err(table, "credentials", "must list \"jwt\", \"x509\" or both"));
            }
            if r.credentials.contains(&CredentialType::X509) && x509.is_none() {
                return Err(self.err(table, "credentials", "\"x509\" needs an [x509] section"));
            }
            for c in &r.credentials {
                let limit = config_ttl(*c);
                if let Some(max) = r.max_ttl
                    && max > limit
                {
                    return Err(self.err(
                        table.clone(),
                        "max_ttl",
                        format!("exceeds the [{}] max_ttl", c.as_str()),
                    ));
                }
                if let Some(def) = r.default_ttl
                    && (def > limit || r.max_ttl.is_some_and(|m| def > m))
                {
                    return Err(self.err(
                        table.clone(),
                        "default_ttl",
                        "exceeds the applicable max_ttl",
                    ));
                }
            }
            if let Some(cidrs) = &r.source_cidrs {
                for c in cidrs {
                    c.parse::<ipnet::IpNet>().map_err(|_| {
                        self.err(
                            table.clone(),
                            "source_cidrs",
                            format!("{c:?} is not a CIDR"),
                        )
                    })?;
                }
            }
            for id in r.delegate.iter().chain(&r.deny_in_chain) {
                SpiffeId::parse(id)
                    .map_err(|e| self.err(table.clone(), "delegate", format!("{id:?}: {e}")))?;
            }
        }

        Ok(Config {
            path: self.path.to_path_buf(),
            trust_domain,
            issuer,
            server,
            jwt,
            x509: x509.unwrap_or_else(|| X509Config {
                ca_cert: PathBuf::new(),
                ca_key: PathBuf::new(),
                bundle: None,
                default_ttl: default_x509_ttl(),
                max_ttl: default_max_ttl(),
                crl_next_update: default_crl_next_update(),
            }),
            revocation,
            admin,
            attestors,
            rules: raw.rules,
            dev: raw.dev,
        })
    }

    fn check_ttls(
        &self,
        table: &str,
        default: Dur,
        max: Dur,
        limit: Duration,
    ) -> Result<(), ConfigError> {
        if max.0 > limit {
            return Err(self.err(table, "max_ttl", "must be at most 24h"));
        }
        if max.0.is_zero() {
            return Err(self.err(table, "max_ttl", "must be positive"));
        }
        if default > max || default.0.is_zero() {
            return Err(self.err(table, "default_ttl", "must be positive and at most max_ttl"));
        }
        Ok(())
    }

    fn validate_attestor(&self, table: &str, a: &mut AttestorConfig) -> Result<(), ConfigError> {
        match a.kind {
            AttestorKind::Jwt => {
                if let Some(preset) = a.preset.clone() {
                    apply_preset(a, &preset).map_err(|m| self.err(table, "preset", m))?;
                }
                if a.issuer.as_deref().unwrap_or("").is_empty() {
                    return Err(self.err(table, "issuer", "required for kind = \"jwt\""));
                }
                let sources = [
                    a.jwks_url.is_some(),
                    a.jwks_file.is_some(),
                    a.jwks.is_some(),
                ]
                .iter()
                .filter(|s| **s)
                .count();
                if sources != 1 {
                    return Err(self.err(
                        table,
                        "jwks_url",
                        "set exactly one of jwks_url, jwks_file, jwks",
                    ));
                }
                if let Some(url) = &a.jwks_url
                    && !url.starts_with("https://")
                    && !url.starts_with("http://127.")
                    && !url.starts_with("http://localhost")
                    && !url.starts_with("http://[::1]")
                {
                    return Err(self.err(
                        table,
                        "jwks_url",
                        "must be https:// (plain http only on loopback)",
                    ));
                }
                if a.audiences.is_empty() {
                    return Err(self.err(table, "audiences", "at least one audience is required"));
                }
                if let Some(algs) = &a.algorithms {
                    if algs.is_empty() {
                        return Err(self.err(table, "algorithms", "must not be empty"));
                    }
                    for alg in algs {
                        if !crate::attest::jwt::ALLOWED_ALGORITHMS.contains(&alg.as_str()) {
                            return Err(self.err(
                                table,
                                "algorithms",
                                format!("{alg:?} is not allowed (`none` and HS* never are)"),
                            ));
                        }
                    }
                }
                if a.leeway.is_some_and(|l| l.0 > MAX_LEEWAY) {
                    return Err(self.err(table, "leeway", "must be at most 60s"));
                }
            }
            AttestorKind::Mtls => {
                if a.ca_bundle.is_none() {
                    return Err(self.err(table, "ca_bundle", "required for kind = \"mtls\""));
                }
            }
            AttestorKind::JoinToken | AttestorKind::Svid => {}
        }
        Ok(())
    }
}

/// Known platforms, so a config can say `preset = "github-actions"` instead of URLs.
fn apply_preset(a: &mut AttestorConfig, preset: &str) -> Result<(), String> {
    let (issuer, jwks_url) = match preset {
        "github-actions" => (
            "https://token.actions.githubusercontent.com",
            "https://token.actions.githubusercontent.com/.well-known/jwks",
        ),
        "gitlab" => (
            "https://gitlab.com",
            "https://gitlab.com/oauth/discovery/keys",
        ),
        other => {
            return Err(format!(
                "unknown preset {other:?} (known: github-actions, gitlab)"
            ));
        }
    };
    if a.issuer.is_none() {
        a.issuer = Some(issuer.into());
    }
    if a.jwks_url.is_none() && a.jwks_file.is_none() && a.jwks.is_none() {
        a.jwks_url = Some(jwks_url.into());
    }
    if a.algorithms.is_none() {
        a.algorithms = Some(vec!["RS256".into()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

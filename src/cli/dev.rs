//! `credbroker dev`: a working broker with zero configuration.
//!
//! Generates keys (or reuses those in `--data-dir`), a demo platform-token issuer whose
//! JWKS the broker trusts, and a config with rules for every door; starts the broker with
//! the in-memory store (or `--redis`), and prints commands that exercise it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};

use super::{CliError, init_logging, shutdown_signal};
use crate::attest::join_token;
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::issue::keygen::{KeygenOptions, generate, generate_jwt_key_pem};
use crate::issue::keys::SigningKeys;
use crate::server::Server;
use crate::store::JoinTokenRecord;

/// The demo platform-token issuer that `dev` plays (it signs the demo CI tokens).
pub const DEMO_ISSUER: &str = "https://ci.demo.credbroker.invalid";
const DEMO_KEY_FILE: &str = "demo-issuer.key";
const DEMO_JWKS_FILE: &str = "demo-issuer-jwks.json";
const DEV_CONFIG_FILE: &str = "dev-broker.toml";
/// How long the printed demo tokens and join token stay usable.
const DEMO_TOKEN_LIFETIME: i64 = 3600;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Use this Redis instead of the in-memory store.
    #[arg(long)]
    redis: Option<String>,
    /// Plain-HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// HTTPS address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    https: SocketAddr,
    /// Where keys and the generated config live (default: a new temporary folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    init_logging(LogFormat::Text);
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => new_temp_dir()?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
    let http = resolve_port(args.http)?;
    let https = resolve_port(args.https)?;

    if !dir.join("jwt-es256.key").exists() {
        generate(&KeygenOptions {
            out: dir.clone(),
            trust_domain: "example.org".into(),
            sans: Vec::new(),
            intermediate: false,
        })?;
    }
    let demo_keys = demo_issuer_keys(&dir)?;
    let admin_token = std::fs::read_to_string(dir.join("admin-token"))
        .map_err(|e| CliError::new(format!("{}: {e}", dir.join("admin-token").display())))?
        .trim()
        .to_string();
    let config_path = dir.join(DEV_CONFIG_FILE);
    std::fs::write(
        &config_path,
        dev_config(http, https, args.redis.as_deref(), &admin_token),
    )
    .map_err(|e| CliError::new(format!("{}: {e}", config_path.display())))?;
    let config = Config::load(&config_path)?;

    let server = Server::start(config, Arc::new(SystemClock)).await?;
    let now = server.broker().now();
    let join = join_token::new_token().map_err(|_| CliError::new("no randomness available"))?;
    let join_id = "spiffe://example.org/host/demo";
    server
        .broker()
        .store()
        .put_join_token(
            &join_token::token_hash(&join),
            &JoinTokenRecord {
                spiffe_id: join_id.into(),
                created_at: now,
                expires_at: now + DEMO_TOKEN_LIFETIME,
            },
            Duration::from_secs(DEMO_TOKEN_LIFETIME as u64),
        )
        .await?;
    // A second join token, for the agent step of the guide (the first is used by step 3).
    let agent_join =
        join_token::new_token().map_err(|_| CliError::new("no randomness available"))?;
    let agent_id = "spiffe://example.org/host/demo-agent";
    server
        .broker()
        .store()
        .put_join_token(
            &join_token::token_hash(&agent_join),
            &JoinTokenRecord {
                spiffe_id: agent_id.into(),
                created_at: now,
                expires_at: now + DEMO_TOKEN_LIFETIME,
            },
            Duration::from_secs(DEMO_TOKEN_LIFETIME as u64),
        )
        .await?;
    let main_token = demo_token(&demo_keys, "acme/web", "refs/heads/main", now)?;
    let dev_token = demo_token(&demo_keys, "acme/web", "refs/heads/dev", now)?;
    super::serve::announce(&server);
    print_guide(&Guide {
        dir: &dir,
        http: server.http_addr().unwrap_or(http),
        https: server.https_addr().unwrap_or(https),
        store: args.redis.as_deref(),
        admin_token: &admin_token,
        join_token: &join,
        join_id,
        main_token: &main_token,
        dev_token: &dev_token,
        agent_join: &agent_join,
        agent_id,
    });
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

/// Port 0 means "any free port"; resolved here so the issuer URL names the real port.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr, CliError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| CliError::new(format!("cannot bind {addr}: {e}")))?;
    Ok(listener.local_addr()?)
}

fn new_temp_dir() -> Result<PathBuf, CliError> {
    let mut bytes = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| CliError::new("no randomness available"))?;
    let dir = std::env::temp_dir().join(format!("credbroker-dev-{}", hex::encode(bytes)));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// The demo issuer's signing key (created once per data dir) and its JWKS file.
fn demo_issuer_keys(dir: &Path) -> Result<SigningKeys, CliError> {
    let key_path = dir.join(DEMO_KEY_FILE);
    if !key_path.exists() {
        let pem = generate_jwt_key_pem()?;
        write_private(&key_path, pem.as_bytes())?;
    }
    let pem = std::fs::read_to_string(&key_path)
        .map_err(|e| CliError::new(format!("{}: {e}", key_path.display())))?;
    let keys = SigningKeys::from_pems(&[pem])?;
    let jwks = serde_json::to_string_pretty(&keys.jwks())?;
    std::fs::write(dir.join(DEMO_JWKS_FILE), jwks)
        .map_err(|e| CliError::new(format!("{}: {e}", dir.join(DEMO_JWKS_FILE).display())))?;
    Ok(keys)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// A CI token shaped like GitHub Actions', signed by the demo issuer.
fn demo_token(
    keys: &SigningKeys,
    repository: &str,
    git_ref: &str,
    now: i64,
) -> Result<String, CliError> {
    let claims = json!({
        "iss": DEMO_ISSUER,
        "aud": "credbroker",
        "sub": format!("repo:{repository}:ref:{git_ref}"),
        "repository": repository,
        "repository_owner": repository.split('/').next().unwrap_or_default(),
        "ref": git_ref,
        "workflow": "deploy",
        "iat": now,
        "nbf": now,
        "exp": now + DEMO_TOKEN_LIFETIME,
        "jti": crate::issue::jwt::new_credential_id(),
    });
    let map: Map<String, Value> = match claims {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Ok(keys.active().sign_jwt(&map)?)
}

fn dev_config(
    http: SocketAddr,
    https: SocketAddr,
    redis: Option<&str>,
    admin_token: &str,
) -> String {
    let token_sha256 = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        admin_token.as_bytes(),
    ));
    let store = match redis {
        Some(url) => format!("store = \"redis\"\nredis_url = {url:?}"),
        None => "store = \"memory\"".to_string(),
    };
    format!(
        r#"# Written by `credbroker dev` for local experiments. NOT for production use.
trust_domain = "example.org"
issuer = "http://{http}"
dev = true

[server]
listen = "{https}"
tls_cert = "broker-tls.pem"
tls_key = "broker-tls.key"
listen_http = "{http}"

[jwt]
signing_keys = ["jwt-es256.key"]
default_ttl = "5m"
max_ttl = "1h"

[x509]
ca_cert = "ca.pem"
ca_key = "ca.key"
default_ttl = "10m"
max_ttl = "1h"

[revocation]
{store}

[admin]
token_sha256 = "{token_sha256}"

[[attestor]]
name = "demo-ci"
kind = "jwt"
issuer = "{DEMO_ISSUER}"
jwks_file = "{DEMO_JWKS_FILE}"
audiences = ["credbroker"]
algorithms = ["ES256"]

[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "attestation-ca.pem"

[[attestor]]
name = "bootstrap"
kind = "join_token"

[[rule]]
name = "demo-ci-main"
attestor = "demo-ci"
owner = "team-dev"
match = {{ "/repository" = "acme/*", "/ref" = "refs/heads/main" }}
spiffe_id = "spiffe://example.org/ci/{{/repository}}"
credentials = ["jwt"]
audiences = ["demo-api", "inventory"]
scopes = ["read", "deploy:staging"]
max_ttl = "15m"

[[rule]]
name = "join-token-hosts"
attestor = "bootstrap"
owner = "team-platform"
spiffe_id = "{{/spiffe_id}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]

[[rule]]
name = "legacy-hosts"
attestor = "legacy-pki"
owner = "team-infra"
match = {{ "/subject/o" = "acme-hosts" }}
spiffe_id = "spiffe://example.org/host/{{/subject/cn}}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]
"#
    )
}

struct Guide<'a> {
    dir: &'a Path,
    http: SocketAddr,
    https: SocketAddr,
    store: Option<&'a str>,
    admin_token: &'a str,
    join_token: &'a str,
    join_id: &'a str,
    main_token: &'a str,
    dev_token: &'a str,
    agent_join: &'a str,
    agent_id: &'a str,
}

fn print_guide(g: &Guide<'_>) {
    let base = format!("http://{}", g.http);
    let store = g
        .store
        .map_or("in-memory store".to_string(), |u| format!("Redis at {u}"));
    println!(
        r#"
credbroker dev is running ({store}). Keys and config: {dir}
  HTTP  {base}
  HTTPS https://{https}   (CA: {dir}/ca.pem)

Admin token (for admin commands):
  export CREDBROKER_ADMIN_TOKEN={admin}
One-time join token for {join_id} (valid 1h):
  export JOIN_TOKEN={join}

1) A CI job swaps its platform token for a scoped credential (RFC 8693 token exchange).
   The demo token below is signed by the built-in demo issuer, as GitHub Actions would sign one:

  export DEMO_TOKEN={main_token}
  curl -s {base}/v1/token \
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \
    -d subject_token="$DEMO_TOKEN" -d audience=demo-api -d scope=read

2) A denial explains itself (same issuer, but a job on refs/heads/dev):

  curl -s {base}/v1/token \
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \
    -d subject_token={dev_token} -d audience=demo-api

3) A host redeems its one-time join token for a JWT (a second try fails):

  curl -s {base}/v1/token \
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:credbroker:token-type:join-token \
    -d subject_token="$JOIN_TOKEN" -d audience=inventory

4) Relying parties verify with the published keys and metadata:

  curl -s {base}/.well-known/jwks.json
  curl -s {base}/.well-known/openid-configuration

5) Ask the policy offline which rule a set of claims gets, or why none does:

  {exe} policy explain --config {dir}/dev-broker.toml --claims <(echo '{{"iss":"{DEMO_ISSUER}","repository":"acme/web","ref":"refs/heads/dev"}}')

6) A CI step does step 1 with the client (in GitHub Actions: --from github-actions --format github-env):

  {exe} token --from env:DEMO_TOKEN --broker {base} --audience demo-api --scope read --format json

7) The mTLS door: a workload makes its own key, gets an X.509-SVID for {agent_id}
   with a second one-time join token, and (without --once) keeps it renewed over mTLS:

  {exe} agent --once --attest join-token:{agent_join} --out {dir}/agent --broker https://{https} --ca-file {dir}/ca.pem
  curl -s --cacert {dir}/ca.pem --cert {dir}/agent/svid.pem --key {dir}/agent/svid.key https://{https}/v1/token -d grant_type=client_credentials -d audience=inventory

Stop with Ctrl-C."#,
        dir = g.dir.display(),
        https = g.https,
        admin = g.admin_token,
        join = g.join_token,
        join_id = g.join_id,
        main_token = g.main_token,
        dev_token = g.dev_token,
        agent_join = g.agent_join,
        agent_id = g.agent_id,
        exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "credbroker".into()),
    );
}

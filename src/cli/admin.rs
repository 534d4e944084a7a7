//! Admin client commands: `revoke`, `lock`, `unlock`, `join-token create`, `identities`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::CliError;
use crate::config::units::parse_duration;

/// Where the broker is and how to authenticate as admin; shared by every admin command.
#[derive(Debug, Args)]
pub struct AdminConn {
    /// The broker's base URL.
    #[arg(long, env = "CREDBROKER_URL")]
    broker: String,
    /// PEM CA file to trust for the broker's HTTPS certificate.
    #[arg(long, env = "CREDBROKER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The admin token (prefer the environment variable: flags show up in `ps`).
    // Tokens and ids are base64url and may begin with '-'.
    #[arg(
        long,
        env = "CREDBROKER_ADMIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    admin_token: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "spiffe_id", "source", "all_before", "token"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    conn: AdminConn,
    /// A credential id: a JWT `jti` or a certificate serial (hex, any case, colons allowed).
    #[arg(long, allow_hyphen_values = true)]
    id: Option<String>,
    /// Everything issued to this SPIFFE ID (up to --issued-before, default now).
    #[arg(long)]
    spiffe_id: Option<String>,
    #[arg(long, requires = "spiffe_id")]
    issued_before: Option<String>,
    /// Everything obtained with one attestation source, as ATTESTOR:SUBJECT.
    #[arg(long)]
    source: Option<String>,
    /// Everything issued before this RFC 3339 time (key compromise).
    #[arg(long)]
    all_before: Option<String>,
    /// A JWT this broker issued (RFC 7009).
    #[arg(long, allow_hyphen_values = true)]
    token: Option<String>,
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    conn: AdminConn,
    #[arg(long)]
    spiffe_id: String,
    /// How long the lock holds (e.g. 1h); without it, until unlocked.
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    conn: AdminConn,
    #[arg(long)]
    spiffe_id: String,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a one-time join token for a SPIFFE ID; prints the token alone.
    Create(JoinTokenArgs),
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    conn: AdminConn,
    #[arg(long)]
    spiffe_id: String,
    /// How long the token stays usable (default 1h).
    #[arg(long)]
    ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct IdentitiesArgs {
    #[command(flatten)]
    conn: AdminConn,
    #[arg(long)]
    owner: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: ListFormat,
}

pub async fn revoke(args: RevokeArgs) -> Result<(), CliError> {
    let client = AdminClient::new(&args.conn)?;
    let answer = if let Some(token) = &args.token {
        client
            .post_form("/v1/revoke", &[("token", token.as_str())])
            .await?
    } else {
        let mut body = if let Some(id) = args.id {
            json!({ "credential_id": id })
        } else if let Some(id) = args.spiffe_id {
            let mut b = json!({ "spiffe_id": id });
            if let Some(t) = args.issued_before {
                b["issued_before"] = json!(t);
            }
            b
        } else if let Some(source) = args.source {
            let (attestor, subject) = source
                .split_once(':')
                .ok_or_else(|| usage("--source takes ATTESTOR:SUBJECT"))?;
            json!({ "source": { "attestor": attestor, "subject": subject } })
        } else {
            json!({ "all_issued_before": args.all_before.unwrap_or_default() })
        };
        if let Some(r) = args.reason {
            body["reason"] = json!(r);
        }
        client.post_json("/v1/revoke", &body).await?
    };
    print_json(&answer)
}

pub async fn lock(args: LockArgs) -> Result<(), CliError> {
    let client = AdminClient::new(&args.conn)?;
    let mut body = json!({ "spiffe_id": args.spiffe_id });
    if let Some(ttl) = args.ttl {
        body["ttl"] = json!(seconds(&ttl)?);
    }
    if let Some(r) = args.reason {
        body["reason"] = json!(r);
    }
    print_json(&client.post_json("/v1/lock", &body).await?)
}

pub async fn unlock(args: UnlockArgs) -> Result<(), CliError> {
    let client = AdminClient::new(&args.conn)?;
    let answer = client
        .send(
            client
                .http
                .delete(client.url("/v1/lock"))
                .query(&[("spiffe_id", args.spiffe_id)]),
        )
        .await?;
    print_json(&answer)
}

pub async fn join_token(cmd: JoinTokenCommand) -> Result<(), CliError> {
    let JoinTokenCommand::Create(args) = cmd;
    let client = AdminClient::new(&args.conn)?;
    let mut body = json!({ "spiffe_id": args.spiffe_id });
    if let Some(ttl) = args.ttl {
        body["ttl"] = json!(seconds(&ttl)?);
    }
    let answer = client.post_json("/v1/join-tokens", &body).await?;
    let token = answer["token"]
        .as_str()
        .ok_or_else(|| CliError::new("the broker's answer has no token"))?;
    println!("{token}");
    Ok(())
}

pub async fn identities(args: IdentitiesArgs) -> Result<(), CliError> {
    let client = AdminClient::new(&args.conn)?;
    let mut request = client.http.get(client.url("/v1/identities"));
    if let Some(owner) = &args.owner {
        request = request.query(&[("owner", owner)]);
    }
    let answer = client.send(request).await?;
    match args.format {
        ListFormat::Json => print_json(&answer),
        ListFormat::Table => {
            let rows = answer["identities"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<56} {:<16} {:<20} {:>6} {:<20} LOCKED",
                "SPIFFE ID", "OWNER", "RULE", "ISSUED", "LAST ISSUED"
            );
            for r in rows {
                println!(
                    "{:<56} {:<16} {:<20} {:>6} {:<20} {}",
                    r["spiffe_id"].as_str().unwrap_or(""),
                    r["owner"].as_str().unwrap_or(""),
                    r["rule"].as_str().unwrap_or(""),
                    r["credentials_issued"].as_u64().unwrap_or(0),
                    r["last_issued"].as_str().unwrap_or(""),
                    if r["locked"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
            Ok(())
        }
    }
}

fn usage(message: &str) -> CliError {
    CliError {
        message: message.to_string(),
        code: 2,
    }
}

fn seconds(text: &str) -> Result<u64, CliError> {
    parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| usage(&format!("--ttl: {e}")))
}

fn print_json(value: &Value) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An HTTP client carrying the admin token.
struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    fn new(conn: &AdminConn) -> Result<AdminClient, CliError> {
        Ok(AdminClient {
            http: crate::client::http::build(conn.ca_file.as_deref(), None).map_err(|e| {
                CliError {
                    message: e.to_string(),
                    code: 2,
                }
            })?,
            base: conn.broker.trim_end_matches('/').to_string(),
            token: conn.admin_token.clone(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, CliError> {
        self.send(self.http.post(self.url(path)).form(form)).await
    }

    /// Sends with the admin token; a non-2xx answer becomes one line with the broker's reason.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CliError {
                message: format!(
                    "cannot reach the broker at {}: {}",
                    self.base,
                    crate::client::http::describe(&e)
                ),
                code: 4,
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let reason = body["error_description"]
            .as_str()
            .or_else(|| body["error"].as_str())
            .unwrap_or("no reason given");
        Err(CliError {
            message: format!("the broker refused ({}): {reason}", status.as_u16()),
            code: 3,
        })
    }
}

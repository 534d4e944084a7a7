//! `credbroker token`: CI job credential fetch (the third door).
//!
//! Exit codes: 0 success, 1 other failure, 2 bad usage, 3 the broker refused the exchange,
//! 4 the broker is unreachable or unavailable after retries, 5 no platform token
//! (see [`crate::client::token::exit`]).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::client::http::{self, RetryPolicy};
use crate::client::token::{
    self, Format, PlatformOptions, Source, TokenError, TokenRequest, append_github_env, exchange,
    fetch_subject_token, render, token_endpoint, valid_env_name,
};
use crate::config::units::parse_duration;

/// Where the broker is and how to trust it; shared by every client command.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// The broker's base URL, e.g. https://broker.example.org:8443.
    #[arg(long, env = "CREDBROKER_URL", value_name = "URL")]
    pub broker: String,
    /// PEM file of the CA(s) to trust for the broker's HTTPS certificate, instead of the
    /// public roots.
    #[arg(long, env = "CREDBROKER_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// The token alone.
    Raw,
    /// The broker's token response (JSON).
    Json,
    /// A line NAME=<token> (NAME from --env-name).
    Env,
    /// Appends NAME=<token> to $GITHUB_ENV and prints ::add-mask::<token>.
    GithubEnv,
}

#[derive(Debug, Args)]
#[command(after_help = "Exit codes: 0 success, 1 other failure, 2 bad usage, \
3 the broker refused the exchange (attestation or policy denied), \
4 the broker is unreachable or unavailable after retries, \
5 the platform token could not be obtained.")]
pub struct TokenArgs {
    /// Where the platform token comes from: github-actions, gitlab, kubernetes, file:PATH,
    /// env:VAR or join-token:TOKEN.
    #[arg(long, value_name = "SOURCE")]
    from: String,
    /// Audience of the credential (repeatable).
    #[arg(long = "audience", value_name = "A")]
    audiences: Vec<String>,
    /// Scope of the credential (repeatable).
    #[arg(long = "scope", value_name = "S")]
    scopes: Vec<String>,
    /// Requested lifetime, e.g. 5m (the broker clamps it to the rule's maximum).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// What to print.
    #[arg(long, value_enum, default_value = "raw")]
    format: OutputFormat,
    /// Variable name for --format env and github-env.
    #[arg(long, default_value = "CREDBROKER_TOKEN", value_name = "NAME")]
    env_name: String,
    /// Audience asked of GitHub's OIDC endpoint (--from github-actions).
    #[arg(long, default_value = token::PLATFORM_AUDIENCE, value_name = "AUD")]
    platform_audience: String,
    /// GitLab id_tokens variable (--from gitlab).
    #[arg(long, default_value = token::GITLAB_VARIABLE, value_name = "VAR")]
    gitlab_var: String,
    /// Projected service-account token file (--from kubernetes).
    #[arg(long, default_value = token::KUBERNETES_TOKEN_FILE, value_name = "PATH")]
    token_file: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
}

pub async fn run(args: TokenArgs) -> Result<(), CliError> {
    run_inner(args).await.map_err(|e| CliError {
        code: e.exit_code(),
        message: e.to_string(),
    })
}

async fn run_inner(args: TokenArgs) -> Result<(), TokenError> {
    // Everything that can be checked locally is checked before the platform token is
    // fetched: a join token is consumed by the exchange, so fail before spending it.
    let source = Source::parse(&args.from)?;
    let format = match args.format {
        OutputFormat::Raw => Format::Raw,
        OutputFormat::Json => Format::Json,
        OutputFormat::Env => Format::Env,
        OutputFormat::GithubEnv => Format::GithubEnv,
    };
    if !valid_env_name(&args.env_name) {
        return Err(TokenError::Usage(format!(
            "--env-name {:?} is not a valid variable name",
            args.env_name
        )));
    }
    let ttl = match &args.ttl {
        None => None,
        Some(text) => {
            let d = parse_duration(text).map_err(|e| TokenError::Usage(format!("--ttl: {e}")))?;
            if d.as_secs() == 0 {
                return Err(TokenError::Usage("--ttl must be at least 1s".into()));
            }
            Some(d)
        }
    };
    let github_env = match format {
        Format::GithubEnv => Some(
            std::env::var_os("GITHUB_ENV")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    TokenError::Usage(
                        "--format github-env needs $GITHUB_ENV (set by GitHub Actions)".into(),
                    )
                })?,
        ),
        _ => None,
    };
    let endpoint = token_endpoint(&args.broker.broker)?;
    let setup = |e: http::ClientSetupError| TokenError::Usage(format!("--ca-file {e}"));
    let broker_client = http::build(args.broker.ca_file.as_deref(), None).map_err(setup)?;
    let ci_client = http::build(None, None)
        .map_err(|e| TokenError::Other(format!("cannot set up HTTPS: {e}")))?;

    let options = PlatformOptions {
        platform_audience: args.platform_audience,
        gitlab_var: args.gitlab_var,
        token_file: args.token_file,
    };
    let subject = fetch_subject_token(&source, &options, &ci_client).await?;
    let request = TokenRequest {
        audiences: args.audiences,
        scopes: args.scopes,
        ttl,
    };
    let issued = exchange(
        &broker_client,
        &endpoint,
        &subject,
        &request,
        RetryPolicy::default(),
    )
    .await?;

    // In github-env mode the mask is printed (and flushed) before the token is written
    // anywhere else, so the runner hides it from every later line of the log.
    let mut stdout = std::io::stdout().lock();
    let write_failed = |e: std::io::Error| TokenError::Other(format!("cannot write output: {e}"));
    stdout
        .write_all(render(format, &args.env_name, &issued).as_bytes())
        .map_err(write_failed)?;
    stdout.flush().map_err(write_failed)?;
    if let Some(path) = github_env {
        append_github_env(&path, &args.env_name, &issued.access_token)?;
    }
    Ok(())
}

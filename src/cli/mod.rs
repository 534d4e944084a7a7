//! The `credbroker` command line: one file per subcommand.
//!
//! Every command exits 0 on success, and otherwise prints one clear line on stderr and
//! exits non-zero (2 for usage errors, which clap reports).

mod admin;
mod agent;
mod dev;
mod inspect;
mod keys;
mod policy;
mod serve;
mod token;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// A short-lived credential broker for machine callers.
#[derive(Debug, Parser)]
#[command(name = "credbroker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker from a config file.
    Serve(serve::ServeArgs),
    /// Zero-config broker for trying credbroker locally: keys, demo issuer, printed commands.
    Dev(dev::DevArgs),
    /// Key material.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check or explain a policy offline.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Revoke credentials (one, an identity's, a source's, or all before a time).
    Revoke(admin::RevokeArgs),
    /// Lock a SPIFFE ID: nothing new is issued to it, and what it holds is revoked.
    Lock(admin::LockArgs),
    /// Unlock a SPIFFE ID.
    Unlock(admin::UnlockArgs),
    /// One-time join tokens.
    #[command(subcommand)]
    JoinToken(admin::JoinTokenCommand),
    /// List the identity inventory.
    Identities(admin::IdentitiesArgs),
    /// Swap a CI or platform token for a scoped credential (CI job credential fetch).
    Token(token::TokenArgs),
    /// Get an X.509-SVID for this workload and keep it renewed over mTLS.
    Agent(agent::AgentArgs),
    /// Decode a JWT or PEM certificate; with --broker, verify it against the broker.
    Inspect(inspect::InspectArgs),
}

/// A command's failure: the one line printed on stderr, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::new(e.to_string())
    }
}

/// Runs the command line; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credbroker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Keys(cmd) => keys::run(cmd),
            Command::Policy(cmd) => policy::run(cmd),
            Command::Revoke(args) => admin::revoke(args).await,
            Command::Lock(args) => admin::lock(args).await,
            Command::Unlock(args) => admin::unlock(args).await,
            Command::JoinToken(cmd) => admin::join_token(cmd).await,
            Command::Identities(args) => admin::identities(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "credbroker: {}",
                e.message.lines().collect::<Vec<_>>().join(" ")
            );
            ExitCode::from(e.code)
        }
    }
}

/// Help and version go to stdout as clap renders them; a usage error is one line on stderr
/// (SPEC §10), exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.exit_code() == 0 { 0 } else { 2 });
    }
    // The message is everything before clap's "Usage:" block, folded into one line.
    let rendered = e.render().to_string();
    let message = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| {
            !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("credbroker: {message} (see --help)");
    ExitCode::from(2)
}

/// Sets up `tracing` output: `CREDBROKER_LOG` (or `RUST_LOG`) filters, default `info`.
/// Colours only on a terminal, and not there under `NO_COLOR`: in a file or a log
/// shipper's pipe escape codes are noise, and they were a third of what an audit line cost.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var("CREDBROKER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

//! `credbroker agent`: get an X.509-SVID and keep it renewed (SPEC §10).

use std::path::PathBuf;

use clap::Args;

use super::{CliError, init_logging, shutdown_signal};
use crate::client::agent::{AgentOptions, Attest, run as run_agent};
use crate::config::LogFormat;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// How to attest for the first SVID: kubernetes[:PATH], join-token:T, file:PATH or cert:CERT,KEY.
    #[arg(long)]
    attest: Attest,
    /// Folder for svid.pem, svid.key and bundle.pem (created when missing).
    #[arg(long)]
    out: PathBuf,
    /// Get the first SVID, write the files and exit.
    #[arg(long)]
    once: bool,
    /// Shell command run after each rotation (CREDBROKER_SVID_DIR names the folder).
    #[arg(long)]
    exec_on_rotate: Option<String>,
    /// Requested SVID lifetime (e.g. 10m); the broker's rule may lower it.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<std::time::Duration>,
    /// The broker's base URL.
    #[arg(long, env = "CREDBROKER_URL")]
    broker: String,
    /// PEM CA certificates to trust for the broker's HTTPS certificate.
    #[arg(long, env = "CREDBROKER_CA_FILE")]
    ca_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::units::parse_duration(s).map_err(|e| e.to_string())
}

pub async fn run(args: AgentArgs) -> Result<(), CliError> {
    init_logging(LogFormat::Text);
    let opts = AgentOptions {
        broker: args.broker,
        ca_file: args.ca_file,
        attest: args.attest,
        out: args.out,
        ttl: args.ttl,
        once: args.once,
        exec_on_rotate: args.exec_on_rotate,
    };
    run_agent(opts, shutdown_signal()).await?;
    Ok(())
}

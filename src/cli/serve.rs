//! `credbroker serve --config broker.toml`

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{CliError, init_logging, shutdown_signal};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::server::Server;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The broker configuration file.
    #[arg(long, env = "CREDBROKER_CONFIG")]
    config: PathBuf,
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config)?;
    init_logging(config.server.log_format);
    let server = Server::start(config, Arc::new(SystemClock)).await?;
    announce(&server);
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Prints where the broker listens, one line per listener, for people and scripts.
pub fn announce(server: &Server) {
    if let Some(addr) = server.https_addr() {
        println!("listening https://{addr}");
    }
    if let Some(addr) = server.http_addr() {
        println!("listening http://{addr}");
    }
}

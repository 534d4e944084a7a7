//! `credbroker keys generate`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use crate::issue::keygen::{KeygenOptions, generate};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a complete, working key set and a broker.toml that uses it.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Folder to write into (created when missing; existing files are never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// The trust domain for the CA and the config.
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// Extra names (DNS or IP) for the broker's TLS certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Also create an intermediate CA that issues SVIDs.
    #[arg(long)]
    intermediate: bool,
}

pub fn run(cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Generate(args) => {
            crate::identity::TrustDomain::parse(&args.trust_domain)
                .map_err(|e| CliError::new(format!("--trust-domain: {e}")))?;
            let written = generate(&KeygenOptions {
                out: args.out.clone(),
                trust_domain: args.trust_domain,
                sans: args.sans,
                intermediate: args.intermediate,
            })?;
            for path in written {
                println!("{}", path.display());
            }
            eprintln!(
                "next: credbroker serve --config {}",
                args.out.join("broker.toml").display()
            );
            Ok(())
        }
    }
}

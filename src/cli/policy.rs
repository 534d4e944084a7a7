//! `credbroker policy check` and `credbroker policy explain`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use crate::config::Config;
use crate::policy::{Policy, lint};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Lint a config: unknown attestors, unreachable rules, bad templates, TTLs, owners.
    Check(CheckArgs),
    /// Show offline which rule a set of claims gets, or why none does.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long)]
    config: PathBuf,
    /// A JSON file with the attested claims (e.g. a decoded platform token payload).
    #[arg(long)]
    claims: PathBuf,
    /// The attestor; default: the one whose `issuer` equals the claims' `iss`.
    #[arg(long)]
    attestor: Option<String>,
}

pub fn run(cmd: PolicyCommand) -> Result<(), CliError> {
    match cmd {
        PolicyCommand::Check(args) => {
            let config = Config::load(&args.config)?;
            let findings = lint(&config);
            let mut errors = 0;
            for f in &findings {
                println!("{f}");
                if f.severity == crate::policy::Severity::Error {
                    errors += 1;
                }
            }
            if errors > 0 {
                return Err(CliError::new(format!(
                    "{}: {errors} error(s) in the policy",
                    args.config.display()
                )));
            }
            println!(
                "{}: ok ({} rules, {} warnings)",
                args.config.display(),
                config.rules.len(),
                findings.len()
            );
            Ok(())
        }
        PolicyCommand::Explain(args) => {
            let config = Config::load(&args.config)?;
            let policy = Policy::compile(&config)?;
            let text = std::fs::read_to_string(&args.claims)
                .map_err(|e| CliError::new(format!("{}: {e}", args.claims.display())))?;
            let claims: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::new(format!("{}: not JSON: {e}", args.claims.display())))?;
            let attestor = match args.attestor {
                Some(a) => a,
                None => {
                    let iss = claims.get("iss").and_then(|v| v.as_str()).ok_or_else(|| {
                        CliError::new("the claims have no `iss`; name the attestor with --attestor")
                    })?;
                    config
                        .attestors
                        .iter()
                        .find(|a| a.issuer.as_deref() == Some(iss))
                        .map(|a| a.name.clone())
                        .ok_or_else(|| {
                            CliError::new(format!(
                                "no attestor has issuer {iss:?}; name one with --attestor"
                            ))
                        })?
                }
            };
            let explanation = policy.explain(&attestor, &claims);
            println!("{explanation}");
            if explanation.is_match() {
                Ok(())
            } else {
                Err(CliError::new("no rule matches these claims"))
            }
        }
    }
}

//! `credbroker policy explain`: the same decision as a request would get, printed offline.

use std::fmt;

use super::denial::Miss;
use crate::config::CredentialType;
use crate::identity::SpiffeId;

/// The outcome of matching one claim set against the rules of one attestor.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub attestor: String,
    pub outcome: Outcome,
    /// The first failed condition of every rule of this attestor tried before the outcome
    /// (all of them when none matched), in file order.
    pub misses: Vec<Miss>,
}

/// Which rule (if any) the claims fall under.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No rule names this attestor.
    NoRules,
    /// Rules exist but none matched; `closest` indexes `misses` (most conditions satisfied,
    /// ties to the earliest rule).
    NoMatch { closest: usize },
    /// The first matching rule and the identity it renders (or why it cannot).
    Matched {
        rule: String,
        owner: String,
        identity: Result<SpiffeId, String>,
        credentials: Vec<CredentialType>,
        audiences: Vec<String>,
        scopes: Vec<String>,
    },
}

impl Explanation {
    /// True when a rule matched and its identity renders.
    pub fn is_match(&self) -> bool {
        matches!(
            &self.outcome,
            Outcome::Matched {
                identity: Ok(_),
                ..
            }
        )
    }

    /// The rule that came closest when none matched.
    pub fn closest(&self) -> Option<&Miss> {
        match self.outcome {
            Outcome::NoMatch { closest } => self.misses.get(closest),
            _ => None,
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attestor = &self.attestor;
        match &self.outcome {
            Outcome::NoRules => {
                return writeln!(
                    f,
                    "attestor {attestor:?}: no rule matched: no rule uses this attestor"
                );
            }
            Outcome::NoMatch { .. } => {
                match self.closest() {
                    Some(miss) => {
                        writeln!(f, "attestor {attestor:?}: no rule matched: closest {miss}")?
                    }
                    None => writeln!(f, "attestor {attestor:?}: no rule matched")?,
                }
                writeln!(f, "each rule's first failed condition:")?;
            }
            Outcome::Matched {
                rule,
                owner,
                identity,
                credentials,
                audiences,
                scopes,
            } => {
                writeln!(
                    f,
                    "attestor {attestor:?}: rule {rule:?} matches (owner {owner:?})"
                )?;
                match identity {
                    Ok(id) => writeln!(f, "  identity:    {id}")?,
                    Err(why) => writeln!(f, "  identity:    refused: {why}")?,
                }
                let creds: Vec<&str> = credentials.iter().map(|c| c.as_str()).collect();
                writeln!(f, "  credentials: {}", creds.join(", "))?;
                writeln!(f, "  audiences:   {}", list_or_none(audiences))?;
                writeln!(f, "  scopes:      {}", list_or_none(scopes))?;
                if !self.misses.is_empty() {
                    writeln!(f, "earlier rules that did not match:")?;
                }
            }
        }
        for miss in &self.misses {
            writeln!(f, "  {miss}")?;
        }
        Ok(())
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

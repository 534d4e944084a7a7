//! `credbroker policy check`: everything wrong or suspicious in a config's rules, at once.

use std::fmt;

use super::condition::Condition;
use super::{Rule, SVID_ATTESTOR, compile_rule};
use crate::config::{Config, CredentialType};

/// How bad a finding is: errors make `policy check` fail; warnings are advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The rule concerned, when it is about one rule.
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{}: rule {rule:?}: {}", self.severity, self.message),
            None => write!(f, "{}: {}", self.severity, self.message),
        }
    }
}

/// Lints a config's rules: missing owners, unknown attestors, templates that cannot
/// produce a valid SPIFFE ID, bad globs/CIDRs/rates, TTLs over the limit (errors);
/// unreachable rules, JWT rules without audiences, misplaced `delegate` (warnings).
pub fn lint(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut compiled: Vec<Option<Rule>> = Vec::with_capacity(config.rules.len());
    for raw in &config.rules {
        let rule_name = Some(raw.name.clone());
        match compile_rule(config, raw) {
            Ok(rule) => compiled.push(Some(rule)),
            Err(problems) => {
                findings.extend(problems.into_iter().map(|p| Finding {
                    severity: Severity::Error,
                    rule: rule_name.clone(),
                    message: format!("{}: {}", p.key, p.message),
                }));
                compiled.push(None);
            }
        }
        let attestors = raw.attestor.to_vec();
        let svid = attestors.iter().any(|a| a == SVID_ATTESTOR);
        if raw.credentials.contains(&CredentialType::Jwt) && raw.audiences.is_empty() {
            findings.push(Finding {
                severity: Severity::Warning,
                rule: rule_name.clone(),
                message: "may issue JWTs but lists no audiences, so every JWT request is refused"
                    .into(),
            });
        }
        if !raw.delegate.is_empty() && !svid {
            findings.push(Finding {
                severity: Severity::Warning,
                rule: rule_name.clone(),
                message: "`delegate` only has effect on rules with attestor \"svid\" (SPEC §6.3)"
                    .into(),
            });
        }
        if svid && raw.delegate.is_empty() {
            findings.push(Finding {
                severity: Severity::Warning,
                rule: rule_name,
                message: "attestor \"svid\" rules govern delegation only, and this one lists no `delegate`, so it never applies".into(),
            });
        }
    }

    for (j, later) in compiled.iter().enumerate() {
        let Some(later) = later else { continue };
        let shadow = compiled[..j]
            .iter()
            .flatten()
            .find(|earlier| shadows(earlier, later));
        if let Some(earlier) = shadow {
            findings.push(Finding {
                severity: Severity::Warning,
                rule: Some(later.name.clone()),
                message: format!(
                    "is unreachable: rule {:?} comes first and matches everything it matches",
                    earlier.name
                ),
            });
        }
    }

    for attestor in &config.attestors {
        let used = config
            .rules
            .iter()
            .any(|r| r.attestor.to_vec().contains(&attestor.name));
        if !used {
            findings.push(Finding {
                severity: Severity::Warning,
                rule: None,
                message: format!(
                    "attestor {:?} is used by no rule, so its attestations are always refused",
                    attestor.name
                ),
            });
        }
    }
    if config.rules.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            rule: None,
            message: "there are no rules: every request will be refused".into(),
        });
    }
    findings
}

/// True when `earlier` is selected for every attestation that `later` would match: it
/// covers all of `later`'s attestors, each of its conditions is implied by one of
/// `later`'s, and (for delegation) it lists every actor `later` does.
fn shadows(earlier: &Rule, later: &Rule) -> bool {
    later.attestors.iter().all(|a| earlier.applies_to(a))
        && earlier.conditions.iter().all(|wide| {
            later
                .conditions
                .iter()
                .any(|narrow| condition_implies(narrow, wide))
        })
        && (!later.applies_to(SVID_ATTESTOR)
            || later.delegate.iter().all(|d| earlier.delegate.contains(d)))
}

/// Whether `narrow` holding guarantees `wide` holds (same claim, every alternative covered).
fn condition_implies(narrow: &Condition, wide: &Condition) -> bool {
    narrow.pointer() == wide.pointer()
        && narrow
            .alternatives()
            .iter()
            .all(|n| wide.alternatives().iter().any(|w| n.implies(w)))
}

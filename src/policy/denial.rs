//! Why policy refused a request, in words fit for `error_description`.
//!
//! Every variant names the rule involved and the condition that failed; claim values and
//! requested names are cut short and quoted, and no token ever appears.

use std::fmt;
use std::net::IpAddr;

use super::condition::truncate;
use crate::config::CredentialType;

/// The most actors a delegated token may name in its nested `act` claim (SPEC §6.3).
pub const MAX_ACT_DEPTH: usize = 4;

/// Which protocol error a denial maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// Any policy refusal other than audiences or scopes.
    Refused,
    /// An audience was not allowed (`invalid_target`).
    Audience,
    /// A scope was not allowed (`invalid_scope`).
    Scope,
}

/// Which limit a requested audience or scope fell outside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The rule's `audiences` / `scopes`.
    Rule,
    /// The presented broker credential's own (a bearer token can only be narrowed).
    Presented,
}

/// The rule that came closest to matching and its first failed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub rule: String,
    /// What the condition asks, e.g. `/ref = "refs/heads/main"`.
    pub requirement: String,
    /// What was found instead, e.g. `the token has "refs/heads/dev"`.
    pub found: String,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {:?} requires {} but {}",
            self.rule, self.requirement, self.found
        )
    }
}

/// A policy refusal; `Display` is the human explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("no rule matched: no rule uses attestor {attestor:?}")]
    NoRuleForAttestor { attestor: String },
    #[error("no rule matched: closest {0}")]
    NoMatch(Miss),
    #[error("rule {rule:?}: {reason}")]
    InvalidIdentity { rule: String, reason: String },
    #[error("rule {rule:?} does not issue {} credentials (it allows {allowed})", .credential.as_str())]
    CredentialType {
        rule: String,
        credential: CredentialType,
        allowed: String,
    },
    #[error("rule {rule:?} accepts callers only from its source_cidrs, {}", caller_text(.caller))]
    SourceAddress {
        rule: String,
        caller: Option<IpAddr>,
    },
    #[error("audience {audience:?} {}", limit_text(.limit, .rule, "audiences"))]
    Audience {
        rule: String,
        audience: String,
        limit: Limit,
    },
    #[error("no audience was requested and rule {rule:?} {reason}")]
    NoAudience { rule: String, reason: String },
    #[error("scope {scope:?} {}", limit_text(.limit, .rule, "scopes"))]
    Scope {
        rule: String,
        scope: String,
        limit: Limit,
    },
    #[error("a lifetime (ttl) of zero was requested")]
    ZeroTtl,
    #[error("the presented credential does not say which rule granted it")]
    MissingLineage,
    #[error("the rule that granted this credential no longer exists ({rule:?})")]
    RuleRemoved { rule: String },
    #[error("the presented credential's identity is not valid here: {reason}")]
    BadSubject { reason: String },
    #[error(
        "rule {rule:?}, which granted this credential, can no longer produce {identity} (its spiffe_id is now {template:?})"
    )]
    NotRenewable {
        rule: String,
        identity: String,
        template: String,
    },
    #[error("delegation (actor_token) needs a subject token issued by this broker")]
    NotDelegable,
    #[error(
        "rule {rule:?} does not allow {actor} to act for this identity (not in its delegate list)"
    )]
    ActorNotAllowed { rule: String, actor: String },
    #[error("rule {rule:?} renders {rendered}, not the subject token's own identity {subject}")]
    IdentityMismatch {
        rule: String,
        rendered: String,
        subject: String,
    },
    #[error(
        "the delegation chain would name {depth} actors; at most {} are allowed",
        MAX_ACT_DEPTH
    )]
    ChainTooDeep { depth: usize },
    #[error("rule {rule:?} refuses any request whose chain contains {identity}")]
    DeniedInChain { rule: String, identity: String },
}

impl Denial {
    /// Which protocol error this maps to (`invalid_target`, `invalid_scope`, or a refusal).
    pub fn kind(&self) -> DenialKind {
        match self {
            Denial::Audience { .. } | Denial::NoAudience { .. } => DenialKind::Audience,
            Denial::Scope { .. } => DenialKind::Scope,
            _ => DenialKind::Refused,
        }
    }

    /// An audience outside a limit (the requested name is cut short: it is caller input).
    pub(crate) fn audience(rule: &str, audience: &str, limit: Limit) -> Self {
        Denial::Audience {
            rule: rule.to_string(),
            audience: truncate(audience),
            limit,
        }
    }

    /// A scope outside a limit.
    pub(crate) fn scope(rule: &str, scope: &str, limit: Limit) -> Self {
        Denial::Scope {
            rule: rule.to_string(),
            scope: truncate(scope),
            limit,
        }
    }
}

fn caller_text(caller: &Option<IpAddr>) -> String {
    match caller {
        Some(ip) => format!("and {ip} is outside them"),
        None => "and the caller's address is not known".into(),
    }
}

fn limit_text(limit: &Limit, rule: &str, what: &str) -> String {
    match limit {
        Limit::Rule => format!("is not allowed by rule {rule:?} (not in its {what})"),
        Limit::Presented => format!(
            "is not among the presented token's {what} (a bearer token can only be narrowed)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_protocol_errors() {
        assert_eq!(
            Denial::audience("r", "x", Limit::Rule).kind(),
            DenialKind::Audience
        );
        assert_eq!(
            Denial::NoAudience {
                rule: "r".into(),
                reason: "lists none".into()
            }
            .kind(),
            DenialKind::Audience
        );
        assert_eq!(
            Denial::scope("r", "x", Limit::Presented).kind(),
            DenialKind::Scope
        );
        assert_eq!(Denial::ZeroTtl.kind(), DenialKind::Refused);
    }

    #[test]
    fn caller_input_is_cut_short() {
        let long = "a".repeat(1000);
        let text = Denial::audience("r", &long, Limit::Rule).to_string();
        assert!(text.len() < 200, "{text}");
    }
}

//! Policy: which rule an attestation falls under, and what it may get.
//!
//! Pure code over data: [`Policy::compile`] turns the `[[rule]]` tables into precompiled
//! matchers once at start-up, and [`Policy::decide`] maps one request to a [`Grant`] or a
//! [`Denial`] that says why (SPEC §4, §6.3). No I/O, no clock: rate limits are handed to
//! the caller to enforce, lifetimes are durations.

mod condition;
mod denial;
mod explain;
mod lint;
mod pointer;
mod rate;
mod template;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::attest::{Attestation, ParentCredential};
use crate::config::{AttestorKind, Config, ConfigError, CredentialType, RuleConfig};
use crate::identity::{SpiffeId, TrustDomain};

use condition::{Condition, Found};
use template::Template;

pub use denial::{Denial, DenialKind, Limit, MAX_ACT_DEPTH, Miss};
pub use explain::{Explanation, Outcome};
pub use lint::{Finding, Severity, lint};
pub use rate::RateLimit;

/// The built-in attestor for credentials this broker issued.
pub const SVID_ATTESTOR: &str = "svid";

/// The compiled rules of one config, ready to decide requests.
#[derive(Debug, Clone)]
pub struct Policy {
    trust_domain: TrustDomain,
    rules: Vec<Rule>,
    by_name: HashMap<String, usize>,
    /// Names of `mtls` attestors, so explanations say "the certificate" rather than "the token".
    certificate_attestors: Vec<String>,
}

/// One compiled `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    owner: String,
    attestors: Vec<String>,
    template: Template,
    conditions: Vec<Condition>,
    credentials: Vec<CredentialType>,
    audiences: Vec<String>,
    scopes: Vec<String>,
    jwt_ttl: TtlBounds,
    x509_ttl: TtlBounds,
    source_cidrs: Option<Vec<IpNet>>,
    rate: Option<RateLimit>,
    bind_to_certificate: bool,
    delegate: Vec<SpiffeId>,
    deny_in_chain: Vec<SpiffeId>,
}

/// The lifetimes that apply to one credential type under one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TtlBounds {
    default: Duration,
    max: Duration,
}

/// What is being asked for, and on what evidence.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub attestation: &'a Attestation,
    /// `jwt` or `x509`.
    pub credential: CredentialType,
    /// Requested audiences; empty = the rule's default.
    pub audiences: &'a [String],
    /// Requested scopes; empty = none.
    pub scopes: &'a [String],
    /// Requested lifetime; `None` = the default.
    pub ttl: Option<Duration>,
    /// The caller's address, for `source_cidrs`.
    pub caller: Option<IpAddr>,
    /// The actor of a delegation (token exchange with `actor_token`); `None` normally.
    pub actor: Option<&'a Actor>,
}

/// The identity acting for the subject in a delegation (SPEC §6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub spiffe_id: SpiffeId,
    /// The actor credential's own `act` chain, outermost first.
    pub chain: Vec<SpiffeId>,
}

/// What policy allows: everything the issuer needs to mint the credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub rule: String,
    pub owner: String,
    pub spiffe_id: SpiffeId,
    /// Audiences to put in `aud` (empty for an X.509-SVID unless some were requested).
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub ttl: Duration,
    /// True when the requested ttl was lowered to the rule's maximum.
    pub clamped: bool,
    pub bind_to_certificate: bool,
    /// The rule's issuance limit, for the caller to enforce per identity.
    pub rate: Option<RateLimit>,
    /// RFC 8693 `act` claim for delegated grants (nested for chains).
    pub act: Option<Value>,
}

/// A problem with one rule, before it is turned into a config error or a lint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleProblem {
    pub key: &'static str,
    pub message: String,
}

impl Policy {
    /// Compiles rules from a validated Config: parse templates, globs, CIDRs, rate specs.
    /// Errors use [`ConfigError::Invalid`] naming the rule table and key.
    pub fn compile(config: &Config) -> Result<Policy, ConfigError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut by_name = HashMap::with_capacity(config.rules.len());
        for (index, raw) in config.rules.iter().enumerate() {
            let rule = compile_rule(config, raw).map_err(|problems| {
                let first = problems.into_iter().next().unwrap_or(RuleProblem {
                    key: "name",
                    message: "invalid rule".into(),
                });
                ConfigError::Invalid {
                    path: config.path.clone(),
                    table: rule_table(index, &raw.name),
                    key: first.key.to_string(),
                    message: first.message,
                }
            })?;
            if by_name.insert(rule.name.clone(), index).is_some() {
                return Err(ConfigError::Invalid {
                    path: config.path.clone(),
                    table: rule_table(index, &raw.name),
                    key: "name".into(),
                    message: "duplicate rule name".into(),
                });
            }
            rules.push(rule);
        }
        let certificate_attestors = config
            .attestors
            .iter()
            .filter(|a| a.kind == AttestorKind::Mtls)
            .map(|a| a.name.clone())
            .collect();
        Ok(Policy {
            trust_domain: config.trust_domain.clone(),
            rules,
            by_name,
            certificate_attestors,
        })
    }

    /// Decides one request: a grant, or a denial that says why.
    pub fn decide(&self, req: &Request<'_>) -> Result<Grant, Denial> {
        let att = req.attestation;
        if let Some(actor) = req.actor {
            return self.decide_delegation(req, actor);
        }
        if att.kind == AttestorKind::Svid {
            return self.decide_renewal(req);
        }
        let rule = self.select(&att.attestor, &att.claims, None)?;
        let identity = rule
            .template
            .render(&att.claims, &self.trust_domain)
            .map_err(|e| Denial::InvalidIdentity {
                rule: rule.name.clone(),
                reason: e.to_string(),
            })?;
        let chain = [identity.as_str()];
        self.grant(rule, identity.clone(), req, None, &chain, None)
    }

    /// Offline decision for `credbroker policy explain`: which rule matched (and the identity
    /// it renders), or for every rule of that attestor its first failed condition.
    pub fn explain(&self, attestor: &str, claims: &Value) -> Explanation {
        let mut misses = Vec::new();
        let mut closest: Option<(usize, usize)> = None; // (satisfied, index into misses)
        for rule in self.rules.iter().filter(|r| r.applies_to(attestor)) {
            match self.evaluate(rule, attestor, claims) {
                Ok(()) => {
                    let identity = rule
                        .template
                        .render(claims, &self.trust_domain)
                        .map_err(|e| e.to_string());
                    return Explanation {
                        attestor: attestor.to_string(),
                        outcome: Outcome::Matched {
                            rule: rule.name.clone(),
                            owner: rule.owner.clone(),
                            identity,
                            credentials: rule.credentials.clone(),
                            audiences: rule.audiences.clone(),
                            scopes: rule.scopes.clone(),
                        },
                        misses,
                    };
                }
                Err((satisfied, miss)) => {
                    if closest.is_none_or(|(best, _)| satisfied > best) {
                        closest = Some((satisfied, misses.len()));
                    }
                    misses.push(miss);
                }
            }
        }
        let outcome = match closest {
            None => Outcome::NoRules,
            Some((_, index)) => Outcome::NoMatch { closest: index },
        };
        Explanation {
            attestor: attestor.to_string(),
            outcome,
            misses,
        }
    }

    /// The rules in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule called `name`, as configured now.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.by_name.get(name).and_then(|&i| self.rules.get(i))
    }

    /// The broker's trust domain (every identity policy grants is inside it).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// SVID renewal and re-scoping: the granting rule, as configured now, governs the
    /// credential's own identity; a bearer JWT can only be narrowed.
    fn decide_renewal(&self, req: &Request<'_>) -> Result<Grant, Denial> {
        let att = req.attestation;
        let parent = att.parent.as_ref().ok_or(Denial::MissingLineage)?;
        let rule = self.rule(&parent.rule).ok_or_else(|| Denial::RuleRemoved {
            rule: condition::truncate(&parent.rule),
        })?;
        let identity = self.subject_identity(att)?;
        if !rule.template.could_produce(&identity) {
            return Err(Denial::NotRenewable {
                rule: rule.name.clone(),
                identity: identity.to_string(),
                template: rule.template.as_str().to_string(),
            });
        }
        // Only an X.509-SVID (proof of possession over mTLS) is governed by the rule alone;
        // anything else is treated as a bearer token, which never widens.
        let is_x509 = att.claims.get("typ").and_then(Value::as_str) == Some("x509");
        let limit = if is_x509 { None } else { Some(parent) };
        let mut chain = vec![identity.as_str()];
        chain.extend(act_chain(&att.claims));
        // A re-scoped delegated token keeps saying who acts for the subject.
        let act = att.claims.get("act").filter(|a| a.is_object()).cloned();
        self.grant(rule, identity.clone(), req, limit, &chain, act)
    }

    /// Delegation (RFC 8693 with `actor_token`): an `svid` rule that matches the subject
    /// token and lists the actor issues a token for the subject with a nested `act`.
    fn decide_delegation(&self, req: &Request<'_>, actor: &Actor) -> Result<Grant, Denial> {
        let att = req.attestation;
        if att.kind != AttestorKind::Svid {
            return Err(Denial::NotDelegable);
        }
        let parent = att.parent.as_ref().ok_or(Denial::MissingLineage)?;
        let subject = self.subject_identity(att)?;
        let rule = self.select(SVID_ATTESTOR, &att.claims, Some(&actor.spiffe_id))?;
        let rendered = rule
            .template
            .render(&att.claims, &self.trust_domain)
            .map_err(|e| Denial::InvalidIdentity {
                rule: rule.name.clone(),
                reason: e.to_string(),
            })?;
        if rendered != subject {
            return Err(Denial::IdentityMismatch {
                rule: rule.name.clone(),
                rendered: rendered.to_string(),
                subject: subject.to_string(),
            });
        }
        let depth = 1 + actor.chain.len();
        if depth > MAX_ACT_DEPTH {
            return Err(Denial::ChainTooDeep { depth });
        }
        let mut chain = vec![subject.as_str(), actor.spiffe_id.as_str()];
        chain.extend(actor.chain.iter().map(SpiffeId::as_str));
        chain.extend(act_chain(&att.claims));
        let act = nested_act(&actor.spiffe_id, &actor.chain);
        self.grant(rule, subject.clone(), req, Some(parent), &chain, Some(act))
    }

    /// The presented broker credential's own identity, which must be in our trust domain.
    fn subject_identity(&self, att: &Attestation) -> Result<SpiffeId, Denial> {
        SpiffeId::parse_in(&att.subject, &self.trust_domain).map_err(|e| Denial::BadSubject {
            reason: e.to_string(),
        })
    }

    /// First-match selection in file order. With an actor (delegation) a rule must also list
    /// it in `delegate`; a rule whose conditions hold but which does not is remembered so the
    /// denial can name it.
    fn select(
        &self,
        attestor: &str,
        claims: &Value,
        actor: Option<&SpiffeId>,
    ) -> Result<&Rule, Denial> {
        let mut actor_refused: Option<&Rule> = None;
        let mut any = false;
        for rule in self.rules.iter().filter(|r| r.applies_to(attestor)) {
            any = true;
            if !rule.conditions.iter().all(|c| c.holds(claims)) {
                continue;
            }
            match actor {
                Some(a) if !rule.delegate.contains(a) => {
                    actor_refused.get_or_insert(rule);
                }
                _ => return Ok(rule),
            }
        }
        if let (Some(rule), Some(a)) = (actor_refused, actor) {
            return Err(Denial::ActorNotAllowed {
                rule: rule.name.clone(),
                actor: a.to_string(),
            });
        }
        if !any {
            return Err(Denial::NoRuleForAttestor {
                attestor: condition::truncate(attestor),
            });
        }
        // The slow path runs only on refusal: find the rule that came closest.
        let mut closest: Option<(usize, Miss)> = None;
        for rule in self.rules.iter().filter(|r| r.applies_to(attestor)) {
            if let Err((satisfied, miss)) = self.evaluate(rule, attestor, claims)
                && closest.as_ref().is_none_or(|(best, _)| satisfied > *best)
            {
                closest = Some((satisfied, miss));
            }
        }
        match closest {
            Some((_, miss)) => Err(Denial::NoMatch(miss)),
            // Every condition held: only the delegate list can have refused, handled above.
            None => Err(Denial::NoRuleForAttestor {
                attestor: condition::truncate(attestor),
            }),
        }
    }

    /// Checks a rule's conditions in order; on failure, how many held and the first miss.
    fn evaluate(&self, rule: &Rule, attestor: &str, claims: &Value) -> Result<(), (usize, Miss)> {
        let mut satisfied = 0;
        let mut first_failed: Option<&Condition> = None;
        for c in &rule.conditions {
            if c.holds(claims) {
                satisfied += 1;
            } else if first_failed.is_none() {
                first_failed = Some(c);
            }
        }
        let Some(failed) = first_failed else {
            return Ok(());
        };
        let evidence = if self.certificate_attestors.iter().any(|a| a == attestor) {
            "the certificate"
        } else {
            "the token"
        };
        let found = match failed.found(claims) {
            Found::Missing => format!("{evidence} has no {}", failed.pointer()),
            Found::Value(v) => format!("{evidence} has {v}"),
        };
        Err((
            satisfied,
            Miss {
                rule: rule.name.clone(),
                requirement: failed.requirement(),
                found,
            },
        ))
    }

    /// The checks that follow selection; each failure is a denial, never a fall-through.
    fn grant(
        &self,
        rule: &Rule,
        spiffe_id: SpiffeId,
        req: &Request<'_>,
        presented: Option<&ParentCredential>,
        chain: &[&str],
        act: Option<Value>,
    ) -> Result<Grant, Denial> {
        if !rule.credentials.contains(&req.credential) {
            return Err(Denial::CredentialType {
                rule: rule.name.clone(),
                credential: req.credential,
                allowed: rule
                    .credentials
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let Some(cidrs) = &rule.source_cidrs {
            let inside = req
                .caller
                .is_some_and(|ip| cidrs.iter().any(|net| net.contains(&ip)));
            if !inside {
                return Err(Denial::SourceAddress {
                    rule: rule.name.clone(),
                    caller: req.caller,
                });
            }
        }
        if let Some(denied) = chain
            .iter()
            .find(|id| rule.deny_in_chain.iter().any(|d| d.as_str() == **id))
        {
            return Err(Denial::DeniedInChain {
                rule: rule.name.clone(),
                identity: condition::truncate(denied),
            });
        }
        let audiences = resolve_audiences(rule, req, presented)?;
        let scopes = resolve_scopes(rule, req, presented)?;
        let bounds = rule.ttl_bounds(req.credential);
        let (ttl, clamped) = match req.ttl {
            Some(t) if t.is_zero() => return Err(Denial::ZeroTtl),
            Some(t) if t > bounds.max => (bounds.max, true),
            Some(t) => (t, false),
            None => (bounds.default, false),
        };
        Ok(Grant {
            rule: rule.name.clone(),
            owner: rule.owner.clone(),
            spiffe_id,
            audiences,
            scopes,
            ttl,
            clamped,
            bind_to_certificate: rule.bind_to_certificate,
            rate: rule.rate,
            act,
        })
    }
}

impl Rule {
    /// The rule's name (named in credentials' lineage and in denials).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The team or person responsible.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The attestors whose attestations this rule considers.
    pub fn attestors(&self) -> &[String] {
        &self.attestors
    }

    /// Whether attestations from `attestor` are considered by this rule.
    pub fn applies_to(&self, attestor: &str) -> bool {
        self.attestors.iter().any(|a| a == attestor)
    }

    /// The `spiffe_id` template as written.
    pub fn spiffe_id_template(&self) -> &str {
        self.template.as_str()
    }

    /// The credential types it may issue.
    pub fn credentials(&self) -> &[CredentialType] {
        &self.credentials
    }

    /// JWT audiences it allows; the first is the default.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Scopes it allows.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The lifetime given when none is requested.
    pub fn default_ttl(&self, credential: CredentialType) -> Duration {
        self.ttl_bounds(credential).default
    }

    /// The longest lifetime it grants; longer requests are clamped to it.
    pub fn max_ttl(&self, credential: CredentialType) -> Duration {
        self.ttl_bounds(credential).max
    }

    /// Caller networks it accepts, if restricted.
    pub fn source_cidrs(&self) -> Option<&[IpNet]> {
        self.source_cidrs.as_deref()
    }

    /// Per-identity issuance limit.
    pub fn rate(&self) -> Option<RateLimit> {
        self.rate
    }

    /// Whether JWTs are bound to the client certificate when there is one.
    pub fn bind_to_certificate(&self) -> bool {
        self.bind_to_certificate
    }

    /// Identities that may act for this one (delegation).
    pub fn delegate(&self) -> &[SpiffeId] {
        &self.delegate
    }

    /// Identities whose presence in a chain refuses the request.
    pub fn deny_in_chain(&self) -> &[SpiffeId] {
        &self.deny_in_chain
    }

    fn ttl_bounds(&self, credential: CredentialType) -> TtlBounds {
        match credential {
            CredentialType::Jwt => self.jwt_ttl,
            CredentialType::X509 => self.x509_ttl,
        }
    }
}

/// `rule #3 ("name")`, the table name config errors use.
fn rule_table(index: usize, name: &str) -> String {
    format!("rule #{} ({:?})", index + 1, name)
}

/// Compiles one rule, collecting every problem (lint reports them all; compile the first).
pub(crate) fn compile_rule(config: &Config, raw: &RuleConfig) -> Result<Rule, Vec<RuleProblem>> {
    let mut problems = Vec::new();
    let mut problem = |key: &'static str, message: String| {
        problems.push(RuleProblem { key, message });
    };

    let owner = match raw.owner.as_deref().map(str::trim) {
        Some(o) if !o.is_empty() => o.to_string(),
        _ => {
            problem(
                "owner",
                "every rule must name an owner (the team or person responsible)".into(),
            );
            String::new()
        }
    };
    let attestors = raw.attestor.to_vec();
    if attestors.is_empty() {
        problem("attestor", "must name at least one attestor".into());
    }
    for a in &attestors {
        if a != SVID_ATTESTOR && config.attestor(a).is_none() {
            problem("attestor", format!("unknown attestor {a:?}"));
        }
    }
    let template = Template::compile(&raw.spiffe_id, &config.trust_domain)
        .map_err(|e| problem("spiffe_id", format!("template {:?} {e}", raw.spiffe_id)))
        .ok();
    let mut conditions = Vec::with_capacity(raw.matches.len());
    for (pointer, cond) in &raw.matches {
        match Condition::compile(pointer, cond) {
            Ok(c) => conditions.push(c),
            Err(e) => problem("match", e),
        }
    }
    if raw.credentials.is_empty() {
        problem("credentials", "must list \"jwt\", \"x509\" or both".into());
    }
    let mut bounds = |credential: CredentialType, default: Duration, limit: Duration| {
        let max = raw.max_ttl.map_or(limit, |d| d.0);
        let applies = raw.credentials.contains(&credential);
        if applies && max > limit {
            problem(
                "max_ttl",
                format!(
                    "{} exceeds the [{}] max_ttl ({})",
                    crate::config::units::format_duration(max),
                    credential.as_str(),
                    crate::config::units::format_duration(limit)
                ),
            );
        }
        if applies && max.is_zero() {
            problem("max_ttl", "must be positive".into());
        }
        let max = max.min(limit);
        let default = raw.default_ttl.map_or(default, |d| d.0);
        if applies && raw.default_ttl.is_some() && (default > max || default.is_zero()) {
            problem(
                "default_ttl",
                format!(
                    "must be positive and at most the applicable max_ttl ({})",
                    crate::config::units::format_duration(max)
                ),
            );
        }
        TtlBounds {
            default: default.min(max),
            max,
        }
    };
    let jwt_ttl = bounds(
        CredentialType::Jwt,
        config.jwt.default_ttl.0,
        config.jwt.max_ttl.0,
    );
    let x509_ttl = bounds(
        CredentialType::X509,
        config.x509.default_ttl.0,
        config.x509.max_ttl.0,
    );
    let source_cidrs = raw.source_cidrs.as_ref().map(|list| {
        list.iter()
            .filter_map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|_| problem("source_cidrs", format!("{c:?} is not a CIDR")))
                    .ok()
            })
            .collect::<Vec<_>>()
    });
    let rate = raw
        .rate
        .as_deref()
        .and_then(|r| RateLimit::parse(r).map_err(|e| problem("rate", e)).ok());
    let mut ids = |key: &'static str, list: &[String]| -> Vec<SpiffeId> {
        list.iter()
            .filter_map(|id| {
                SpiffeId::parse(id)
                    .map_err(|e| problem(key, format!("{id:?}: {e}")))
                    .ok()
            })
            .collect()
    };
    let delegate = ids("delegate", &raw.delegate);
    let deny_in_chain = ids("deny_in_chain", &raw.deny_in_chain);

    match template {
        Some(template) if problems.is_empty() => Ok(Rule {
            name: raw.name.clone(),
            owner,
            attestors,
            template,
            conditions,
            credentials: raw.credentials.clone(),
            audiences: raw.audiences.clone(),
            scopes: raw.scopes.clone(),
            jwt_ttl,
            x509_ttl,
            source_cidrs,
            rate,
            bind_to_certificate: raw.bind_to_certificate,
            delegate,
            deny_in_chain,
        }),
        _ => Err(problems),
    }
}

/// Requested audiences must be within the rule's (and the presented token's, when it
/// limits); none requested → the rule's first allowed one, else the presented token's first
/// that the rule allows. An X.509-SVID carries no audience, so it gets no default.
fn resolve_audiences(
    rule: &Rule,
    req: &Request<'_>,
    presented: Option<&ParentCredential>,
) -> Result<Vec<String>, Denial> {
    let in_presented = |a: &str| presented.is_none_or(|p| p.audiences.iter().any(|x| x == a));
    if !req.audiences.is_empty() {
        let mut out: Vec<String> = Vec::with_capacity(req.audiences.len());
        for a in req.audiences {
            if !rule.audiences.iter().any(|x| x == a) {
                return Err(Denial::audience(&rule.name, a, Limit::Rule));
            }
            if !in_presented(a) {
                return Err(Denial::audience(&rule.name, a, Limit::Presented));
            }
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        return Ok(out);
    }
    if req.credential == CredentialType::X509 {
        return Ok(Vec::new());
    }
    let default = match presented {
        None => rule.audiences.first(),
        Some(p) => rule
            .audiences
            .first()
            .filter(|a| in_presented(a))
            .or_else(|| p.audiences.iter().find(|a| rule.audiences.contains(a))),
    };
    match default {
        Some(a) => Ok(vec![a.clone()]),
        None if rule.audiences.is_empty() => Err(Denial::NoAudience {
            rule: rule.name.clone(),
            reason: "lists no audiences, so it cannot issue a JWT".into(),
        }),
        None => Err(Denial::NoAudience {
            rule: rule.name.clone(),
            reason: "allows none of the presented token's audiences".into(),
        }),
    }
}

/// Requested scopes must be within the rule's (and the presented token's, when it limits).
fn resolve_scopes(
    rule: &Rule,
    req: &Request<'_>,
    presented: Option<&ParentCredential>,
) -> Result<Vec<String>, Denial> {
    let mut out: Vec<String> = Vec::with_capacity(req.scopes.len());
    for s in req.scopes {
        if !rule.scopes.iter().any(|x| x == s) {
            return Err(Denial::scope(&rule.name, s, Limit::Rule));
        }
        if presented.is_some_and(|p| !p.scopes.iter().any(|x| x == s)) {
            return Err(Denial::scope(&rule.name, s, Limit::Presented));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

/// The identities named by a credential's nested `act` claim, outermost first.
fn act_chain(claims: &Value) -> impl Iterator<Item = &str> {
    let mut current = claims.get("act");
    std::iter::from_fn(move || {
        let act = current?;
        current = act.get("act");
        act.get("sub").and_then(Value::as_str)
    })
    .take(MAX_ACT_DEPTH * 2)
}

/// `{"sub": actor, "act": {"sub": chain[0], "act": …}}` (RFC 8693 §4.1).
fn nested_act(actor: &SpiffeId, chain: &[SpiffeId]) -> Value {
    let mut act: Option<Value> = None;
    for id in chain.iter().rev().chain(std::iter::once(actor)) {
        let mut obj = serde_json::Map::new();
        obj.insert("sub".into(), Value::String(id.to_string()));
        if let Some(inner) = act.take() {
            obj.insert("act".into(), inner);
        }
        act = Some(Value::Object(obj));
    }
    act.unwrap_or(Value::Null)
}

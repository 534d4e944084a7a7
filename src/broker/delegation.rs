//! Delegation (SPEC §6.3, RFC 8693 with `actor_token`): a token for the subject that says
//! who acts for it, descending from both the subject's and the actor's credential.
//!
//! # Lineage of a delegated token
//!
//! A delegated token has two parents. Its `chain` holds both lines — the subject's line
//! first, then the actor's — so that revoking the subject credential, the actor credential
//! or any ancestor still named in either line kills it (the mirror checks every id of a
//! `chain`, whatever its position). A chain holds at most [`MAX_CHAIN`] ids, so when both
//! lines do not fit together, each is trimmed as [`child_chain`] trims one line (its root,
//! then its most recent ids) and the actor's line keeps at least
//! [`ACTOR_LINE_MIN`] ids (its root, up to two recent ancestors, the actor credential
//! itself), the subject's line the rest (at least as many). Both parents and both roots are
//! therefore always named. Revocation by identity also reaches the actor through the `act`
//! claim ([`crate::revoke::CredentialRef::actors`]).

use super::{Ask, Broker, BrokerError, Caller, IssuedToken, PresentedToken, cap_to_bearer_parent};
use crate::attest::Attestation;
use crate::attest::svid;
use crate::claims::Claims;
use crate::config::CredentialType;
use crate::identity::SpiffeId;
use crate::issue::lineage::MAX_CHAIN;
use crate::policy::Actor;

/// The fewest ids the actor's line keeps in a delegated token's chain when both lines do
/// not fit: its root, two recent ancestors, and the actor credential.
pub const ACTOR_LINE_MIN: usize = 4;

/// The credential an actor proves itself with.
#[derive(Clone)]
pub enum ActorCredential {
    /// A JWT this broker issued to the actor (`actor_token`).
    Jwt(String),
    /// The actor's X.509-SVID, presented as the mTLS client certificate and named by its
    /// thumbprint in `actor_token` (`urn:credbroker:token-type:x509-svid`).
    PeerSvid(crate::tls::PeerCertificates),
}

impl std::fmt::Debug for ActorCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActorCredential::Jwt(_) => f.write_str("Jwt(<redacted>)"),
            ActorCredential::PeerSvid(_) => f.write_str("PeerSvid"),
        }
    }
}

/// What the broker established about the actor.
struct AttestedActor {
    actor: Actor,
    /// The actor credential's id and its own chain: its line.
    line: Vec<String>,
    expires_at: i64,
}

impl Broker {
    /// RFC 8693 token exchange with an `actor_token`: a token for the subject with `act`.
    ///
    /// The subject token must be a JWT this broker issued (policy refuses any other
    /// attestation as a delegation subject); the actor credential must be a valid,
    /// unrevoked credential of the actor.
    pub async fn exchange_delegated(
        &self,
        subject: &PresentedToken,
        actor: &ActorCredential,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        self.ensure_fresh()?;
        let attested = async {
            let subject = self.attest_token(subject).await?;
            let actor = self.attest_actor(actor)?;
            Ok::<_, BrokerError>((subject, actor))
        };
        let (attestation, actor) = match attested.await {
            Ok(pair) => pair,
            Err(e) => {
                self.audit_denial(None, caller, &e).await;
                return Err(e);
            }
        };
        match self
            .issue_delegated(&attestation, &actor, ask, caller)
            .await
        {
            Ok(issued) => Ok(issued),
            Err(e) => {
                self.audit_denial(Some(&attestation), caller, &e).await;
                Err(e)
            }
        }
    }

    fn attest_actor(&self, credential: &ActorCredential) -> Result<AttestedActor, BrokerError> {
        let token = match credential {
            ActorCredential::Jwt(token) => token,
            ActorCredential::PeerSvid(certs) => return self.attest_actor_svid(certs),
        };
        let leeway = self.config.jwt.leeway.0.as_secs() as i64;
        let (_, claims): (Attestation, Claims) = svid::attest_jwt(
            &self.keys,
            &self.config.issuer,
            &self.mirror,
            token,
            self.now(),
            leeway,
        )
        .map_err(|e| BrokerError::Credential(format!("actor_token: {e}")))?;
        let trust_domain = self.policy.trust_domain();
        let parse = |id: &str| {
            SpiffeId::parse_in(id, trust_domain)
                .map_err(|e| BrokerError::Credential(format!("actor_token: {e}")))
        };
        let spiffe_id = parse(&claims.sub)?;
        let chain = claims
            .actors()
            .iter()
            .map(|id| parse(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut line = claims.chain.clone();
        line.push(claims.jti.clone());
        Ok(AttestedActor {
            actor: Actor { spiffe_id, chain },
            line,
            expires_at: claims.exp,
        })
    }

    /// The actor's X.509-SVID, presented over mTLS: it must be one this broker issued.
    fn attest_actor_svid(
        &self,
        certs: &crate::tls::PeerCertificates,
    ) -> Result<AttestedActor, BrokerError> {
        let attestation = self
            .attest_certificate(Some(certs))
            .map_err(|e| BrokerError::Credential(format!("actor certificate: {e}")))?;
        let parent = match (&attestation.kind, &attestation.parent) {
            (crate::config::AttestorKind::Svid, Some(parent)) => parent,
            _ => {
                return Err(BrokerError::Credential(
                    "actor certificate: not an X.509-SVID issued by this broker".into(),
                ));
            }
        };
        let spiffe_id = SpiffeId::parse_in(&attestation.subject, self.policy.trust_domain())
            .map_err(|e| BrokerError::Credential(format!("actor certificate: {e}")))?;
        let mut line = parent.chain.clone();
        line.push(parent.id.clone());
        Ok(AttestedActor {
            actor: Actor {
                spiffe_id,
                chain: Vec::new(),
            },
            line,
            expires_at: attestation.expires_at.unwrap_or(i64::MAX),
        })
    }

    async fn issue_delegated(
        &self,
        attestation: &Attestation,
        actor: &AttestedActor,
        ask: &Ask,
        caller: &Caller,
    ) -> Result<IssuedToken, BrokerError> {
        // A locked actor may not act, just as it may not get anything for itself.
        let now = self.now();
        if let Some(lock) = self.mirror.lock_of(actor.actor.spiffe_id.as_str(), now) {
            return Err(BrokerError::Locked {
                spiffe_id: actor.actor.spiffe_id.to_string(),
                reason: lock.reason,
            });
        }
        let grant = self
            .grant_as(
                attestation,
                CredentialType::Jwt,
                ask,
                caller,
                Some(&actor.actor),
            )
            .await?;
        // Neither parent is outlived: both are bearer credentials here.
        let ttl = cap_to_bearer_parent(attestation, grant.ttl, now).min(
            std::time::Duration::from_secs(actor.expires_at.saturating_sub(now).max(1) as u64),
        );
        let subject_line = match &attestation.parent {
            Some(p) => {
                let mut line = p.chain.clone();
                line.push(p.id.clone());
                line
            }
            None => {
                return Err(BrokerError::Internal(
                    "delegation subject has no lineage".into(),
                ));
            }
        };
        let chain = delegated_chain(&subject_line, &actor.line);
        self.mint_jwt(attestation, grant, chain, ttl, now, caller)
            .await
    }
}

/// The chain of a token descending from two lines (each: ancestors root first, then the
/// parent credential itself), at most [`MAX_CHAIN`] ids; see the module docs.
pub fn delegated_chain(subject_line: &[String], actor_line: &[String]) -> Vec<String> {
    let actor_line: Vec<&String> = actor_line
        .iter()
        .filter(|id| !subject_line.contains(id))
        .collect();
    let subject_keep = subject_line.len().min(
        MAX_CHAIN
            .saturating_sub(actor_line.len())
            .max(MAX_CHAIN - ACTOR_LINE_MIN),
    );
    let actor_keep = actor_line.len().min(MAX_CHAIN - subject_keep);
    let mut chain = Vec::with_capacity(subject_keep + actor_keep);
    chain.extend(trim_line(subject_line.iter(), subject_keep).cloned());
    chain.extend(trim_line(actor_line.into_iter(), actor_keep).cloned());
    chain
}

/// A line cut to `keep` ids: its root, then its most recent ids.
fn trim_line<'a, T: 'a>(
    line: impl ExactSizeIterator<Item = T> + 'a,
    keep: usize,
) -> impl Iterator<Item = T> + 'a {
    let len = line.len();
    line.enumerate()
        .filter(move |(i, _)| len <= keep || (keep > 0 && (*i == 0 || *i >= len - (keep - 1))))
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn short_lines_are_kept_whole_subject_first() {
        let chain = delegated_chain(&line("s", 1), &line("a", 1));
        assert_eq!(chain, vec!["s0", "a0"]);
        let chain = delegated_chain(&line("s", 3), &line("a", 5));
        assert_eq!(chain, [line("s", 3), line("a", 5)].concat());
    }

    #[test]
    fn long_lines_keep_both_roots_and_both_parents() {
        for (s, a) in [(12, 12), (2, 12), (12, 2), (8, 8), (5, 4), (9, 1), (1, 9)] {
            let subject = line("s", s);
            let actor = line("a", a);
            let chain = delegated_chain(&subject, &actor);
            assert!(chain.len() <= MAX_CHAIN, "{s}/{a}: {chain:?}");
            for must in [&subject[0], &subject[s - 1], &actor[0], &actor[a - 1]] {
                assert!(
                    chain.contains(must),
                    "{s}/{a}: {must} missing from {chain:?}"
                );
            }
        }
        assert_eq!(
            delegated_chain(&line("s", 12), &line("a", 12)),
            vec!["s0", "s9", "s10", "s11", "a0", "a9", "a10", "a11"]
        );
        assert_eq!(
            delegated_chain(&line("s", 2), &line("a", 12)),
            vec!["s0", "s1", "a0", "a7", "a8", "a9", "a10", "a11"]
        );
    }

    #[test]
    fn shared_ancestors_are_named_once() {
        let subject = vec!["root".to_string(), "s".to_string()];
        let actor = vec!["root".to_string(), "a".to_string()];
        assert_eq!(delegated_chain(&subject, &actor), vec!["root", "s", "a"]);
    }
}

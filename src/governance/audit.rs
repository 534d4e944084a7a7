//! Audit events: every issuance, denial, revocation, lock and join-token use, appended to a
//! bounded stream and written as one log line. Never a token or a key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::revoke::entry::rfc3339;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEventKind {
    Issued,
    Denied,
    Revoked,
    Locked,
    Unlocked,
    JoinTokenCreated,
    JoinTokenUsed,
}

impl AuditEventKind {
    /// The name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEventKind::Issued => "issued",
            AuditEventKind::Denied => "denied",
            AuditEventKind::Revoked => "revoked",
            AuditEventKind::Locked => "locked",
            AuditEventKind::Unlocked => "unlocked",
            AuditEventKind::JoinTokenCreated => "join_token_created",
            AuditEventKind::JoinTokenUsed => "join_token_used",
        }
    }
}

impl fmt::Display for AuditEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// Refused by policy, attestation, revocation, a lock or a rate limit.
    Denied,
    /// Failed for a reason that is not the caller's (a store outage, say).
    Error,
}

impl Outcome {
    /// The name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// One audit event (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds; RFC 3339 in JSON.
    #[serde(with = "rfc3339")]
    pub time: i64,
    pub event: AuditEventKind,
    /// The SPIFFE ID concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestor: Option<String>,
    /// The credential issued or revoked (its id, never the credential itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// Ids of the credentials it descends from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// The caller's address (or admin identity for admin actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    pub outcome: Outcome,
    /// Why (a denial's explanation, a revocation's reason); never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditEvent {
    /// An event with only its time and kind set; the outcome is `denied` for a denial and
    /// `ok` otherwise.
    pub fn new(event: AuditEventKind, time: i64) -> Self {
        Self {
            time,
            event,
            identity: None,
            owner: None,
            attestor: None,
            credential_id: None,
            parents: Vec::new(),
            caller: None,
            outcome: if event == AuditEventKind::Denied {
                Outcome::Denied
            } else {
                Outcome::Ok
            },
            reason: None,
        }
    }

    /// Sets the SPIFFE ID concerned.
    pub fn identity(mut self, id: &str) -> Self {
        self.identity = Some(id.to_string());
        self
    }

    /// Sets the owner.
    pub fn owner(mut self, owner: &str) -> Self {
        self.owner = Some(owner.to_string());
        self
    }

    /// Sets the attestor.
    pub fn attestor(mut self, attestor: &str) -> Self {
        self.attestor = Some(attestor.to_string());
        self
    }

    /// Sets the credential id.
    pub fn credential(mut self, id: &str) -> Self {
        self.credential_id = Some(id.to_string());
        self
    }

    /// Sets the lineage the credential descends from.
    pub fn parents(mut self, chain: &[String]) -> Self {
        self.parents = chain.to_vec();
        self
    }

    /// Sets the caller's address, when known.
    pub fn caller(mut self, addr: Option<std::net::IpAddr>) -> Self {
        self.caller = addr.map(|a| a.to_string());
        self
    }

    /// Sets the reason (a denial's explanation, a revocation's reason).
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.chars().take(512).collect());
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Writes the event as one log line (target `credbroker::audit`): `warn` for anything
    /// not `ok`, `info` otherwise.
    pub fn log(&self) {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "credbroker::audit",
                    time = %rfc3339::format(self.time),
                    event = self.event.as_str(),
                    identity = self.identity.as_deref().unwrap_or(""),
                    owner = self.owner.as_deref().unwrap_or(""),
                    attestor = self.attestor.as_deref().unwrap_or(""),
                    credential_id = self.credential_id.as_deref().unwrap_or(""),
                    parents = %self.parents.join(","),
                    caller = self.caller.as_deref().unwrap_or(""),
                    outcome = self.outcome.as_str(),
                    reason = self.reason.as_deref().unwrap_or(""),
                    "audit"
                )
            };
        }
        if self.outcome == Outcome::Ok {
            line!(info);
        } else {
            line!(warn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_omits_empty_fields() {
        let mut e = AuditEvent::new(AuditEventKind::JoinTokenUsed, 0);
        e.identity = Some("spiffe://example.org/x".into());
        e.parents = vec!["a".into()];
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time": "1970-01-01T00:00:00Z", "event": "join_token_used",
                "identity": "spiffe://example.org/x", "parents": ["a"], "outcome": "ok"})
        );
        assert_eq!(serde_json::from_value::<AuditEvent>(v).unwrap(), e);
        assert_eq!(
            AuditEvent::new(AuditEventKind::Denied, 0).outcome,
            Outcome::Denied
        );
        e.log();
    }
}

//! The inventory: one record per SPIFFE ID that has been issued anything, O(identities).

use serde::{Deserialize, Serialize};

use super::audit::AuditEvent;
use crate::revoke::entry::rfc3339;

/// What the broker knows about one identity (`GET /v1/identities`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub spiffe_id: String,
    /// The owner named by the rule of the latest issuance.
    pub owner: String,
    /// The rule of the latest issuance.
    pub rule: String,
    /// The attestor of the latest issuance.
    pub attestor: String,
    #[serde(with = "rfc3339")]
    pub first_seen: i64,
    #[serde(with = "rfc3339")]
    pub last_issued: i64,
    pub credentials_issued: u64,
    /// The latest `exp` of anything issued to it.
    #[serde(with = "rfc3339")]
    pub latest_expiry: i64,
    /// Whether the identity is locked now; filled in by the caller from the mirror.
    #[serde(default)]
    pub locked: bool,
}

/// One issuance: the inventory update and its audit event, written together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceRecord {
    pub spiffe_id: String,
    pub owner: String,
    pub rule: String,
    pub attestor: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// The credential's expiry, Unix seconds.
    pub expires_at: i64,
    /// The `issued` audit event.
    pub event: AuditEvent,
    /// For an X.509-SVID, what the CRL needs to know of it.
    pub svid: Option<SvidNote>,
}

/// How many live X.509-SVIDs a broker keeps in mind for the CRL (so that lineage, identity
/// and source revocations reach it; beyond this many, new ones are not remembered), and
/// how many notes the store keeps: the latest to expire, as many as a broker reads when it
/// starts.
pub const MAX_SVID_NOTES: usize = 50_000;

/// An X.509-SVID we issued, as revocation sees it. The store keeps it until the SVID
/// expires, beside the issuing broker's memory of it, so that a broker started later (a
/// restart, or another broker on the same store) lists it on its CRL when a lineage,
/// identity, source or cut-off revocation covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidNote {
    pub serial: String,
    pub spiffe_id: String,
    /// The lineage's source.
    pub src: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    /// The lineage: the credential ids it descends from.
    pub chain: Vec<String>,
}

impl IdentityRecord {
    /// The record after `rec` is applied to `self` (or to nothing yet).
    pub fn updated(current: Option<IdentityRecord>, rec: &IssuanceRecord) -> IdentityRecord {
        match current {
            None => IdentityRecord {
                spiffe_id: rec.spiffe_id.clone(),
                owner: rec.owner.clone(),
                rule: rec.rule.clone(),
                attestor: rec.attestor.clone(),
                first_seen: rec.issued_at,
                last_issued: rec.issued_at,
                credentials_issued: 1,
                latest_expiry: rec.expires_at,
                locked: false,
            },
            Some(r) => IdentityRecord {
                owner: rec.owner.clone(),
                rule: rec.rule.clone(),
                attestor: rec.attestor.clone(),
                last_issued: rec.issued_at,
                credentials_issued: r.credentials_issued + 1,
                latest_expiry: r.latest_expiry.max(rec.expires_at),
                ..r
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::AuditEventKind;

    #[test]
    fn json_uses_rfc3339_and_counts() {
        let r = IdentityRecord {
            spiffe_id: "spiffe://example.org/a".into(),
            owner: "team".into(),
            rule: "r".into(),
            attestor: "k8s".into(),
            first_seen: 0,
            last_issued: 60,
            credentials_issued: 3,
            latest_expiry: 120,
            locked: true,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["first_seen"], "1970-01-01T00:00:00Z");
        assert_eq!(v["latest_expiry"], "1970-01-01T00:02:00Z");
        assert_eq!(v["credentials_issued"], 3);
        assert_eq!(v["locked"], true);
        assert_eq!(serde_json::from_value::<IdentityRecord>(v).unwrap(), r);
    }

    #[test]
    fn updates_keep_first_seen_and_latest_expiry() {
        let rec = |at, exp| IssuanceRecord {
            spiffe_id: "spiffe://example.org/a".into(),
            owner: "team".into(),
            rule: "r".into(),
            attestor: "k8s".into(),
            issued_at: at,
            expires_at: exp,
            event: AuditEvent::new(AuditEventKind::Issued, at),
            svid: None,
        };
        let a = IdentityRecord::updated(None, &rec(10, 100));
        let b = IdentityRecord::updated(Some(a), &rec(20, 50));
        assert_eq!((b.first_seen, b.last_issued), (10, 20));
        assert_eq!((b.credentials_issued, b.latest_expiry), (2, 100));
    }
}

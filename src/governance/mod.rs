//! Governance: the inventory of identities that hold credentials, and the audit trail
//! (SPEC §8). The data lives in the [`crate::store`]; this module defines its shape.

pub mod audit;
pub mod inventory;

pub use audit::{AuditEvent, AuditEventKind, Outcome};
pub use inventory::{IdentityRecord, IssuanceRecord, MAX_SVID_NOTES, SvidNote};

//! Revocation: entries, the in-memory mirror every broker and verifier checks locally, and
//! the loop that keeps a mirror in step with the store (SPEC §7).
//!
//! Writing an entry goes through [`crate::store::Store::publish_revocation`]; checking a
//! credential is [`RevocationMirror::check`], a local lookup with no I/O.

pub mod entry;
pub mod mirror;
pub mod sync;

pub use entry::{EntryKind, NEVER, RevocationEntry, normalize_credential_id};
pub use mirror::{CredentialRef, LockInfo, RevocationMirror, Revoked};
pub use sync::{initial_load, run_mirror_sync, staleness};

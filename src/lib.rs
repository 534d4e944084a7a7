//! credbroker: a short-lived credential broker for machine callers.
//!
//! A workload proves what it is ([`attest`]), the configured rules decide what it may
//! get ([`policy`]), the broker mints a minutes-long JWT or X.509-SVID ([`issue`]), and
//! every credential is recorded and can be revoked instantly ([`revoke`], [`governance`]).
//! [`http`] and [`cli`] are the doors; [`store`] is where shared state lives;
//! [`verify`] is the library relying parties use to accept credbroker credentials.

pub mod attest;
pub mod broker;
pub mod claims;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod governance;
pub mod http;
pub mod identity;
pub mod issue;
pub mod jws;
pub mod policy;
pub mod revoke;
pub mod server;
pub mod store;
pub mod tls;
pub mod verify;

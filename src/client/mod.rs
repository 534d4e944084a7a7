//! What runs on the workload side: the CI `token` fetch and the `agent`.
//!
//! [`http`] builds the one kind of HTTP client every client command uses and knows when a
//! request may be retried; [`token`] swaps a platform token for a broker credential;
//! [`agent`] bootstraps an X.509-SVID and keeps it renewed.

pub mod agent;
pub mod http;
pub mod token;

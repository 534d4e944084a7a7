//! What runs on the workload side: the CI `token` fetch (and, beside it, the `agent`).
//!
//! [`http`] builds the one kind of HTTP client every client command uses and knows when a
//! request may be retried; [`token`] swaps a platform token for a broker credential.

pub mod http;
pub mod token;

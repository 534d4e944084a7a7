//! What runs on the workload side: `agent` bootstrap and renewal.

pub mod agent;

//! Shared test harness: real binary, real TLS, real Redis.
#![allow(dead_code)]

pub mod broker;
pub mod issuer;
#[path = "redis.rs"]
pub mod redis;

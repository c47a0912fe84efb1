//! Integration tests: real gateway processes in front of real origin processes, and, for
//! payments, a real chain, token, facilitator and x402 clients. One test binary, so the
//! gateway is built once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step fails the test"
)]

mod support;

mod audiences;
mod caching;
mod channels;
mod core;
mod deploy;
mod example;
mod facilitators;
mod faults;
mod hostile;
mod layout;
mod local_settler;
mod observability;
mod passes;
mod payments;
mod protocol;
mod replicas;
mod revenue;
mod soak;
mod tls;
mod wallet;

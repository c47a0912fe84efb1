//! x402-gateway: a Pingora reverse proxy that puts an x402 paywall in front of any website or
//! API. This crate root only names the modules; `main.rs` is the command line.

pub mod access;
pub mod admin;
pub mod cli;
pub mod config;
pub mod correlation;
pub mod discovery;
pub mod facilitator;
pub mod facilitator_api;
pub mod header_deadline;
pub mod health;
pub mod listen_owner;
pub mod metrics;
pub mod pathnorm;
pub mod payment;
pub mod proxy;
pub mod reload;
pub mod revenue_page;
pub mod router;
pub mod schemes;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod traces;
pub mod wallet_paywall;
pub mod x402;

//! Talking to x402 facilitators: the HTTP client for `/verify`, `/settle` and `/supported`,
//! and the cached view of what each facilitator supports. Knows nothing of the gate's policy.

pub mod cdp;
pub mod client;
pub mod conf;
pub mod dispatch;
pub mod local;
pub mod pool;
pub mod rpc;
pub mod supported;

pub use client::{FacilitatorClient, FacilitatorError};
pub use conf::{ChainConf, Confirm, FacilitatorConf, FacilitatorKind};

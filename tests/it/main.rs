//! Integration tests: real gateway processes in front of real origin processes, and, for
//! payments, a real chain, token, facilitator and x402 clients. One test binary, so the
//! gateway is built once.

mod support;

mod audiences;
mod caching;
mod core;
mod facilitators;
mod faults;
mod hostile;
mod layout;
mod local_settler;
mod passes;
mod payments;
mod soak;

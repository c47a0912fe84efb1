#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests that start the real gateway in front of
# the demo origin, a local chain (anvil), our EIP-3009 token, a real x402 facilitator and the
# reference x402 clients. Needs Rust, Node.js 20+, cmake, chromium and redis-server (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

# Formatting and lints first: they fail fast and cost no test run.
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

cargo test --locked --workspace "$@"

# The shipped example and rule packs must always validate.
cargo run --locked --quiet --bin x402-gateway -- check -c gateway.toml.example

# A short run of every fuzz target (scripts/fuzz.sh 600 for a longer one).
scripts/fuzz.sh "${X402_FUZZ_SECONDS:-20}"

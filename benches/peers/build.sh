#!/usr/bin/env bash
# benches/peers/build.sh — builds the x402 peers that benches/load.sh runs beside the gateway:
#   x402-axum  benches/peers/axum (the published x402-axum paygate in an axum server), its own
#              workspace and lock file, built into target/peers (never part of the gateway's
#              build or tests)
#   express    the reference @x402/express middleware, from tests/interop's locked npm
#              packages (npm ci there if they are missing)
# Needs a Rust toolchain, cmake (for the TLS crate the peer's HTTP client pulls in) and Node.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/peers} \
  cargo build --release --locked --manifest-path "$ROOT/benches/peers/axum/Cargo.toml"
if [[ ! -d $ROOT/tests/interop/node_modules/@x402/express ]]; then
  npm ci --prefix "$ROOT/tests/interop" --no-audit --no-fund
fi
echo "peers ready: $ROOT/target/peers/release/x402-axum-peer, @x402/express in tests/interop"

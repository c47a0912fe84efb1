#!/usr/bin/env bash
# Watch a real x402 payment: local chain, token, facilitator, demo origin, gateway, client.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
[ -d tests/interop/node_modules ] || npm ci --prefix tests/interop --no-audit --no-fund
INTEROP_QUIET=1 node scripts/see-it-pay.mjs

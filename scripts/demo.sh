#!/usr/bin/env bash
# Starts the demo origin on 127.0.0.1:8080 and the gateway in front of it with the shipped
# gateway.toml.example (proxy on 127.0.0.1:8402, admin on 127.0.0.1:9402). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bins
target/release/demo-origin --listen 127.0.0.1:8080 &
origin=$!
trap 'kill "$origin" 2>/dev/null || true' EXIT INT TERM

cat <<'MSG'

  Try:
    curl -i http://127.0.0.1:8402/                 # free: proxied to the origin
    curl -i http://127.0.0.1:8402/api/weather      # priced: 402 with PAYMENT-REQUIRED
    curl -i http://127.0.0.1:8402/admin/           # blocked: 403
    curl -s http://127.0.0.1:9402/metrics | grep x402_
  Edit rules/10-site.toml and watch the price change without a restart.

MSG
target/release/x402-gateway run -c gateway.toml.example

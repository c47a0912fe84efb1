#!/usr/bin/env bash
# Runs the soak test for SECONDS (default 600, the documented ten-minute soak; `cargo test`
# runs it for 20): the real gateway under mixed free, unpaid, paid and reload traffic, with the
# built-in settler paying on a local chain. Prints RSS after warm-up and at the end, counts
# and rates per class; fails on RSS growth over 10 % (+4 MiB), any unexpected answer, or a
# ledger that differs from the token transfers on chain.
#   scripts/soak.sh        # ten minutes
#   scripts/soak.sh 120    # two
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"

for tool in cargo node npm cmake; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (see README, 'Requirements')" >&2; exit 1; }
done

# The interop harness (anvil, the token), as scripts/test.sh installs it.
lock=tests/interop/package-lock.json
stamp=tests/interop/node_modules/.x402-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
  npm ci --prefix tests/interop --no-audit --no-fund
  cp "$lock" "$stamp"
fi

X402_SOAK_SECONDS="$seconds" cargo test --locked --test it soak -- --nocapture --test-threads 1

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

scripts/deps.sh

X402_SOAK_SECONDS="$seconds" cargo test --locked --test it soak -- --nocapture --test-threads 1

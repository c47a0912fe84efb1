#!/usr/bin/env bash
# Checks the tools the tests need and installs the interop harness (tests/interop: anvil, the
# token, the reference x402 packages) at the exact versions of its lock file, again only when
# the lock changes, and the Python tools of the deployment tests (tests/interop/requirements.txt)
# in tests/interop/.venv, again only when that list changes. Called by scripts/test.sh and
# scripts/soak.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo node npm cmake python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (see README, 'Requirements')" >&2; exit 1; }
done

lock=tests/interop/package-lock.json
stamp=tests/interop/node_modules/.x402-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
  npm ci --prefix tests/interop --no-audit --no-fund
  cp "$lock" "$stamp"
fi

venv=tests/interop/.venv
req=tests/interop/requirements.txt
if [ ! -f "$venv/.x402-req-stamp" ] || ! cmp -s "$req" "$venv/.x402-req-stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.x402-req-stamp"
fi

# The wallet paywall page for the browser payment test (the reference @x402/paywall EVM page,
# pinned and integrity-checked by scripts/paywall-bundle.sh; not committed).
page=tests/interop/paywall/evm-paywall.html
if [ ! -f "$page" ] || ! cmp -s scripts/paywall-bundle.sh tests/interop/paywall/.stamp; then
  scripts/paywall-bundle.sh "$page"
  cp scripts/paywall-bundle.sh tests/interop/paywall/.stamp
fi

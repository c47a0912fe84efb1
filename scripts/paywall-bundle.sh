#!/usr/bin/env bash
# Makes the wallet paywall page ([paywall] wallet): the EVM page of the reference
# `@x402/paywall` package, fetched with `npm pack` at a pinned version and checked against its
# published integrity, written unmodified to OUT (default target/paywall/evm-paywall.html).
# The gateway serves that file itself (no CDN) with each request's requirements spliced in.
#   scripts/paywall-bundle.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.12.0
integrity="sha512-CM+urOudWVKrmOpt0/KQx6ZUKSopMp2pujPSQsjMVNcFbJtlMzs36QQ1Usxj/2Iy61T66LN+YdT/4mJSZdCdqw=="
out="${1:-target/paywall/evm-paywall.html}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@x402/paywall@$version" >/dev/null)
tarball="$work/x402-paywall-$version.tgz"
got=$(node -e 'const c=require("crypto"),f=require("fs");console.log("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tarball")
if [ "$got" != "$integrity" ]; then
  echo "@x402/paywall@$version: integrity $got, expected $integrity" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist/esm/evm/index.js
node scripts/paywall-extract.mjs "$work/package/dist/esm/evm/index.js" "$out"

#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20; the CI smoke run). A longer run:
#   scripts/fuzz.sh 600
# New interesting inputs go to fuzz/target/corpus/<target> (not committed); crashes land in
# fuzz/artifacts/<target> and make this script fail. Turn a crash into a regression test by
# adding its input to the target's seed corpus in fuzz/corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
# cargo-fuzz needs nightly-only compiler flags (sanitizer coverage); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
  mkdir -p "target/corpus/$target"
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run -O "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "Done [0-9]+ runs|stat::number_of_executed_units|ERROR|panicked" || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz target $target found a crash: fuzz/artifacts/$target" >&2
    exit 1
  fi
done

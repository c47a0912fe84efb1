#!/usr/bin/env bash
# benches/instructions.sh — user-space instructions per request on the free path, counted by
# callgrind: nginx, bare Pingora, Pingora + fwd and the gateway (free rule, the 402 answer, a
# pass on every request, a distinct pre-signed payment on every request settled through the
# loopback bench facilitator, as in benches/load.sh, and the next cumulative voucher of a
# batch-settlement channel on every request).
# Unlike req/s these counts do not move with other load on the machine, so they show small
# changes that benches/load.sh cannot resolve on a shared machine.
#
# Fresh machine (Debian/Ubuntu, run from the repository root):
#   apt-get install -y valgrind nginx-light wrk
#   cargo build --release --bins --examples
#   benches/instructions.sh                 # or: TARGETS="bare_pingora gw_free" SECONDS_RUN=5 ...
#
# Each server runs alone under `valgrind --tool=callgrind` (one server thread, nginx one worker
# without a master) in front of the demo origin (not instrumented). wrk warms it up for
# WARMUP seconds, the counters are zeroed, wrk runs SECONDS_RUN seconds with CONNS connections,
# and the counters are dumped: instructions / completed requests. What this leaves out: kernel
# time (the syscalls are about the same for every proxy here: some 16 us of the 20-35 us a
# request costs), and instruction cost (a `rep movsb` copy counts once per byte, so large
# copies look dearer than they are; valgrind hides SHA extensions, so hashing looks dearer).
#
# gw_voucher: vouchers over VOUCHER_CHANNELS=50 channels, consecutive requests on different
# channels; the warm-up pays from another payer's channels, so the counted run's first voucher
# on each of its channels (an unknown channel: one /verify) is in the count, 50 of thousands.
#
# Settings (environment): TARGETS="nginx bare_pingora pingora_fwd gw_free gw_402 gw_pass gw_paid gw_voucher"
#   SECONDS_RUN=10 WARMUP=3 CONNS=10 BODY=128 KEEP_TMP=1 PAY_COUNT=30000 (payments pre-signed
#   for gw_paid: warm-up and counted run together must not use them all)
#   GATEWAY_BIN ORIGIN_BIN BARE_BIN FACILITATOR_BIN PAYMENTS_BIN NGINX_BIN WRK_BIN
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=${TARGETS:-"nginx bare_pingora pingora_fwd gw_free gw_402 gw_pass gw_paid gw_voucher"}
VOUCHER_CHANNELS=${VOUCHER_CHANNELS:-50}
# The warm-up's payer on the voucher path (anvil's second development key, public).
WARMUP_PAYER=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
PAY_COUNT=${PAY_COUNT:-30000}
SECONDS_RUN=${SECONDS_RUN:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-10}
BODY=${BODY:-128}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/x402-gateway}
ORIGIN_BIN=${ORIGIN_BIN:-$ROOT/target/release/demo-origin}
BARE_BIN=${BARE_BIN:-$ROOT/target/release/examples/bare-pingora}
FACILITATOR_BIN=${FACILITATOR_BIN:-$ROOT/target/release/examples/bench-facilitator}
PAYMENTS_BIN=${PAYMENTS_BIN:-$ROOT/target/release/examples/bench-payments}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
WRK_BIN=${WRK_BIN:-$(command -v wrk || echo wrk)}

die() { echo "instructions.sh: $*" >&2; exit 1; }
for b in valgrind callgrind_annotate callgrind_control "$WRK_BIN" perl; do
  command -v "$b" >/dev/null || die "$b not found: apt-get install -y valgrind wrk perl"
done
for b in "$GATEWAY_BIN" "$ORIGIN_BIN" "$BARE_BIN" "$FACILITATOR_BIN" "$PAYMENTS_BIN"; do
  [[ -x $b ]] || die "$b not found: run cargo build --release --bins --examples first"
done

BENCH_NAME=x402-instr
# shellcheck source=benches/support/common.sh
source "$ROOT/benches/support/common.sh"
WAIT_TRIES=1200   # start-up under valgrind is slow
THREADS=1
# The gateway's facilitator: approves at once (called on the paid path and to buy the pass).
FAC_PORT=$(free_port)
"$FACILITATOR_BIN" --listen "127.0.0.1:$FAC_PORT" >"$TMP/facilitator.log" 2>&1 &
FAC_PID=$!; STARTED+=("$FAC_PID")
wait_port "$FAC_PORT" "$FAC_PID" bench-facilitator "$TMP/facilitator.log"

ORIGIN_PORT=$(free_port)
"$ORIGIN_BIN" --listen "127.0.0.1:$ORIGIN_PORT" --name bench >"$TMP/origin.log" 2>&1 &
ORIGIN_PID=$!; STARTED+=("$ORIGIN_PID")
wait_port "$ORIGIN_PORT" "$ORIGIN_PID" demo-origin "$TMP/origin.log"

# The command line of target $1 listening on port $2 (printed one word per line).
command_of() {
  local t=$1 port=$2 d=$TMP/$1
  mkdir -p "$d"
  case $t in
    nginx)
      write_nginx_config "$d" "$port" off 1
      printf '%s\n' "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" ;;
    bare_pingora)
      printf '%s\n' "$BARE_BIN" --listen "127.0.0.1:$port" --origin "127.0.0.1:$ORIGIN_PORT" ;;
    pingora_fwd)
      printf '%s\n' "$BARE_BIN" --listen "127.0.0.1:$port" --origin "127.0.0.1:$ORIGIN_PORT" --forwarded ;;
    gw_free | gw_402 | gw_pass | gw_paid)
      write_gateway_config "$d" "$port"
      printf '%s\n' "$GATEWAY_BIN" run -c "$d/gateway.toml" ;;
    gw_voucher)
      write_gateway_config "$d" "$port" "" "" "$VOUCHER_RULE"
      printf '%s\n' "$GATEWAY_BIN" run -c "$d/gateway.toml" ;;
    *) die "unknown target $t" ;;
  esac
}

declare -A LABEL=([nginx]="nginx proxy" [bare_pingora]="bare Pingora" [pingora_fwd]="Pingora + fwd"
  [gw_free]="gateway free" [gw_402]="gateway 402" [gw_pass]="gateway pass" [gw_paid]="gateway paid"
  [gw_voucher]="gateway voucher")

# The wrk script of target $1 (Host, pass or payments) once its server listens on port $2;
# empty: plain GETs.
script_of() {
  local t=$1 port=$2 url=http://127.0.0.1:$2/fixed/$BODY head token host extra
  case $t in
    gw_pass)
      sign_payments "$url" 1 pass.bench "$TMP/$t/payment.txt" || return 1
      head=$(http_head "$url" "Host: pass.bench" "PAYMENT-SIGNATURE: $(head -n 1 "$TMP/$t/payment.txt")")
      token=$(header_value x402-pass <<<"$head") || die "$t: the paid request got no pass: $head"
      printf 'wrk.headers["Host"] = "pass.bench"\nwrk.headers["X402-Pass"] = "%s"\n' "$token" >"$TMP/$t/wrk.lua"
      echo "$TMP/$t/wrk.lua" ;;
    gw_paid | gw_voucher)
      host=paid.bench; extra=()
      if [[ $t == gw_voucher ]]; then
        host=voucher.bench; extra=(--channels "$VOUCHER_CHANNELS")
      fi
      sign_payments "$url" "$PAY_COUNT" "$host" "$TMP/$t/warmup.txt" "${extra[@]}" \
        ${extra[0]:+--key "$WARMUP_PAYER"} || return 1
      sign_payments "$url" "$PAY_COUNT" "$host" "$TMP/$t/run.txt" "${extra[@]}" || return 1
      cat >"$TMP/$t/wrk.lua" <<LUA
local payments, count, i = {}, 0, 0
local headers = { ["Host"] = "$host" }
function init(args)
  for line in io.lines(args[1]) do count = count + 1; payments[count] = line end
end
function request()
  i = i + 1
  if i > count then error("out of pre-signed payments: set PAY_COUNT higher") end
  headers["PAYMENT-SIGNATURE"] = payments[i]
  return wrk.format(nil, nil, headers)
end
LUA
      echo "$TMP/$t/wrk.lua" ;;
  esac
}
declare -A PER_REQ=()
for t in $TARGETS; do
  [[ -n ${LABEL[$t]:-} ]] || die "unknown target $t"
  port=$(free_port)
  mapfile -t cmd < <(command_of "$t" "$port")
  path=/fixed/$BODY
  [[ $t == gw_402 ]] && path=/api/weather
  (cd "$TMP/$t" && exec valgrind --tool=callgrind --callgrind-out-file="$TMP/$t/callgrind.out" \
    "${cmd[@]}" >"$TMP/$t/stdout.log" 2>"$TMP/$t/valgrind.log") &
  pid=$!; STARTED+=("$pid")
  wait_port "$port" "$pid" "$t" "$TMP/$t/valgrind.log"
  script=$(script_of "$t" "$port") || die "$t: set-up failed"
  lua=(); [[ -n $script ]] && lua=(-s "$script")
  # gw_paid: the warm-up and the counted run each walk their own file of payments.
  "$WRK_BIN" -t1 -c"$CONNS" -d"${WARMUP}s" "${lua[@]}" "http://127.0.0.1:$port$path" -- "$TMP/$t/warmup.txt" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  out=$("$WRK_BIN" -t1 -c"$CONNS" -d"${SECONDS_RUN}s" "${lua[@]}" "http://127.0.0.1:$port$path" -- "$TMP/$t/run.txt")
  [[ $t != gw_402 ]] && grep -q 'Non-2xx\|Socket errors' <<<"$out" && die "$t: failed requests: $out"
  callgrind_control -d "$pid" >/dev/null 2>&1
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  stop_pid "$pid"
  dump=$(ls "$TMP/$t"/callgrind.out.* 2>/dev/null | sort | tail -n 1)
  [[ -n $dump && ${n:-0} -gt 0 ]] || die "$t: no profile or no requests"
  ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  PER_REQ[$t]=$((ir / n))
  printf '  %-14s %8d requests  %8d instructions/request\n' "${LABEL[$t]}" "$n" "${PER_REQ[$t]}"
done

echo
echo "ratios (instructions per request; lower is better), each target to those before it"
read -r -a ORDER <<<"$TARGETS"
for ((i = 0; i < ${#ORDER[@]}; i++)); do
  base=${ORDER[i]}
  for ((j = i + 1; j < ${#ORDER[@]}; j++)); do
    t=${ORDER[j]}
    awk -v a="${LABEL[$t]}" -v b="${LABEL[$base]}" -v x="${PER_REQ[$t]}" -v y="${PER_REQ[$base]}" \
      'BEGIN { printf "  %-14s / %-14s %6.2fx\n", a, b, x / y }'
  done
done

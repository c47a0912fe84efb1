#!/usr/bin/env bash
# benches/load.sh — the performance report: origin direct, nginx as a plain reverse proxy, a
# bare Pingora pass-through, and the gateway's free, 402, pass and paid paths, driven by wrk in
# the same run, interleaved, several rounds.
#
# Fresh machine (Debian/Ubuntu, run from the repository root):
#   apt-get install -y nginx-light wrk     # plus cmake and a Rust toolchain for the build
#   cargo build --release --bins --examples
#   benches/peers/build.sh                 # the x402 peers: x402-axum build, npm packages
#   benches/load.sh                        # or: ROUNDS=3 DURATION=5 benches/load.sh
#
# Targets (all behind the same demo origin, same body, same wrk connections but gw_paid_c64's):
#   origin        the demo origin directly (the ceiling)
#   nginx         nginx reverse proxy: upstream keepalive, X-Forwarded-* set, access_log off
#   bare_pingora  examples/bare-pingora.rs: Pingora's proxy with only upstream_peer, the
#                 gateway's Pingora version, allocator and server settings
#   pingora_fwd   examples/bare-pingora.rs --forwarded: the same, plus the work nginx is
#                 configured to do and any production proxy does: X-Forwarded-For/-Proto/-Host
#                 set, and the gateway's default upstream timeouts (read/write 30 s, idle 60 s).
#                 gateway free / pingora_fwd is the cost of the gateway's own per-request work
#                 (routing, metrics, header deadline), not of Pingora or of forwarding
#   gw_free       the gateway, a free rule
#   gw_402        the gateway, a priced rule without payment: a 402 answer, origin untouched
#   gw_pass       the gateway, a priced rule, every request carrying a valid pass token
#                 (HMAC, issued by the gateway after one paid request, quota never reached)
#   gw_paid       the gateway, a priced rule, every request carrying a distinct valid x402 v2
#                 PAYMENT-SIGNATURE (pre-signed by examples/bench-payments.rs): decode, EIP-3009
#                 checks and signature recovery, replay guard, /verify and /settle against
#                 examples/bench-facilitator.rs (a loopback facilitator that approves at once),
#                 receipt ledger on. A nonce is accepted once, so this gateway is restarted
#                 (fresh replay state) before every run and the same payments are replayed.
#   gw_free_redis as gw_free, on a gateway whose state store is a local redis-server
#   gw_pass_redis as gw_pass, on a gateway whose state store is a local redis-server (pass
#                 quotas and revocations shared through it); its CPU includes redis-server's
#   ex_402, ex_paid  the reference Node middleware, @x402/express 2.27 (x402ResourceServer +
#                 HTTPFacilitatorClient + ExactEvmScheme, tests/interop/lib/express-server.mjs)
#                 with a handler that returns the origin's body itself (N bytes of "x", no
#                 proxying: less work than the gateway does), priced as the gateway's rule, its
#                 /verify and /settle against the same bench facilitator; 402: no payment;
#                 paid: the same kind of distinct pre-signed payments, signed for its own 402
#   ax_402, ax_paid  the same with the published x402-axum 2.0.2 paygate in an axum server
#                 (benches/peers/axum, one tokio thread; built by benches/peers/build.sh)
#   gw_voucher    the gateway, a `batch-settlement` rule (Host voucher.bench), every request
#                 carrying the next cumulative voucher of one of 1000 channels (pre-signed by
#                 examples/bench-payments.rs --channels; consecutive requests on different
#                 channels, each channel's vouchers in order): the voucher checked locally
#                 (EIP-712 recovery, the channel's record in the memory store, a pending charge,
#                 the commit after the origin answered), no facilitator call except each
#                 channel's first request (an unknown channel's /verify, 1000 per run). The
#                 gateway is restarted before every run and stopped (SIGTERM) after it: its last
#                 claimer pass claims every channel, and the bench facilitator counts the claim
#                 and sweep calls: "claim transactions per 10 000 vouchers" at default settings
#                 (claim interval 60 s, 100 channels per claim). Goals: >= 0.7x gw_free req/s,
#                 p99 <= 1.3x gw_free's, <= 10 claim transactions per 10 000 vouchers.
#   gw_paid_redis as gw_paid, with the same redis-server as the state store (reservations,
#                 verify cache, settlements in flight); the store is emptied before each run
#   gw_paid_dead  as gw_paid, but the network has a pool of two facilitators: first (priority
#                 0) a dead one, a loopback port nobody listens on (connections refused), then
#                 (priority 1) the same bench facilitator. Default pool settings, written out
#                 (failure_threshold 3, max_eject_ms 30000): after 3 failures in a row the dead
#                 one is out of rotation for 1 s, doubling with each further failure up to
#                 30 s (the requests already in flight to it count too), then retried by a
#                 /supported probe or a trial call. /verify fails over to the healthy one,
#                 /settle goes to the one that verified. Each run (fresh gateway) must show
#                 the dead one ejected (gateway log), else the run fails. Goal: >= 0.95x
#                 gw_paid req/s.
#   gw_paid_c64   as gw_paid with 64 connections (not CONNS) paced to PACED_RATE req/s in all
#                 (below saturation): the p99 of a paid request's time outside facilitator calls
#                 (x402_payment_gateway_seconds: from the payment check to the receipt, the
#                 origin's answer included) is read from the gateway's histogram after each
#                 run. Goal: < 1 ms.
#
# Every server listens on 127.0.0.1 on a port picked free at start (bind test). nginx runs as
# the current user from a generated config in a temp dir (daemon off, pid and logs there,
# access_log off, upstream keepalive); the gateway's access log is off too. The temp dir and
# every process started here are removed on exit.
#
# Reported per target, as medians over the rounds: req/s, p50, p99 (wrk, via a lua `done`
# hook), server CPU µs per request (utime+stime from /proc/<pid>/stat of every process of that
# server, nginx master + workers, before/after each run, divided by completed requests — far
# less sensitive than req/s to CPU steal on a shared machine), origin CPU µs per request while
# proxying (should be the same behind every proxy), and peak RSS (VmHWM; for gw_paid of the
# last instance), then the ratios to nginx and to bare Pingora, and the targets. Any failed
# request or unexpected status (every proxied target must answer 200, gw_402 402) fails the run
# (exit 1) after the report. On a shared machine compare ratios from one run, never absolute
# figures across runs.
#
# Settings (environment):
#   ROUNDS=5 DURATION=10 (s per run) WARMUP=2 (s per target, once, not counted)
#   CONNS=50 WRK_THREADS=1 THREADS=1 (server threads = nginx worker_processes)
#   BODY=128 (origin response bytes)
#   PACED_RATE=2000 (gw_paid_c64: total req/s its 64 connections are paced to)
#   TARGETS="origin nginx bare_pingora pingora_fwd gw_free gw_402 gw_pass gw_paid gw_paid_dead
#            gw_paid_c64 gw_voucher ex_402 ex_paid ax_402 ax_paid
#            gw_free_redis gw_pass_redis gw_paid_redis" (the last three need redis-server)
#   PAY_COUNT (payments pre-signed per run; default: sized from the warm-up rate)
#   GATEWAY_BIN ORIGIN_BIN BARE_BIN FACILITATOR_BIN PAYMENTS_BIN NGINX_BIN WRK_BIN
#   KEEP_TMP=1 keeps the temp dir (configs, logs, payments)
#
# Adding a target: define
#   t_<name>_start   start what it needs (idempotent; helpers below keep PIDs for cleanup)
#   t_<name>_url     the URL wrk drives
#   t_<name>_pids    the PIDs whose CPU is charged to it (one per line or space separated)
#   t_<name>_status  the HTTP status every response must have
#   LABEL[<name>]    the name printed in the report
# optionally
#   t_<name>_script  the wrk lua script (default: the report hook alone)
#   t_<name>_check   the start-up check (default: one GET of the URL must give the status)
#   t_<name>_prepare run before every wrk run of the target (e.g. a restart)
#   t_<name>_after   run after every wrk run with the number of requests made
# and add <name> to TARGETS.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-1}
THREADS=${THREADS:-1}
BODY=${BODY:-128}
PACED_RATE=${PACED_RATE:-2000}
[[ $PACED_RATE =~ ^[1-9][0-9]*$ ]] || { echo "PACED_RATE must be a positive integer (req/s)" >&2; exit 2; }
TARGETS=${TARGETS:-"origin nginx bare_pingora pingora_fwd gw_free gw_402 gw_pass gw_paid gw_paid_dead gw_paid_c64 gw_voucher ex_402 ex_paid ax_402 ax_paid gw_free_redis gw_pass_redis gw_paid_redis"}
PAY_COUNT=${PAY_COUNT:-}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/x402-gateway}
ORIGIN_BIN=${ORIGIN_BIN:-$ROOT/target/release/demo-origin}
BARE_BIN=${BARE_BIN:-$ROOT/target/release/examples/bare-pingora}
FACILITATOR_BIN=${FACILITATOR_BIN:-$ROOT/target/release/examples/bench-facilitator}
PAYMENTS_BIN=${PAYMENTS_BIN:-$ROOT/target/release/examples/bench-payments}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
REDIS_BIN=${REDIS_BIN:-$(command -v redis-server || echo /usr/bin/redis-server)}
WRK_BIN=${WRK_BIN:-$(command -v wrk || echo wrk)}
AXUM_BIN=${AXUM_BIN:-$ROOT/target/peers/release/x402-axum-peer}
NODE_BIN=${NODE_BIN:-$(command -v node || echo node)}
EXPRESS_JS=$ROOT/tests/interop/lib/express-server.mjs

die() { echo "load.sh: $*" >&2; exit 1; }
read -r -a TLIST <<<"$TARGETS"
needs() { [[ " ${TLIST[*]} " == *" $1 "* ]]; }
need_bin() { [[ -x $1 ]] || die "$1 not found: run cargo build --release --bins --examples first"; }
need_bin "$ORIGIN_BIN"
if needs gw_free || needs gw_402 || needs gw_pass || needs gw_paid || needs gw_paid_dead || needs gw_paid_c64 \
  || needs gw_voucher || needs gw_free_redis || needs gw_pass_redis || needs gw_paid_redis; then
  need_bin "$GATEWAY_BIN"; need_bin "$FACILITATOR_BIN"
fi
if needs gw_pass || needs gw_paid || needs gw_paid_dead || needs gw_paid_c64 || needs gw_voucher || needs gw_pass_redis \
  || needs gw_paid_redis; then
  need_bin "$PAYMENTS_BIN"
fi
if needs gw_free_redis || needs gw_pass_redis || needs gw_paid_redis; then
  [[ -x $REDIS_BIN ]] || die "redis-server not found: apt-get install -y redis-server"
fi
if needs ex_402 || needs ex_paid || needs ax_402 || needs ax_paid; then
  need_bin "$FACILITATOR_BIN"; need_bin "$PAYMENTS_BIN"
fi
if needs ax_402 || needs ax_paid; then
  [[ -x $AXUM_BIN ]] || die "$AXUM_BIN not found: run benches/peers/build.sh first"
fi
if needs ex_402 || needs ex_paid; then
  [[ -d $ROOT/tests/interop/node_modules/@x402/express ]] \
    || die "@x402/express not installed: run benches/peers/build.sh first"
fi
if needs bare_pingora || needs pingora_fwd; then need_bin "$BARE_BIN"; fi
if needs nginx; then [[ -x $NGINX_BIN ]] || die "nginx not found: apt-get install -y nginx-light"; fi
command -v "$WRK_BIN" >/dev/null || die "wrk not found: apt-get install -y wrk"
command -v perl >/dev/null || command -v python3 >/dev/null || die "need perl or python3 to pick free ports"

BENCH_NAME=x402-load
# shellcheck source=benches/support/common.sh
source "$ROOT/benches/support/common.sh"

# ---- helpers -------------------------------------------------------------------------------

# utime+stime (clock ticks) summed over the given PIDs.
cpu_ticks() {
  local total=0 pid line rest
  for pid in "$@"; do
    IFS= read -r line < "/proc/$pid/stat" || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

# The direct children of a PID (nginx workers).
children_of() {
  local parent=$1 f line rest
  for f in /proc/[0-9]*/stat; do
    IFS= read -r line < "$f" 2>/dev/null || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    [[ $2 == "$parent" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

# Sum of peak RSS (VmHWM) of the given PIDs, in KiB.
# A process stopped on purpose (gw_voucher after each run) left its figure in $TMP/hwm.<pid>.
hwm_kib() {
  local total=0 pid v
  for pid in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || cat "$TMP/hwm.$pid" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

TICK_US=$((1000000 / $(getconf CLK_TCK)))

# ---- servers -------------------------------------------------------------------------------

ORIGIN_PORT= ORIGIN_PID=
start_origin() {
  [[ -n $ORIGIN_PID ]] && return 0
  ORIGIN_PORT=$(free_port)
  "$ORIGIN_BIN" --listen "127.0.0.1:$ORIGIN_PORT" --name bench >"$TMP/origin.log" 2>&1 &
  ORIGIN_PID=$!; STARTED+=("$ORIGIN_PID")
  wait_port "$ORIGIN_PORT" "$ORIGIN_PID" demo-origin "$TMP/origin.log"
}

NGINX_PORT= NGINX_PID= NGINX_PIDS=
start_nginx() {
  [[ -n $NGINX_PID ]] && return 0
  start_origin
  NGINX_PORT=$(free_port)
  local d=$TMP/nginx
  write_nginx_config "$d" "$NGINX_PORT" on "$THREADS"
  "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout.log" 2>&1 &
  NGINX_PID=$!; STARTED+=("$NGINX_PID")
  wait_port "$NGINX_PORT" "$NGINX_PID" nginx "$d/error.log"
  local workers=
  for _ in $(seq 100); do
    workers=$(children_of "$NGINX_PID")
    [[ $(wc -w <<<"$workers") -ge $THREADS ]] && break
    sleep 0.05
  done
  NGINX_PIDS="$NGINX_PID $workers"
}

# bare-pingora as target $1 (bare_pingora, pingora_fwd), with extra arguments after it.
declare -A BARE_PORT=() BARE_PID=()
start_bare() {
  local t=$1
  shift
  [[ -n ${BARE_PID[$t]:-} ]] && return 0
  start_origin
  BARE_PORT[$t]=$(free_port)
  "$BARE_BIN" --listen "127.0.0.1:${BARE_PORT[$t]}" --origin "127.0.0.1:$ORIGIN_PORT" \
    --threads "$THREADS" "$@" >"$TMP/$t.log" 2>&1 &
  BARE_PID[$t]=$!; STARTED+=("${BARE_PID[$t]}")
  wait_port "${BARE_PORT[$t]}" "${BARE_PID[$t]}" "bare-pingora ($t)" "$TMP/$t.log"
}

FAC_PORT= FAC_PID=
start_facilitator() {
  [[ -n $FAC_PID ]] && return 0
  FAC_PORT=$(free_port)
  "$FACILITATOR_BIN" --listen "127.0.0.1:$FAC_PORT" >"$TMP/facilitator.log" 2>&1 &
  FAC_PID=$!; STARTED+=("$FAC_PID")
  wait_port "$FAC_PORT" "$FAC_PID" bench-facilitator "$TMP/facilitator.log"
}

# Starts a gateway on folder $1, port $2; sets LAST_PID.
LAST_PID=
run_gateway() {
  local d=$1 port=$2
  (cd "$d" && exec "$GATEWAY_BIN" run -c "$d/gateway.toml" >"$d/stdout.log" 2>>"$d/gateway.log") &
  LAST_PID=$!; STARTED+=("$LAST_PID")
  wait_port "$port" "$LAST_PID" x402-gateway "$d/gateway.log"
}

GATEWAY_PORT= GATEWAY_PID=
start_gateway() {
  [[ -n $GATEWAY_PID ]] && return 0
  start_origin; start_facilitator
  GATEWAY_PORT=$(free_port)
  write_gateway_config "$TMP/gateway" "$GATEWAY_PORT"
  run_gateway "$TMP/gateway" "$GATEWAY_PORT"
  GATEWAY_PID=$LAST_PID
}

# A local redis-server, no persistence: the state store of the *_redis targets.
REDIS_PORT= REDIS_PID=
start_redis() {
  [[ -n $REDIS_PID ]] && return 0
  REDIS_PORT=$(free_port)
  mkdir -p "$TMP/redis"
  "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$TMP/redis" >"$TMP/redis/redis.log" 2>&1 &
  REDIS_PID=$!; STARTED+=("$REDIS_PID")
  wait_port "$REDIS_PORT" "$REDIS_PID" redis-server "$TMP/redis/redis.log"
}
redis_state() {
  printf '[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\nreplica_id = "bench"\n' "$REDIS_PORT"
}
# Empties the store (a fresh replay guard, as a restarted memory gateway has).
redis_flush() {
  exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || die "redis-server does not answer"
  printf 'FLUSHALL\r\n' >&3
  local reply
  read -r reply <&3
  exec 3>&-
  [[ $reply == +OK* ]] || die "FLUSHALL answered $reply"
}
# Commands redis-server has processed so far, and reads from its clients' sockets (each
# read is one round trip: a command or a pipeline the gateway sent in one write).
redis_commands() {
  exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || die "redis-server does not answer"
  printf 'INFO stats\r\n' >&3
  local line n=0 reads=0
  while read -r -t 2 line <&3; do
    line=${line%$'\r'}
    [[ $line == total_commands_processed:* ]] && n=${line#*:}
    [[ $line == total_reads_processed:* ]] && { reads=${line#*:}; break; }
  done
  exec 3>&-
  echo "$n $reads"
}

# Store operations the requests of gateway folder $1 waited for so far: one round trip each
# (a command, or a pipeline sent in one write), from the gateway's x402_state_seconds
# histogram; the background refreshes of the mirrored sets and the sweeps of pending
# settlements (revocations, limits, pending, lease) are left out.
store_waits() {
  local port line n=0
  port=$(cat "$1/admin_port")
  exec 3<>"/dev/tcp/127.0.0.1/$port" || die "admin port $port does not answer"
  printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
  n=$(awk '/^x402_state_seconds_count\{/ && !/op="(revocations|limits|pending|lease)"/ { s += $2 }
           END { print s + 0 }' <&3)
  exec 3>&- 3<&-
  echo "$n"
}
# The gateway folder of a *_redis target.
redis_dir() { [[ $1 == gw_paid_redis ]] && echo "$TMP/gw_paid_redis" || echo "$TMP/gateway-redis"; }

REDIS_GW_PORT= REDIS_GW_PID=
start_redis_gateway() {
  [[ -n $REDIS_GW_PID ]] && return 0
  start_origin; start_facilitator; start_redis
  REDIS_GW_PORT=$(free_port)
  write_gateway_config "$TMP/gateway-redis" "$REDIS_GW_PORT" "" "$(redis_state)"
  run_gateway "$TMP/gateway-redis" "$REDIS_GW_PORT"
  REDIS_GW_PID=$LAST_PID
}

# The paid-path gateways (target $1: gw_paid, gw_paid_dead, gw_paid_redis, gw_voucher): each
# its own process in $TMP/$1, restarted before every run (fresh replay guard and channels;
# gw_paid_redis's store is emptied); gw_paid_dead's has the dead facilitator, gw_voucher's the
# channel rule.
declare -A PAID_PORT=() PAID_PID=() PAID_LOG_MARK=()
restart_paid_gateway() {
  local t=$1 dead= extra= rules=
  start_origin; start_facilitator
  [[ -n ${PAID_PID[$t]:-} ]] && stop_pid "${PAID_PID[$t]}"
  if [[ $t == gw_paid_redis ]]; then
    start_redis; redis_flush
    extra=$(redis_state)
  fi
  if [[ $t == gw_paid_dead ]]; then
    if [[ -z $DEAD_FAC_PORT ]]; then DEAD_FAC_PORT=$(free_port); fi
    dead=$DEAD_FAC_PORT
    ! (exec 3<>"/dev/tcp/127.0.0.1/$dead") 2>/dev/null \
      || die "gw_paid_dead: something listens on the dead facilitator's port $dead"
  fi
  [[ $t == gw_voucher ]] && rules=$VOUCHER_RULE
  PAID_PORT[$t]=$(free_port)
  write_gateway_config "$TMP/$t" "${PAID_PORT[$t]}" "$dead" "$extra" "$rules"
  # Log lines before this instance: paid_after reads only this instance's.
  PAID_LOG_MARK[$t]=0
  [[ -f $TMP/$t/gateway.log ]] && PAID_LOG_MARK[$t]=$(wc -l <"$TMP/$t/gateway.log")
  run_gateway "$TMP/$t" "${PAID_PORT[$t]}"
  PAID_PID[$t]=$LAST_PID
}

# ---- targets -------------------------------------------------------------------------------

declare -A LABEL=(
  [origin]="origin direct"
  [nginx]="nginx proxy"
  [bare_pingora]="bare Pingora"
  [pingora_fwd]="Pingora + fwd"
  [gw_free]="gateway free"
  [gw_402]="gateway 402"
  [gw_pass]="gateway pass"
  [gw_paid]="gateway paid"
  [gw_paid_dead]="paid, dead fac"
  [gw_paid_c64]="paid, 64 paced"
  [gw_free_redis]="free, redis"
  [gw_pass_redis]="pass, redis"
  [gw_paid_redis]="paid, redis"
  [gw_voucher]="gateway voucher"
  [ex_402]="express 402"
  [ex_paid]="express paid"
  [ax_402]="x402-axum 402"
  [ax_paid]="x402-axum paid"
)

t_origin_start()  { start_origin; }
t_origin_url()    { echo "http://127.0.0.1:$ORIGIN_PORT/fixed/$BODY"; }
t_origin_pids()   { echo "$ORIGIN_PID"; }
t_origin_status() { echo 200; }

t_nginx_start()   { start_nginx; }
t_nginx_url()     { echo "http://127.0.0.1:$NGINX_PORT/fixed/$BODY"; }
t_nginx_pids()    { echo "$NGINX_PIDS"; }
t_nginx_status()  { echo 200; }

t_bare_pingora_start()  { start_bare bare_pingora; }
t_bare_pingora_url()    { echo "http://127.0.0.1:${BARE_PORT[bare_pingora]}/fixed/$BODY"; }
t_bare_pingora_pids()   { echo "${BARE_PID[bare_pingora]}"; }
t_bare_pingora_status() { echo 200; }

t_pingora_fwd_start()  { start_bare pingora_fwd --forwarded; }
t_pingora_fwd_url()    { echo "http://127.0.0.1:${BARE_PORT[pingora_fwd]}/fixed/$BODY"; }
t_pingora_fwd_pids()   { echo "${BARE_PID[pingora_fwd]}"; }
t_pingora_fwd_status() { echo 200; }

t_gw_free_start()  { start_gateway; }
t_gw_free_url()    { echo "http://127.0.0.1:$GATEWAY_PORT/fixed/$BODY"; }
t_gw_free_pids()   { echo "$GATEWAY_PID"; }
t_gw_free_status() { echo 200; }

t_gw_402_start()  { start_gateway; }
t_gw_402_url()    { echo "http://127.0.0.1:$GATEWAY_PORT/api/weather"; }
t_gw_402_pids()   { echo "$GATEWAY_PID"; }
t_gw_402_status() { echo 402; }

# gw_pass: one real payment through the fast facilitator buys a pass; wrk then sends it on
# every request (X402-Pass header), Host pass.bench.
# Buys a pass for target $1 with one real payment through the fast facilitator; writes the
# wrk script $TMP/$1.lua that sends it (X402-Pass header, Host pass.bench) on every request.
declare -A PASS_TOKEN=()
buy_pass() {
  local t=$1 url head
  url=$("t_${t}_url")
  sign_payments "$url" 1 pass.bench "$TMP/$t-payment.txt"
  head=$(http_head "$url" "Host: pass.bench" "PAYMENT-SIGNATURE: $(head -n 1 "$TMP/$t-payment.txt")")
  PASS_TOKEN[$t]=$(header_value x402-pass <<<"$head") || die "$t: the paid request got no pass: $head"
  {
    cat "$TMP/report.lua"
    printf 'wrk.headers["Host"] = "pass.bench"\nwrk.headers["X402-Pass"] = "%s"\n' "${PASS_TOKEN[$t]}"
  } >"$TMP/$t.lua"
}
pass_check() { http_status "$("t_${1}_url")" "Host: pass.bench" "X402-Pass: ${PASS_TOKEN[$1]}"; }

t_gw_pass_start() { start_gateway; buy_pass gw_pass; }
t_gw_pass_url()    { echo "http://127.0.0.1:$GATEWAY_PORT/fixed/$BODY"; }
t_gw_pass_pids()   { echo "$GATEWAY_PID"; }
t_gw_pass_status() { echo 200; }
t_gw_pass_script() { echo "$TMP/gw_pass.lua"; }
t_gw_pass_check()  { pass_check gw_pass; }

# gw_free_redis: the free path of the gateway whose state store is redis-server (it never asks
# the store: the same work as gw_free).
t_gw_free_redis_start()  { start_redis_gateway; }
t_gw_free_redis_url()    { echo "http://127.0.0.1:$REDIS_GW_PORT/fixed/$BODY"; }
t_gw_free_redis_pids()   { echo "$REDIS_GW_PID"; }
t_gw_free_redis_status() { echo 200; }

# gw_pass_redis: as gw_pass, on the gateway whose state store is redis-server.
t_gw_pass_redis_start() { start_redis_gateway; buy_pass gw_pass_redis; }
t_gw_pass_redis_url()    { echo "http://127.0.0.1:$REDIS_GW_PORT/fixed/$BODY"; }
t_gw_pass_redis_pids()   { echo "$REDIS_GW_PID $REDIS_PID"; }
t_gw_pass_redis_status() { echo 200; }
t_gw_pass_redis_script() { echo "$TMP/gw_pass_redis.lua"; }
t_gw_pass_redis_check()  { pass_check gw_pass_redis; }

# gw_paid, gw_paid_dead, gw_paid_redis: a distinct pre-signed payment per request, walked by wrk's lua; the
# gateway is restarted before every run, so one set of payments per target serves every run.
declare -A PAY_N=()
# The Host a paid target's requests carry, and what bench-payments needs besides.
pay_host() { [[ $1 == gw_voucher ]] && echo voucher.bench || echo paid.bench; }
pay_args() { [[ $1 == gw_voucher ]] && echo "--channels 1000"; return 0; }
# shellcheck disable=SC2046
sign_for() { sign_payments "$(pay_url "$1")" "${PAY_N[$1]}" "$(pay_host "$1")" "$TMP/$1.payments.txt" $(pay_args "$1"); }
paid_start() {
  local t=$1
  restart_paid_gateway "$t"
  PAY_N[$t]=${PAY_COUNT:-$((WARMUP * 20000 + 5000))}
  sign_for "$t"
  paid_script
}
# The wrk script of every paid target: a distinct payment per request.
paid_script() {
  [[ -f $TMP/paid.lua ]] && return 0
  {
    cat "$TMP/report.lua"
    cat <<'LUA'
-- Each wrk thread walks its own share of the pre-signed payments (args: file, threads, host).
local next_id, payments, count, i = 0, {}, 0, 0
local headers = { ["Host"] = "paid.bench" }
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end
function init(args)
  local threads = tonumber(args[2]) or 1
  if args[3] then headers["Host"] = args[3] end
  local k = 0
  for line in io.lines(args[1]) do
    if k % threads == thread_id then
      count = count + 1
      payments[count] = line
    end
    k = k + 1
  end
end
function request()
  i = i + 1
  -- Past the end the payments repeat: the gateway refuses them (counted as errors).
  headers["PAYMENT-SIGNATURE"] = payments[(i - 1) % count + 1]
  return wrk.format(nil, nil, headers)
end
LUA
  } >"$TMP/paid.lua"
}
paid_url() { echo "http://127.0.0.1:${PAID_PORT[$1]}/fixed/$BODY"; }
paid_check() {
  http_status "$(paid_url "$1")" "Host: $(pay_host "$1")" "PAYMENT-SIGNATURE: $(head -n 1 "$TMP/$1.payments.txt")"
}
# After the warm-up, sizes the payments for a full run (1.5x the warm-up rate, at least);
# after a counted run, fails if the payments ran out. gw_paid_dead: fails unless this
# gateway instance took the dead facilitator out of rotation (the pool was exercised).
paid_after() {
  local t=$1 requests=$2 round=$3 want
  if [[ $t == gw_paid_dead ]] && ! awk -v m="${PAID_LOG_MARK[$t]}" \
    'NR > m && /taken out of rotation/ && /facilitator=dead/ { f = 1 } END { exit !f }' \
    "$TMP/$t/gateway.log"; then
    die "gw_paid_dead: the dead facilitator was never taken out of rotation (see $TMP/$t/gateway.log; KEEP_TMP=1)"
  fi
  if [[ $round == warmup ]]; then
    [[ -n $PAY_COUNT ]] && return 0
    want=$((requests * DURATION * 3 / (2 * (WARMUP > 0 ? WARMUP : 1)) + 5000))
    if ((want > PAY_N[$t])); then
      echo "  signing $want payments for runs of ${DURATION}s ($t)"
      PAY_N[$t]=$want
      sign_for "$t"
    fi
  elif ((requests > PAY_N[$t])); then
    die "$t: $requests requests but only ${PAY_N[$t]} pre-signed payments: set PAY_COUNT higher"
  fi
}
for t in gw_paid gw_paid_dead gw_paid_c64 gw_paid_redis gw_voucher; do
  eval "
t_${t}_start()   { paid_start $t; }
t_${t}_url()     { paid_url $t; }
t_${t}_pids()    { echo \"\${PAID_PID[$t]}\"; }
t_${t}_status()  { echo 200; }
t_${t}_script()  { echo \"\$TMP/paid.lua\"; }
t_${t}_args()    { echo \"\$TMP/$t.payments.txt \$WRK_THREADS \$(pay_host $t)\"; }
t_${t}_prepare() { restart_paid_gateway $t; }
t_${t}_check()   { paid_check $t; }
t_${t}_after()   { paid_after $t \"\$@\"; }"
done
# gw_paid_c64: as gw_paid, but 64 connections paced (wrk's delay(), random exponential gaps)
# to PACED_RATE req/s in all, below saturation, so the latency is the work's and not a queue's.
# After each counted run, the time of a paid request outside facilitator calls
# (x402_payment_gateway_seconds: from the payment check to the receipt, the origin's answer
# left in) gives the p99 the gateway adds (an upper bound), interpolated inside the histogram
# bucket that holds it (as Prometheus' histogram_quantile does).
t_gw_paid_c64_conns()  { echo 64; }
t_gw_paid_c64_script() {
  [[ -f $TMP/paid_paced.lua ]] || {
    cat "$TMP/paid.lua"
    # Exponential gaps (Poisson arrivals per connection): equal gaps would keep the 64
    # connections in step, and each burst of 64 would queue behind itself.
    # Seeded in each wrk thread's init (after paid.lua's setup gave it its thread_id), so
    # threads do not step together either.
    awk -v r="$PACED_RATE" 'BEGIN { printf "local paid_init = init\nfunction init(args)\n  math.randomseed(os.time() + 7919 * thread_id)\n  paid_init(args)\nend\nfunction delay() return math.floor(-%f * math.log(1 - math.random()) + 0.5) end\n", 64000 / r }'
  } >"$TMP/paid_paced.lua"
  echo "$TMP/paid_paced.lua"
}
t_gw_paid_c64_after() {
  paid_after gw_paid_c64 "$@"
  [[ $2 == warmup ]] && return 0
  http_body "http://127.0.0.1:$(cat "$TMP/gw_paid_c64/admin_port")/metrics" | awk -v r="$2" '
    /^x402_payment_gateway_seconds_bucket/ {
      le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); n++; b[n] = le; c[n] = $2 }
    /^x402_payment_gateway_seconds_count/ { total = $2 }
    END { if (total == 0) exit
      # As histogram_quantile(0.99, ...): linear inside the bucket that holds the 99th percentile.
      q = 0.99 * total
      for (i = 1; i <= n; i++) if (c[i] >= q) {
        lo = (i > 1 ? b[i - 1] : 0); below = (i > 1 ? c[i - 1] : 0)
        if (b[i] == "+Inf") { print r, lo, total; exit }
        print r, lo + (b[i] - lo) * (q - below) / (c[i] - below), total; exit } }
  ' >>"$TMP/paced_overhead"
}
# The store's CPU is charged to the target that uses it.
t_gw_paid_redis_pids() { echo "${PAID_PID[gw_paid_redis]} $REDIS_PID"; }
# gw_voucher: after each counted run the gateway stops (SIGTERM: its claimer's last pass claims
# every channel); the claim and sweep calls the bench facilitator saw during the run and the
# stop are that run's claim transactions.
fac_stat() { http_body "http://127.0.0.1:$FAC_PORT/stats" | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }
VOUCHER_CLAIMS0=
t_gw_voucher_prepare() {
  restart_paid_gateway gw_voucher
  VOUCHER_CLAIMS0="$(fac_stat claims) $(fac_stat sweeps)"
}
t_gw_voucher_after() {
  local requests=$1 round=$2 pid=${PAID_PID[gw_voucher]} c0 s0
  paid_after gw_voucher "$requests" "$round"
  [[ $round == warmup ]] && return 0
  hwm_kib "$pid" >"$TMP/hwm.$pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  read -r c0 s0 <<<"$VOUCHER_CLAIMS0"
  echo "$round $requests $(($(fac_stat claims) - c0)) $(($(fac_stat sweeps) - s0))" >>"$TMP/voucher_claims"
}

# ex_*, ax_*: the x402 peers, each one process (one thread / one event loop) serving the body
# itself behind its paygate, against the same bench facilitator. They keep no replay state, so
# one set of pre-signed payments serves every run and they are never restarted.
PEER_PAY_TO=0x209693Bc6afc0C5328bA36FaF03C514EF312287C
PEER_ASSET=0x036CbD53842c5426634e7929541eC2318f3dCF7e   # USDC on base-sepolia
declare -A PEER_PORT=() PEER_PID=()
start_peer() {
  local p=$1 port
  [[ -n ${PEER_PID[$p]:-} ]] && return 0
  start_origin; start_facilitator
  port=$(free_port)
  mkdir -p "$TMP/$p"
  if [[ $p == express ]]; then
    (exec "$NODE_BIN" "$EXPRESS_JS" --facilitator-url "http://127.0.0.1:$FAC_PORT" \
      --pay-to "$PEER_PAY_TO" --token "$PEER_ASSET" --token-name USDC --token-version 2 \
      --network eip155:84532 --price 10000 --path "/fixed/$BODY" --port "$port" \
      --max-timeout-seconds 86400 --fixed-body "$BODY" </dev/null >"$TMP/$p/stdout.log" 2>"$TMP/$p/stderr.log") &
  else
    (exec "$AXUM_BIN" --listen "127.0.0.1:$port" --facilitator "http://127.0.0.1:$FAC_PORT/" \
      --body "$BODY" --threads "$THREADS" </dev/null >"$TMP/$p/stdout.log" 2>"$TMP/$p/stderr.log") &
  fi
  PEER_PID[$p]=$!; STARTED+=("${PEER_PID[$p]}"); PEER_PORT[$p]=$port
  wait_port "$port" "${PEER_PID[$p]}" "$p peer" "$TMP/$p/stderr.log"
}
peer_url() { echo "http://127.0.0.1:${PEER_PORT[$1]}/fixed/$BODY"; }
# The URL whose 402 the payments of paid target $1 are signed for.
pay_url() {
  case $1 in
    ex_paid) peer_url express ;;
    ax_paid) peer_url axum ;;
    *) paid_url "$1" ;;
  esac
}
peer_paid_start() {
  local t=$1 p=$2
  start_peer "$p"
  PAY_N[$t]=${PAY_COUNT:-$((WARMUP * 5000 + 5000))}
  sign_payments "$(peer_url "$p")" "${PAY_N[$t]}" paid.bench "$TMP/$t.payments.txt"
  paid_script
}
for pair in "ex express" "ax axum"; do
  read -r x p <<<"$pair"
  eval "
t_${x}_402_start()   { start_peer $p; }
t_${x}_402_url()     { peer_url $p; }
t_${x}_402_pids()    { echo \"\${PEER_PID[$p]}\"; }
t_${x}_402_status()  { echo 402; }
t_${x}_paid_start()  { peer_paid_start ${x}_paid $p; }
t_${x}_paid_url()    { peer_url $p; }
t_${x}_paid_pids()   { echo \"\${PEER_PID[$p]}\"; }
t_${x}_paid_status() { echo 200; }
t_${x}_paid_script() { echo \"\$TMP/paid.lua\"; }
t_${x}_paid_args()   { echo \"\$TMP/${x}_paid.payments.txt \$WRK_THREADS\"; }
t_${x}_paid_check()  { http_status \"\$(peer_url $p)\" \"PAYMENT-SIGNATURE: \$(head -n 1 \"\$TMP/${x}_paid.payments.txt\")\"; }
t_${x}_paid_after()  { paid_after ${x}_paid \"\$@\"; }"
done

# ---- driver --------------------------------------------------------------------------------

cat >"$TMP/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
LUA

hook() { declare -F "t_${2}_$1" >/dev/null; }

for t in "${TLIST[@]}"; do
  hook start "$t" || die "unknown target $t"
  "t_${t}_start"
done
for t in "${TLIST[@]}"; do
  want=$("t_${t}_status")
  if hook check "$t"; then got=$("t_${t}_check"); else got=$(http_status "$("t_${t}_url")"); fi
  [[ $got == "$want" ]] || die "$t: GET $("t_${t}_url") answered $got, expected $want"
done

# One wrk run against target $1 for $2 seconds; appends a result line to $TMP/results.
run_one() {
  local t=$1 secs=$2 round=$3 url pids c0 c1 o0 o1 out line script args=()
  hook prepare "$t" && "t_${t}_prepare"
  url=$("t_${t}_url"); pids=$("t_${t}_pids")
  script=$TMP/report.lua
  hook script "$t" && script=$("t_${t}_script")
  hook args "$t" && read -r -a args <<<"$("t_${t}_args")"
  local conns=$CONNS
  hook conns "$t" && conns=$("t_${t}_conns")
  local r0="0 0" w0=0 s0=0
  [[ $t == *_redis ]] && { r0=$(redis_commands); w0=$(store_waits "$(redis_dir "$t")"); s0=$(cpu_ticks "$REDIS_PID"); }
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids); o0=$(cpu_ticks "$ORIGIN_PID")
  out=$("$WRK_BIN" -t"$WRK_THREADS" -c"$conns" -d"${secs}s" --latency -s "$script" "$url" -- "${args[@]}")
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $pids); o1=$(cpu_ticks "$ORIGIN_PID")
  line=$(grep '^RESULT ' <<<"$out") || die "$t: no result from wrk: $out"
  local requests duration_us p50_us p99_us errors non2xx
  eval "$(tr ' ' '\n' <<<"${line#RESULT }" | grep -E '^(requests|duration_us|p50_us|p99_us|errors|non2xx)=')"
  if [[ $t == *_redis && $round != warmup ]]; then
    # The stats of this very INFO call count too: one command and one read.
    awk -v t="$t" -v r="$round" -v a="$r0" -v b="$(redis_commands)" -v n="$requests" \
      -v w0="$w0" -v w1="$(store_waits "$(redis_dir "$t")")" \
      -v s="$(( $(cpu_ticks "$REDIS_PID") - s0 ))" -v tick="$TICK_US" \
      'BEGIN { split(a, x, " "); split(b, y, " ")
               if (n > 0) printf "%s %s %.2f %.2f %.2f %.2f\n", t, r, (y[1] - x[1] - 1) / n, (w1 - w0) / n, (y[2] - x[2] - 1) / n, s * tick / n }' >>"$TMP/redis_commands"
  fi
  hook after "$t" && "t_${t}_after" "$requests" "$round"
  [[ $round == warmup ]] && return 0
  local rps cpu ocpu
  rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  cpu=$(awk -v c=$((c1 - c0)) -v r="$requests" -v t="$TICK_US" 'BEGIN { printf "%.2f", c * t / r }')
  ocpu=$(awk -v c=$((o1 - o0)) -v r="$requests" -v t="$TICK_US" 'BEGIN { printf "%.2f", c * t / r }')
  local bad=$errors
  [[ $("t_${t}_status") == 200 ]] && bad=$((bad + non2xx))
  echo "$t $round $rps $p50_us $p99_us $cpu $ocpu $bad" >>"$TMP/results"
  printf '  round %s  %-14s %8s req/s  p50 %6.2f ms  p99 %6.2f ms  cpu %6s us/req  origin %6s us/req%s\n' \
    "$round" "${LABEL[$t]}" "$rps" "$(awk -v v="$p50_us" 'BEGIN{print v/1000}')" \
    "$(awk -v v="$p99_us" 'BEGIN{print v/1000}')" "$cpu" "$ocpu" \
    "$([[ $bad -gt 0 ]] && echo "  ($bad errors)")"
}

echo "x402-gateway performance report: $ROUNDS rounds x ${DURATION}s, wrk -t$WRK_THREADS -c$CONNS," \
  "$THREADS server thread(s)/worker(s), ${BODY}-byte origin responses, $(nproc) CPUs"
echo "warm-up (${WARMUP}s each, not counted)"
for t in "${TLIST[@]}"; do run_one "$t" "$WARMUP" warmup; done
n=${#TLIST[@]}
for ((r = 1; r <= ROUNDS; r++)); do
  # Rotate the order every round so that drift in machine load spreads over all targets.
  for ((k = 0; k < n; k++)); do
    run_one "${TLIST[$(((r - 1 + k) % n))]}" "$DURATION" "$r"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v t="$1" -v c="$2" '$1 == t { print $c }' "$TMP/results" | median; }

declare -A RPS P50 P99 CPU OCPU RSS
for t in "${TLIST[@]}"; do
  RPS[$t]=$(col "$t" 3); P50[$t]=$(col "$t" 4); P99[$t]=$(col "$t" 5)
  CPU[$t]=$(col "$t" 6); OCPU[$t]=$(col "$t" 7)
  # shellcheck disable=SC2046
  RSS[$t]=$(hwm_kib $("t_${t}_pids"))
done

echo
echo "medians over $ROUNDS rounds"
printf '%-14s %9s %9s %9s %11s %13s %10s\n' target req/s "p50 ms" "p99 ms" "cpu us/req" "origin us/req" "peak RSS"
for t in "${TLIST[@]}"; do
  printf '%-14s %9.0f %9.3f %9.3f %11.2f %13.2f %7.1f MiB\n' "${LABEL[$t]}" "${RPS[$t]}" \
    "$(awk -v v="${P50[$t]}" 'BEGIN{print v/1000}')" "$(awk -v v="${P99[$t]}" 'BEGIN{print v/1000}')" \
    "${CPU[$t]}" "${OCPU[$t]}" "$(awk -v v="${RSS[$t]}" 'BEGIN{print v/1024}')"
done

# Ratios of every target to $1 (same run; req/s: higher is better; p50, p99, cpu: lower).
ratios_to() {
  local base=$1 t
  [[ -n ${RPS[$base]:-} ]] || return 0
  echo
  echo "ratios to ${LABEL[$base]} (same run; req/s: higher is better; p50, p99, cpu/req: lower is better)"
  printf '%-14s %9s %9s %9s %11s\n' target req/s p50 p99 cpu/req
  for t in "${TLIST[@]}"; do
    [[ $t == "$base" ]] && continue
    awk -v l="${LABEL[$t]}" -v r="${RPS[$t]}" -v nr="${RPS[$base]}" -v a="${P50[$t]}" -v na="${P50[$base]}" \
      -v p="${P99[$t]}" -v np="${P99[$base]}" -v c="${CPU[$t]}" -v nc="${CPU[$base]}" \
      'BEGIN { printf "%-14s %8.2fx %8.2fx %8.2fx %10.2fx\n", l, r / nr, a / na, p / np, c / nc }'
  done
}
ratios_to nginx
ratios_to bare_pingora
ratios_to pingora_fwd

# Per-round ratio: the median over the rounds of (target $1 / base $2) in column $3, each pair
# taken from the same round (runs a minute or two apart rather than up to a whole run apart),
# so that load from elsewhere that comes and goes between rounds cancels out.
paired() {
  awk -v t="$1" -v b="$2" -v c="$3" '$1 == t { x[$2] = $c } $1 == b { y[$2] = $c }
    END { for (r in x) if (r in y && y[r] > 0) print x[r] / y[r] }' "$TMP/results" | median
}

# The targets: free path >= 0.95x bare Pingora, >= 1.0x nginx and >= 0.97x Pingora + fwd in
# req/s; 402 >= 1.5x nginx; pass >= 0.95x free; paid at <= 3x the free path's CPU per request;
# paid with a dead facilitator in the pool >= 0.95x paid with a healthy one; paid and pass on
# the redis store >= 0.85x and >= 0.8x their memory-store runs; against the x402 peers: 402
# >= 10x @x402/express and >= 1.5x x402-axum, paid >= 5x and >= 1.2x, each at equal or lower
# CPU per request. Judged on the per-round ratio; the ratio of the medians is shown beside it.
# $5 (optional): the most CPU per request the target may spend, as a ratio to the base's.
goal() {
  local what=$1 t=$2 base=$3 min=$4 cmax=${5:-} pr pc
  [[ -n ${RPS[$t]:-} && -n ${RPS[$base]:-} ]] || return 0
  pr=$(paired "$t" "$base" 3); pc=$(paired "$t" "$base" 6)
  awk -v w="$what" -v r="${RPS[$t]}" -v b="${RPS[$base]}" -v m="$min" -v cm="$cmax" -v pr="$pr" -v pc="$pc" \
    'BEGIN { ok = (pr >= m) && (cm == "" || pc <= cm)
      g = sprintf(">= %.2fx", m); if (cm != "") g = g sprintf(", cpu <= %.2fx", cm)
      v = (m == "ref" ? "(reference)" : sprintf("(goal %s: %s)", g, (ok ? "met" : "MISSED")))
      printf "  %-34s %5.2fx req/s per round %-36s %5.2fx cpu/req per round   %5.2fx ratio of medians\n", w, pr, v, pc, r / b }'
}
# CPU per request of target $2 as a ratio to base $3's, per round: at most $4.
goal_cpu() {
  local what=$1 t=$2 base=$3 max=$4 pc
  [[ -n ${RPS[$t]:-} && -n ${RPS[$base]:-} ]] || return 0
  pc=$(paired "$t" "$base" 6)
  awk -v w="$what" -v pc="$pc" -v m="$max" -v a="${CPU[$t]}" -v b="${CPU[$base]}" \
    'BEGIN { printf "  %-34s %5.2fx cpu/req per round (goal <= %.2fx: %s)   %.2f vs %.2f us/req (medians)\n",
      w, pc, m, (pc <= m ? "met" : "MISSED"), a, b }'
}
# p99 of target $2 as a ratio to base $3's, per round: at most $4.
goal_p99() {
  local what=$1 t=$2 base=$3 max=$4 pp
  [[ -n ${RPS[$t]:-} && -n ${RPS[$base]:-} ]] || return 0
  pp=$(paired "$t" "$base" 5)
  awk -v w="$what" -v pp="$pp" -v m="$max" -v a="${P99[$t]}" -v b="${P99[$base]}" \
    'BEGIN { printf "  %-34s %5.2fx p99 per round (goal <= %.2fx: %s)   %.3f vs %.3f ms (medians)\n",
      w, pp, m, (pp <= m ? "met" : "MISSED"), a / 1000, b / 1000 }'
}
# Median req/s of target $2: at least $3.
goal_rps() {
  local what=$1 t=$2 min=$3
  [[ -n ${RPS[$t]:-} ]] || return 0
  awk -v w="$what" -v r="${RPS[$t]}" -v m="$min" \
    'BEGIN { printf "  %-34s %8.0f req/s (goal >= %d: %s)\n", w, r, m, (r >= m ? "met" : "MISSED") }'
}
echo
echo "targets (median over the rounds of each round's ratio)"
goal "gateway free / bare Pingora" gw_free bare_pingora 0.95
goal "gateway free / nginx" gw_free nginx 1.0
goal "gateway free / Pingora + fwd" gw_free pingora_fwd 0.97
goal "Pingora + fwd / nginx" pingora_fwd nginx ref
goal "gateway 402 / nginx" gw_402 nginx 1.5
goal "gateway pass / gateway free" gw_pass gw_free 0.95
goal_cpu "gateway paid / gateway free" gw_paid gw_free 3
goal_rps "gateway paid" gw_paid 10000
goal "paid, dead facilitator / paid" gw_paid_dead gw_paid 0.95
if [[ -s $TMP/paced_overhead ]]; then
  # The median over the rounds of each round's p99 (interpolated in its histogram bucket).
  awk '{ print $2 }' "$TMP/paced_overhead" | median | awk -v rate="$PACED_RATE" -v p99="${P99[gw_paid_c64]:-0}" '
    { printf "  %-34s %5.3f ms p99 (goal < 1 ms: %s)   64 conns paced to %d req/s; wrk p99 %.3f ms\n",
        "paid, time outside facilitator", $1 * 1000, ($1 < 0.001 ? "met" : "MISSED"), rate, p99 / 1000 }'
elif needs gw_paid_c64; then
  printf "  %-34s no histogram data (goal < 1 ms: MISSED)\n" "paid, time outside facilitator"
fi
goal "paid, redis / paid (memory)" gw_paid_redis gw_paid 0.85
goal "gateway voucher / gateway free" gw_voucher gw_free 0.7
goal_p99 "gateway voucher / gateway free" gw_voucher gw_free 1.3
if [[ -s $TMP/voucher_claims ]]; then
  awk '{ r += $2; c += $3; s += $4 } END {
    per = (r > 0 ? (c + s) * 10000 / r : 0)
    printf "  %-34s %8.2f per 10 000 vouchers (goal <= 10: %s)   %d claim + %d sweep calls, %d vouchers\n",
      "claim transactions (voucher path)", per, (per <= 10 && c > 0 ? "met" : "MISSED"), c, s, r }' \
    "$TMP/voucher_claims"
fi
goal "pass, redis / pass (memory)" gw_pass_redis gw_pass 0.8
goal "free, redis / free (memory)" gw_free_redis gw_free ref
echo
echo "against the x402 peers (same run, same facilitator, same wrk settings)"
goal "gateway 402 / @x402/express 402" gw_402 ex_402 10 1
goal "gateway 402 / x402-axum 402" gw_402 ax_402 1.5 1
goal "gateway paid / @x402/express paid" gw_paid ex_paid 5 1
goal "gateway paid / x402-axum paid" gw_paid ax_paid 1.2 1
echo
echo "peak RSS of the gateway process alone (goal < 64 MiB on every gateway path; the table"
echo "above adds redis-server's to the *_redis targets)"
for t in "${TLIST[@]}"; do
  [[ $t == gw_* ]] || continue
  read -r gw_pid _ <<<"$("t_${t}_pids")"
  awk -v l="${LABEL[$t]}" -v k="$(hwm_kib "$gw_pid")" \
    'BEGIN { printf "  %-14s %7.1f MiB %s\n", l, k / 1024, (k < 64 * 1024 ? "met" : "MISSED") }'
done
if [[ -s $TMP/redis_commands ]]; then
  echo
  echo "the store per request (median over the rounds): commands redis-server ran (its own"
  echo "refreshes included), round trips a request waited for (gateway metrics), and socket reads"
  echo "redis-server made (below 1: concurrent requests share one connection's writes), and"
  echo "redis-server's CPU (part of the target's cpu/req above; elsewhere in a real deployment)"
  printf '  %-14s %9s %12s %13s %16s\n' "" commands "round trips" "socket reads" "redis us/req"
  for t in gw_free_redis gw_pass_redis gw_paid_redis; do
    needs "$t" || continue
    printf '  %-14s %9.2f %12.2f %13.2f %16.2f\n' "${LABEL[$t]}" \
      "$(awk -v t="$t" '$1 == t { print $3 }' "$TMP/redis_commands" | median)" \
      "$(awk -v t="$t" '$1 == t { print $4 }' "$TMP/redis_commands" | median)" \
      "$(awk -v t="$t" '$1 == t { print $5 }' "$TMP/redis_commands" | median)" \
      "$(awk -v t="$t" '$1 == t { print $6 }' "$TMP/redis_commands" | median)"
  done
  echo "p99 added by the store (median p99 with redis minus median p99 with memory, same run)"
  for pair in "gw_pass_redis gw_pass" "gw_paid_redis gw_paid"; do
    read -r a b <<<"$pair"
    [[ -n ${P99[$a]:-} && -n ${P99[$b]:-} ]] || continue
    awk -v l="${LABEL[$a]}" -v x="${P99[$a]}" -v y="${P99[$b]}" \
      'BEGIN { printf "  %-14s %+8.3f ms\n", l, (x - y) / 1000 }'
  done
fi

errs=$(awk '{ s += $8 } END { print s + 0 }' "$TMP/results")
if [[ $errs -gt 0 ]]; then
  echo
  echo "FAILED: $errs failed requests or unexpected statuses (see the rounds above)" >&2
  exit 1
fi

#!/usr/bin/env bash
# benches/load.sh — the load comparison: origin direct, nginx as a plain reverse proxy, and the
# gateway (free path and 402 path), driven by wrk in the same run, interleaved, several rounds.
#
# Fresh machine (Debian/Ubuntu, run from the repository root):
#   apt-get install -y nginx-light wrk     # plus cmake and a Rust toolchain for the build
#   cargo build --release
#   benches/load.sh
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
# proxying (should be the same behind both proxies), and peak RSS (VmHWM), then the ratios to
# nginx. On a shared machine compare ratios from one run, never absolute figures across runs.
#
# Settings (environment):
#   ROUNDS=5 DURATION=10 (s per run) WARMUP=2 (s per target, once, not counted)
#   CONNS=50 WRK_THREADS=1 THREADS=1 (gateway threads = nginx worker_processes)
#   BODY=128 (origin response bytes) TARGETS="origin nginx gw_free gw_402"
#   GATEWAY_BIN ORIGIN_BIN NGINX_BIN WRK_BIN   KEEP_TMP=1 keeps the temp dir (configs, logs)
#
# Adding a target (e.g. a bare Pingora pass-through, the paid path): define
#   t_<name>_start  start what it needs (idempotent; helpers below keep PIDs for cleanup)
#   t_<name>_url    the URL wrk drives
#   t_<name>_pids   the PIDs whose CPU is charged to it (one per line or space separated)
#   t_<name>_status the HTTP status every response must have
#   LABEL[<name>]   the name printed in the report
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
TARGETS=${TARGETS:-"origin nginx gw_free gw_402"}
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/x402-gateway}
ORIGIN_BIN=${ORIGIN_BIN:-$ROOT/target/release/demo-origin}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
WRK_BIN=${WRK_BIN:-$(command -v wrk || echo wrk)}

die() { echo "load.sh: $*" >&2; exit 1; }
for b in "$GATEWAY_BIN" "$ORIGIN_BIN"; do
  [[ -x $b ]] || die "$b not found: run cargo build --release first"
done
[[ -x $NGINX_BIN ]] || die "nginx not found: apt-get install -y nginx-light"
command -v "$WRK_BIN" >/dev/null || die "wrk not found: apt-get install -y wrk"
command -v perl >/dev/null || command -v python3 >/dev/null || die "need perl or python3 to pick free ports"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/x402-load.XXXXXX")
STARTED=()   # PIDs started here, stopped in reverse order on exit

cleanup() {
  local i pid
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    pid=${STARTED[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers -------------------------------------------------------------------------------

# A port nobody listens on: bind to port 0 and report what the kernel chose.
free_port() {
  if command -v perl >/dev/null; then
    perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, ReuseAddr => 1) or die "bind: $!"; print $s->sockport, "\n"'
  else
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  fi
}

# Waits until something accepts connections on 127.0.0.1:$1 (pid $2 must stay alive).
wait_port() {
  local port=$1 pid=$2 what=$3 log=${4:-}
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      [[ -n $log && -f $log ]] && tail -n 30 "$log" >&2
      die "$what exited during start-up"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "$what did not listen on port $port"
}

# The status code of one GET (HTTP/1.1, Connection: close), without curl.
http_status() {
  local url=$1 hostport path line
  hostport=${url#http://}; path=/${hostport#*/}; hostport=${hostport%%/*}
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport#*:}"
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
  IFS= read -r line <&3 || true
  exec 3>&- 3<&-
  line=${line%$'\r'}; set -- $line; echo "${2:-none}"
}

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
hwm_kib() {
  local total=0 pid v
  for pid in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
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
  local d=$TMP/nginx user=
  mkdir -p "$d"
  [[ $(id -u) == 0 ]] && user="user $(id -un) $(id -gn);"
  cat >"$d/nginx.conf" <<CONF
$user
daemon off;
master_process on;
worker_processes $THREADS;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/client_body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  upstream origin {
    server 127.0.0.1:$ORIGIN_PORT;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
CONF
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

GATEWAY_PORT= GATEWAY_PID=
start_gateway() {
  [[ -n $GATEWAY_PID ]] && return 0
  start_origin
  GATEWAY_PORT=$(free_port)
  local d=$TMP/gateway admin_port
  admin_port=$(free_port)
  mkdir -p "$d/rules"
  cat >"$d/gateway.toml" <<CONF
[server]
listen = ["127.0.0.1:$GATEWAY_PORT"]
threads = $THREADS
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1

[admin]
listen = "127.0.0.1:$admin_port"

[upstreams.origin]
peers = ["127.0.0.1:$ORIGIN_PORT"]

[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
networks = ["base-sepolia"]

[reload]
watch = false

[logging]
level = "info"
access_log = false

[ledger]
path = ""
CONF
  cat >"$d/rules/bench.toml" <<'CONF'
[[rule]]
id = "free"
prefix = "/fixed/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"
description = "Current weather report"
mime_type = "application/json"
CONF
  "$GATEWAY_BIN" run -c "$d/gateway.toml" >"$d/stdout.log" 2>"$d/gateway.log" &
  GATEWAY_PID=$!; STARTED+=("$GATEWAY_PID")
  wait_port "$GATEWAY_PORT" "$GATEWAY_PID" x402-gateway "$d/gateway.log"
}

# ---- targets -------------------------------------------------------------------------------

declare -A LABEL=(
  [origin]="origin direct"
  [nginx]="nginx proxy"
  [gw_free]="gateway free"
  [gw_402]="gateway 402"
)

t_origin_start()  { start_origin; }
t_origin_url()    { echo "http://127.0.0.1:$ORIGIN_PORT/fixed/$BODY"; }
t_origin_pids()   { echo "$ORIGIN_PID"; }
t_origin_status() { echo 200; }

t_nginx_start()   { start_nginx; }
t_nginx_url()     { echo "http://127.0.0.1:$NGINX_PORT/fixed/$BODY"; }
t_nginx_pids()    { echo "$NGINX_PIDS"; }
t_nginx_status()  { echo 200; }

t_gw_free_start()  { start_gateway; }
t_gw_free_url()    { echo "http://127.0.0.1:$GATEWAY_PORT/fixed/$BODY"; }
t_gw_free_pids()   { echo "$GATEWAY_PID"; }
t_gw_free_status() { echo 200; }

t_gw_402_start()  { start_gateway; }
t_gw_402_url()    { echo "http://127.0.0.1:$GATEWAY_PORT/api/weather"; }
t_gw_402_pids()   { echo "$GATEWAY_PID"; }
t_gw_402_status() { echo 402; }

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

read -r -a TLIST <<<"$TARGETS"
for t in "${TLIST[@]}"; do
  declare -F "t_${t}_start" >/dev/null || die "unknown target $t"
  "t_${t}_start"
done
for t in "${TLIST[@]}"; do
  url=$("t_${t}_url"); want=$("t_${t}_status"); got=$(http_status "$url")
  [[ $got == "$want" ]] || die "$t: GET $url answered $got, expected $want"
done

# One wrk run against target $1 for $2 seconds; appends a result line to $TMP/results.
run_one() {
  local t=$1 secs=$2 round=$3 url pids c0 c1 o0 o1 out line
  url=$("t_${t}_url"); pids=$("t_${t}_pids")
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids); o0=$(cpu_ticks "$ORIGIN_PID")
  out=$("$WRK_BIN" -t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --latency -s "$TMP/report.lua" "$url")
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $pids); o1=$(cpu_ticks "$ORIGIN_PID")
  line=$(grep '^RESULT ' <<<"$out") || die "$t: no result from wrk: $out"
  [[ $round == warmup ]] && return 0
  local requests duration_us p50_us p99_us errors non2xx
  eval "$(tr ' ' '\n' <<<"${line#RESULT }" | grep -E '^(requests|duration_us|p50_us|p99_us|errors|non2xx)=')"
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

echo "x402-gateway load comparison: $ROUNDS rounds x ${DURATION}s, wrk -t$WRK_THREADS -c$CONNS," \
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
errs=$(awk '{ s += $8 } END { print s + 0 }' "$TMP/results")
[[ $errs -gt 0 ]] && echo "WARNING: $errs failed requests or unexpected statuses (see the rounds above)"

if [[ -n ${RPS[nginx]:-} ]]; then
  echo
  echo "ratios to nginx (same run; req/s: higher is better; p50, p99, cpu: lower is better)"
  printf '%-14s %9s %9s %9s %11s\n' target req/s p50 p99 cpu/req
  for t in "${TLIST[@]}"; do
    [[ $t == nginx ]] && continue
    awk -v l="${LABEL[$t]}" -v r="${RPS[$t]}" -v nr="${RPS[nginx]}" -v a="${P50[$t]}" -v na="${P50[nginx]}" \
      -v p="${P99[$t]}" -v np="${P99[nginx]}" -v c="${CPU[$t]}" -v nc="${CPU[nginx]}" \
      'BEGIN { printf "%-14s %8.2fx %8.2fx %8.2fx %10.2fx\n", l, r / nr, a / na, p / np, c / nc }'
  done
fi

#!/usr/bin/env bash
# benches/support/common.sh — what the benchmark scripts share, sourced by benches/load.sh and
# benches/instructions.sh: the temp dir and the processes started (stopped on exit), free
# ports, waiting for a listener, the nginx and gateway configurations they compare, one-off
# HTTP requests without curl, and pre-signing payments for a 402.
#
# The sourcing script sets first: die(), the prefix of its temp dir in BENCH_NAME; later,
# before writing configs: ORIGIN_PORT, FAC_PORT, THREADS.

TMP=$(mktemp -d "${TMPDIR:-/tmp}/${BENCH_NAME}.XXXXXX")
STARTED=()   # PIDs started here and still running, stopped in reverse order on exit

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

# A port nobody listens on: bind to port 0 and report what the kernel chose (never the dead
# facilitator's port, which must stay unused).
DEAD_FAC_PORT=
free_port() {
  local port
  while :; do
    if command -v perl >/dev/null; then
      port=$(perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, ReuseAddr => 1) or die "bind: $!"; print $s->sockport, "\n"')
    else
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    [[ $port == "$DEAD_FAC_PORT" ]] || break
  done
  echo "$port"
}

# Waits until something accepts connections on 127.0.0.1:$1 (pid $2 must stay alive), for
# WAIT_TRIES x 50 ms.
wait_port() {
  local port=$1 pid=$2 what=$3 log=${4:-}
  for _ in $(seq "${WAIT_TRIES:-300}"); do
    if ! kill -0 "$pid" 2>/dev/null; then
      [[ -n $log && -f $log ]] && tail -n 30 "$log" >&2
      die "$what exited during start-up"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "$what did not listen on port $port"
}

# Stops one process started here (SIGINT: Pingora's fast stop) and forgets its PID.
stop_pid() {
  local pid=$1 keep=() p
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

# Writes an nginx reverse proxy config into folder $1 listening on port $2 in front of the
# origin: upstream keepalive, X-Forwarded-* set, access log off. $3: master_process (on|off),
# $4: worker_processes.
write_nginx_config() {
  local d=$1 port=$2 master=$3 workers=$4 user=
  mkdir -p "$d"
  [[ $(id -u) == 0 ]] && user="user $(id -un) $(id -gn);"
  cat >"$d/nginx.conf" <<CONF
$user
daemon off;
master_process $master;
worker_processes $workers;
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
    listen 127.0.0.1:$port;
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
}

# The pass key of this run (HMAC, 64 hex characters), given to the gateways by environment.
X402_BENCH_PASS_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export X402_BENCH_PASS_KEY

# Writes a gateway folder $1 listening on port $2: one config for every gateway target. Free
# rule on /fixed/ (any host); the priced rules on the same origin path, told apart by Host
# (paid.bench: pay each request; pass.bench: pay once, then a pass); /api/weather: a 402.
# With $3 (a port nobody listens on), the facilitators are a pool: a dead one on that port
# first (priority 0, default ejection settings), then the bench facilitator (priority 1).
# $4: more configuration appended (e.g. a [state] section).
write_gateway_config() {
  local d=$1 port=$2 dead_port=${3:-} extra=${4:-} rules_extra=${5:-} admin_port facilitators
  admin_port=$(free_port)
  facilitators="[[facilitators]]
name = \"bench\"
url = \"http://127.0.0.1:$FAC_PORT\"
timeout_ms = 2000"
  if [[ -n $dead_port ]]; then
    facilitators="[[facilitators]]
name = \"dead\"
url = \"http://127.0.0.1:$dead_port\"
networks = [\"base-sepolia\"]
timeout_ms = 2000
priority = 0
weight = 1
failure_threshold = 3
max_eject_ms = 30000

$facilitators
priority = 1"
  fi
  mkdir -p "$d/rules"
  echo "$admin_port" >"$d/admin_port"
  cat >"$d/gateway.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
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

$facilitators

[passes]
signing_key = "bench"
[[passes.keys]]
id = "bench"
secret = "\${X402_BENCH_PASS_KEY}"

[reload]
watch = false

[logging]
level = "info"
access_log = false

[ledger]
path = "receipts.jsonl"

$extra
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

[[rule]]
id = "paid"
host = "paid.bench"
prefix = "/fixed/"
price = "$0.01"
max_timeout_seconds = 86400

[[rule]]
id = "pass"
host = "pass.bench"
prefix = "/fixed/"
price = "$0.01"
max_timeout_seconds = 86400
pass = { ttl = "24h", scope = "rule", max_requests = 4000000000 }
CONF
  [[ -n $rules_extra ]] && printf '\n%s\n' "$rules_extra" >>"$d/rules/bench.toml"
  return 0
}

# The response head (status line and headers, CR stripped) of one GET (HTTP/1.1,
# Connection: close), without curl. Extra arguments are header lines ("Name: value"); a Host
# among them replaces the URL's.
http_head() {
  local url=$1 hostport path line host h
  shift
  hostport=${url#http://}; path=/${hostport#*/}; hostport=${hostport%%/*}
  host=$hostport
  for h in "$@"; do [[ ${h,,} == host:* ]] && host=${h#*: }; done
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport#*:}"
  {
    printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n' "$path" "$host"
    for h in "$@"; do [[ ${h,,} == host:* ]] || printf '%s\r\n' "$h"; done
    printf '\r\n'
  } >&3
  while IFS= read -r line <&3; do
    line=${line%$'\r'}
    [[ -z $line ]] && break
    echo "$line"
  done
  exec 3>&- 3<&-
}

# The status code of one GET (same arguments as http_head).
http_status() {
  local line
  line=$(http_head "$@" | head -n 1)
  # shellcheck disable=SC2086
  set -- $line; echo "${2:-none}"
}

# The value of header $1 (case-insensitive) in a response head read from stdin.
# Reads all of its input, so that the writer of a pipe never gets SIGPIPE.
header_value() {
  local name=${1,,} line found=
  while IFS= read -r line; do
    if [[ -z $found && ${line,,} == "$name":* ]]; then
      line=${line#*:}; found=${line#"${line%%[![:space:]]*}"}
    fi
  done
  [[ -n $found ]] && echo "$found"
}

# The batch-settlement rule of the voucher targets (Host voucher.bench). Its receiver
# authorizer is a public development key (anvil's tenth account), never holding real funds.
VOUCHER_RULE='[[rule]]
id = "voucher"
host = "voucher.bench"
prefix = "/fixed/"
schemes = ["batch-settlement"]
price = "$0.01"
receiver_authorizer = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"'

# Pre-signs $2 payments for the offer of the 402 at URL $1 (Host $3) into file $4; further
# arguments go to bench-payments.
sign_payments() {
  local url=$1 count=$2 host=$3 out=$4 required
  shift 4
  required=$(http_head "$url" "Host: $host" | header_value payment-required) \
    || die "no PAYMENT-REQUIRED from $url (Host $host)"
  "$PAYMENTS_BIN" --required "$required" --count "$count" --out "$out" --valid-seconds 86000 "$@"
}

# The body of one GET of URL $1 (HTTP/1.1, Connection: close), without curl.
http_body() {
  local url=$1 hostport path line
  hostport=${url#http://}; path=/${hostport#*/}; hostport=${hostport%%/*}
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport#*:}"
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
  while IFS= read -r line <&3; do [[ -z ${line%$'\r'} ]] && break; done
  cat <&3
  exec 3>&- 3<&-
}

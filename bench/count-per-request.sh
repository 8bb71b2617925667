#!/usr/bin/env bash
# Instructions (callgrind) and system calls (strace -c) per proxied request, for canary-proxy
# and for NGINX under the same load: one worker each, a blue and a green test upstream at 95/5,
# keep-alive on both hops, 2,000 requests of warm-up, then 20,000 requests over 8 connections
# (closed loop). Counts, not times, so other work on the machine does not change them.
# With --http2 the clients speak h2c by prior knowledge (NGINX with `listen ... http2`); the
# upstream hop stays HTTP/1.1 keep-alive.
#
#   bench/count-per-request.sh [--http2] [canary-proxy|nginx]...     (default: both)
#
# Needs valgrind, strace and (for nginx) NGINX (bench/install-reference-proxies.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bench=${CANARY_BENCH:-$here/target/release/canary-bench}
proxy=${CANARY_BENCH_PROXY_BIN:-$(dirname "$bench")/canary-proxy}
requests=20000
http2=
if [ "${1:-}" = --http2 ]; then
  http2=--http2
  shift
fi
systems=("$@")
[ ${#systems[@]} -gt 0 ] || systems=(canary-proxy nginx)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bench" upstream --listen 127.0.0.1:18481 --color blue >/dev/null 2>&1 &
pids+=($!)
"$bench" upstream --listen 127.0.0.1:18482 --color green >/dev/null 2>&1 &
pids+=($!)
listen=127.0.0.1:18480

printf 'blue.upstream: 127.0.0.1:18481\ngreen.upstream: 127.0.0.1:18482\ncanary-weight: "5"\n' \
  >"$work/canary.yaml"
mkdir -p "$work/client_body" "$work/proxy"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/client_body;
  proxy_temp_path $work/proxy;
  upstream colors {
    server 127.0.0.1:18481 weight=95;
    server 127.0.0.1:18482 weight=5;
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen $listen${http2:+ http2} backlog=4096;
    location / {
      proxy_pass http://colors;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF

# Starts SYSTEM under PREFIX... and waits until it proxies; its pid in $system_pid.
start() { # SYSTEM PREFIX...
  local system=$1
  shift
  case $system in
    canary-proxy) "$@" "$proxy" --config "$work/canary.yaml" --listen "$listen" \
      --admin-listen 127.0.0.1:18490 --workers 1 >/dev/null 2>"$work/proxy.log" & ;;
    nginx) "$@" nginx -p "$work" -c "$work/nginx.conf" >/dev/null 2>&1 & ;;
  esac
  system_pid=$!
  pids+=("$system_pid")
  for _ in $(seq 200); do
    curl -sf ${http2:+--http2-prior-knowledge} "http://$listen/" >/dev/null && return
    sleep 0.2
  done
  echo "$system did not start" >&2
  exit 1
}

load() { # REQUESTS
  "$bench" load --target "http://$listen/" -c 8 -n "$1" -t 1 $http2 >/dev/null
}

stop() {
  kill "$system_pid" 2>/dev/null || true
  wait "$system_pid" 2>/dev/null || true
}

for system in "${systems[@]}"; do
  start "$system" valgrind --tool=callgrind --callgrind-out-file="$work/cg.out"
  load 2000
  callgrind_control -z "$system_pid" >/dev/null 2>&1
  load $requests
  callgrind_control -d "$system_pid" >/dev/null 2>&1
  sleep 1
  stop
  total=$(callgrind_annotate "$work"/cg.out.* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  rm -f "$work"/cg.out*
  echo "$system: $((total / requests)) instructions per request (user space)"

  start "$system" env
  load 2000
  strace -q -f -c -o "$work/strace.txt" -p "$system_pid" &
  tracer=$!
  sleep 1
  load $requests
  sleep 0.5
  kill -INT "$tracer"
  wait "$tracer" 2>/dev/null || true
  stop
  awk -v n=$requests -v s="$system" '
    $NF == "total" { printf "%s: %.2f system calls per request:", s, $4 / n }
    NR > 2 && $NF != "total" && $4 / n >= 0.01 { calls = calls sprintf(" %s %.2f", $NF, $4 / n) }
    END { print calls }' "$work/strace.txt"
done

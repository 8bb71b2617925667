#!/usr/bin/env bash
# Checks canary-bench's load generator against wrk on the same target: the same connections,
# threads and duration, interleaved rounds, and the ratio of the two throughput figures.
#
#   bench/check-against-wrk.sh [ROUNDS] [SECONDS]      (wrk: apt-get install wrk)
#
# Three targets, each on loopback:
#   upstream-pinned  the test upstream on CPU 0 (one worker), each client on CPU 1 (one thread):
#                    the client is the bottleneck, so this compares the clients' own cost;
#   upstream-shared  nothing pinned, two upstream workers, two client threads;
#   upstream-2ms     the same with 2 ms added to every answer: the target, not the client, is the
#                    limit, so both should report the same figure;
#   proxy-pinned     canary-proxy on CPU 0 (one worker) in front of a blue and a green upstream,
#                    clients and upstreams on CPU 1: the proxy is the bottleneck.
# Besides the throughput it prints each client's CPU time per request (user + system).
set -euo pipefail

rounds=${1:-5}
seconds=${2:-5}
connections=64
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${CANARY_BENCH:-$here/target/release/canary-bench}
proxy=${CANARY_BENCH_PROXY_BIN:-$(dirname "$bench")/canary-proxy}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -x "$bench" ] || { echo "$bench is missing: cargo build --release -p canary-bench" >&2; exit 1; }

work=$(mktemp -d)
pids=()
upstream_flags=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts an upstream and sets the variable VAR to its address (not in a subshell, so that its
# pid is remembered and the upstream is stopped on exit).
start_upstream() { # VAR NAME COLOR WORKERS PREFIX...
  local var=$1 name=$2 color=$3 workers=$4
  shift 4
  "$@" "$bench" upstream --listen 127.0.0.1:0 --color "$color" --workers "$workers" \
    "${upstream_flags[@]}" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do
    if [ -s "$work/$name.out" ]; then
      printf -v "$var" '%s' "$(awk '{print $NF}' "$work/$name.out")"
      return
    fi
    sleep 0.05
  done
  echo "the $name upstream printed no address: $(cat "$work/$name.err")" >&2
  exit 1
}

# CPU seconds (user + system) of a command, its output in $work/out.
cpu_of() {
  /usr/bin/env time -f "%U %S" -o "$work/time" "$@" >"$work/out"
  awk '{print $1 + $2}' "$work/time"
}

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

run_rounds() { # NAME URL THREADS PREFIX...
  local name=$1 url=$2 threads=$3
  shift 3
  : >"$work/ratios"; : >"$work/wrk_cpu"; : >"$work/cb_cpu"; : >"$work/wrk_rps"; : >"$work/cb_rps"
  for round in $(seq "$rounds"); do
    cpu=$(cpu_of "$@" wrk -t"$threads" -c$connections -d"${seconds}s" "$url")
    wrk_rps=$(awk '/Requests\/sec/ {print $2}' "$work/out")
    wrk_n=$(awk '/requests in/ {print $1}' "$work/out")
    echo "$cpu $wrk_n" | awk '{printf "%.2f\n", 1e6 * $1 / $2}' >>"$work/wrk_cpu"
    cpu=$(cpu_of "$@" "$bench" load --target "$url" -c $connections -t "$threads" -d "${seconds}s" --json)
    cb_rps=$(sed -n 's/.*"requests_per_s": *\([0-9.]*\).*/\1/p' "$work/out")
    cb_n=$(sed -n 's/.*"responses": *\([0-9]*\).*/\1/p' "$work/out")
    echo "$cpu $cb_n" | awk '{printf "%.2f\n", 1e6 * $1 / $2}' >>"$work/cb_cpu"
    echo "$wrk_rps" >>"$work/wrk_rps"
    echo "$cb_rps" >>"$work/cb_rps"
    echo "$cb_rps $wrk_rps" | awk '{printf "%.3f\n", $1 / $2}' >>"$work/ratios"
    printf '  %-16s round %d: wrk %8.0f req/s, canary-bench %8.0f req/s\n' "$name" "$round" "$wrk_rps" "$cb_rps"
  done
  printf '%-16s wrk %8.0f req/s (%s µs CPU/req)  canary-bench %8.0f req/s (%s µs CPU/req)  ratio %s (min %s, max %s)\n' \
    "$name" "$(median <"$work/wrk_rps")" "$(median <"$work/wrk_cpu")" "$(median <"$work/cb_rps")" \
    "$(median <"$work/cb_cpu")" "$(median <"$work/ratios")" "$(sort -g "$work/ratios" | head -1)" \
    "$(sort -g "$work/ratios" | tail -1)" | tee -a "$work/summary"
}

start_upstream blue pinned blue 1 taskset -c 0
run_rounds upstream-pinned "http://$blue/" 1 taskset -c 1

start_upstream shared shared blue 2 env
run_rounds upstream-shared "http://$shared/" 2 env

upstream_flags=(--latency 2ms)
start_upstream slow slow blue 2 env
upstream_flags=()
run_rounds upstream-2ms "http://$slow/" 2 env

if [ -x "$proxy" ]; then
  start_upstream b proxied-blue blue 1 taskset -c 1
  start_upstream g proxied-green green 1 taskset -c 1
  printf 'blue.upstream: "%s"\ngreen.upstream: "%s"\ncanary-weight: "5"\n' "$b" "$g" >"$work/canary.yaml"
  taskset -c 0 "$proxy" --config "$work/canary.yaml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --workers 1 --log-format json 2>"$work/proxy.log" &
  pids+=($!)
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*"listener":"data","addr":"\([^"]*\)".*/\1/p' "$work/proxy.log")
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { echo "canary-proxy printed no address" >&2; exit 1; }
  run_rounds proxy-pinned "http://$addr/" 1 taskset -c 1
else
  echo "proxy-pinned: $proxy is missing, skipped (cargo build --release -p canary-proxy)"
fi

echo
cat "$work/summary"

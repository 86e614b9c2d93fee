#!/usr/bin/env bash
# Server CPU per routed 1:1 message, for comparing builds minute by minute
# (issue 14): for each directory given (holding `pushbox` and
# `pushbox-loadgen`, e.g. two `--profile profiling` builds), start that
# binary with bench/compare.sh's pushbox.toml on free ports, register 200
# accounts, then run the issue's two workloads:
#
#   messages --pairs 50 --count 400 --window 2    (100 in flight)
#   messages --pairs 20 --count 200 --window 1    (ping-pong)
#
#   bash bench/routing.sh DIR_A DIR_B            # one round each, A then B
#   ROUNDS=3 bash bench/routing.sh DIR_A DIR_B   # A B A B A B
#   PERF=1 bash bench/routing.sh DIR              # also `perf record` the server
#   SYSCALLS=1 bash bench/routing.sh DIR          # count the server's system calls per workload
#   LOADGEN=DIR/pushbox-loadgen bash bench/routing.sh A B   # one generator for every build
#
# and a third workload, one pair with one message in flight (the path's own
# latency, no queueing behind other pairs):
#
#   messages --pairs 1 --count 2000 --window 1    (single)
#
# The floor (issue 14): an argument `floor:DIR`, `floor-plain:DIR` or
# `floor-hop:DIR` runs, instead of a pushbox, `DIR/pushbox-loadgen floor`, a
# forwarder that lets the clients log in and then copies each client's
# bytes unparsed to its partner's connection: TLS (STARTTLS, as pushbox),
# plain TCP, or TLS with each chunk handed to the partner's writer task (a
# wake-up, as a server's session task). Its CPU per message is what any
# server spends on this machine for the system calls and TLS alone:
#
#   ROUNDS=3 bash bench/routing.sh DIR floor:DIR floor-plain:DIR floor-hop:DIR
#
# One RESULT line per run (the generator's, labelled with the directory's
# last component, or floor, floor-plain, floor-hop), the load average before
# each. Work files go to a temporary directory that is removed at the end
# (kept with KEEP=1).
set -euo pipefail

ROUNDS="${ROUNDS:-1}"
SYSCALL_EVENTS=$(printf 'syscalls:sys_enter_%s,' writev write sendto read recvfrom epoll_wait futex pwrite64 fdatasync)
SYSCALL_EVENTS=${SYSCALL_EVENTS%,}
WORK="$(mktemp -d)"
trap '[ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null; [ -z "${KEEP:-}" ] && rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

start() {
  local bin=$1 d=$2
  PORT=$(free_port); TLS_PORT=$(free_port)
  pushbox_bench_config "$d" "$PORT" "$TLS_PORT"
  (cd "$d" && exec "$bin/pushbox" --config "$d/pushbox.toml" serve >"$d/log" 2>&1) &
  SERVER_PID=$!
  wait_port "$PORT" "$SERVER_PID"
}

# The floor forwarder (KIND floor, floor-plain or floor-hop) from BIN's generator.
start_floor() {
  local bin=$1 d=$2 kind=$3
  mkdir -p "$d"
  PORT=$(free_port)
  local args=(floor --listen "127.0.0.1:$PORT")
  FLOOR_ARGS=(--mech PLAIN)
  case $kind in
    floor-plain) FLOOR_ARGS+=(--plain); args=(--plain "${args[@]}") ;;
    *)
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
      args+=(--cert "$d/cert.pem" --key "$d/key.pem")
      [ "$kind" = floor-hop ] && args+=(--hop)
      ;;
  esac
  "$bin/pushbox-loadgen" "${args[@]}" >"$d/log" 2>&1 &
  SERVER_PID=$!
  wait_port "$PORT" "$SERVER_PID"
}

stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

one() {
  local bin label d kind=pushbox arg=$1
  case $arg in
    floor:* | floor-plain:* | floor-hop:*) kind=${arg%%:*}; arg=${arg#*:} ;;
  esac
  bin=$(cd "$arg" && pwd); label=$(basename "$bin"); d="$WORK/$label-$kind-$2"
  local loadgen=${LOADGEN:-$bin/pushbox-loadgen}
  FLOOR_ARGS=()
  if [ "$kind" = pushbox ]; then
    start "$bin" "$d"
  else
    label=$kind
    start_floor "$bin" "$d" "$kind"
  fi
  local lg=("$loadgen" --server "127.0.0.1:$PORT" --pid "$SERVER_PID" --label "$label" "${FLOOR_ARGS[@]}")
  # The forwarder takes any account: nothing to register.
  [ "$kind" = pushbox ] && "${lg[@]}" --concurrency 20 register --users 200 >/dev/null
  if [ -n "${PERF:-}" ]; then
    perf record -F 2000 -g --call-graph dwarf -o "$d/perf.data" -p "$SERVER_PID" 2>/dev/null &
    PERF_PID=$!
    sleep 1
  fi
  workload() {
    local name=$1
    if [ -n "${SYSCALLS:-}" ]; then
      perf stat -x, -e "$SYSCALL_EVENTS" -p "$SERVER_PID" -o "$d/stat-$name" &
      local stat_pid=$!
      sleep 0.5
    fi
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
    shift
    "${lg[@]}" "$@"
    if [ -n "${SYSCALLS:-}" ]; then
      kill -INT "$stat_pid"; wait "$stat_pid" 2>/dev/null || true
      # event name and count, one line each (the messages' own count is in the RESULT line).
      awk -F, '/^[0-9]/ {sub("syscalls:sys_enter_", "", $3); printf "  %s=%s", $3, $1} END {print ""}' "$d/stat-$name"
    fi
  }
  workload window messages --pairs 50 --count 400 --window 2
  workload pingpong messages --pairs 20 --count 200 --window 1
  workload single messages --pairs 1 --count 2000 --window 1
  if [ -n "${PERF:-}" ]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
    echo "perf data: $d/perf.data (kept)"
    KEEP=1
  fi
  stop
}

for r in $(seq 1 "$ROUNDS"); do
  for dir in "$@"; do one "$dir" "$r"; done
done

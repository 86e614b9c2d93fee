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
#
# One RESULT line per run (the generator's, labelled with the directory's
# last component), the load average before each. Work files go to a
# temporary directory that is removed at the end (kept with KEEP=1).
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

stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

one() {
  local bin label d
  bin=$(cd "$1" && pwd); label=$(basename "$bin"); d="$WORK/$label-$2"
  start "$bin" "$d"
  local lg=("$bin/pushbox-loadgen" --server "127.0.0.1:$PORT" --pid "$SERVER_PID" --label "$label")
  "${lg[@]}" --concurrency 20 register --users 200 >/dev/null
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

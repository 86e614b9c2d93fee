#!/usr/bin/env bash
# The relay benchmark with Sygnal beside pushbox: the same APNs stand-in, the
# same number of pushes, the same concurrency, in one run; then pushbox with
# its state in PostgreSQL, one node and two.
#
#   bash bench/relay-compare.sh [pushes] [concurrency]     # default 5000 64
#
# Sygnal is installed into a virtualenv ($VENV, default: a temporary one):
# from $SYGNAL_SRC (a checkout of Sygnal's source) when set; else the
# `matrix-sygnal` package; else, when the package index does not carry it,
# from Sygnal's source repository ($SYGNAL_GIT) at tag $SYGNAL_TAG, cloned
# with git. Its code is not changed: only its configuration (`proxy`) and
# the environment (`SSL_CERT_FILE`) point it at the stand-in; see `sygnal`
# in benches/relay_load.rs. NO_SYGNAL=1 leaves Sygnal out, NO_POSTGRES=1
# PostgreSQL; BENCH_TOKENS_LIST="1 64" runs the PostgreSQL rows once per
# number of whitelist tokens the senders spread over (default: one).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PUSHES="${1:-5000}"
CONC="${2:-64}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
VENV="${VENV:-$WORK/sygnal-venv}"
SYGNAL_GIT="${SYGNAL_GIT:-https://github.com/matrix-org/sygnal.git}"
SYGNAL_TAG="${SYGNAL_TAG:-v0.15.1}"
# Sygnal passes aioapns the key file's path; aioapns 4 takes the key's
# contents instead (and fails with "Unable to load PEM file"): keep 3.x.
SYGNAL_PINS="${SYGNAL_PINS-aioapns<4}"

install_sygnal() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -c "import sygnal" 2>/dev/null && return 0
  echo "== installing Sygnal" >&2
  "$VENV/bin/pip" install -q --upgrade pip >&2
  if [ -n "${SYGNAL_SRC:-}" ]; then
    "$VENV/bin/pip" install -q "$SYGNAL_SRC" $SYGNAL_PINS >&2
  elif ! "$VENV/bin/pip" install -q matrix-sygnal $SYGNAL_PINS >&2; then
    echo "== matrix-sygnal is not on the package index: building $SYGNAL_TAG from its source" >&2
    git clone -q --depth 1 --branch "$SYGNAL_TAG" "$SYGNAL_GIT" "$WORK/sygnal-src" >&2
    "$VENV/bin/pip" install -q "$WORK/sygnal-src" $SYGNAL_PINS >&2
  fi
}

cd "$ROOT"
if [ -z "${NO_SYGNAL:-}" ]; then
  install_sygnal
  SYGNAL_PYTHON="$VENV/bin/python" cargo bench --bench relay_load -- "$PUSHES" "$CONC"
else
  cargo bench --bench relay_load -- "$PUSHES" "$CONC"
fi

# The relay on PostgreSQL (a throw-away local cluster): one node, then two
# nodes sharing the database, the senders split between them. Skipped with
# NO_POSTGRES=1.
if [ -z "${NO_POSTGRES:-}" ]; then
  # shellcheck source=tests/postgres/cluster.sh
  . tests/postgres/cluster.sh
  start_postgres
  # start_postgres set its own exit trap: keep removing the work dir too.
  trap 'stop_postgres; rm -rf "$WORK"' EXIT
  # PostgreSQL's own CPU: the postmaster's (its pid is in postmaster.pid),
  # its ended children's (reaped into its cutime/cstime) and its live
  # children's, in clock ticks.
  pg_ticks() {
    local t pm
    pm=$(head -1 "$PG_WORK/data/postmaster.pid")
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
    for c in $(ps -o pid= --ppid "$pm"); do
      t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
  }
  pg_run() {
    local before after
    before=$(pg_ticks)
    BENCH_POSTGRES="$PG_URL" "$@" cargo bench --bench relay_load -- "$PUSHES" "$CONC"
    sleep 1 # the nodes' backends end and are reaped into the postmaster's
    after=$(pg_ticks)
    awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$PUSHES" \
      'BEGIN { printf "  PostgreSQL CPU over the run (set-up included): %.2f s, %.0f us per push\n", t / hz, t / hz / n * 1e6 }'
  }
  for tokens in ${BENCH_TOKENS_LIST:-1}; do
    pg_run env BENCH_TOKENS="$tokens"
    pg_run env BENCH_TOKENS="$tokens" BENCH_NODES=2
  done
fi

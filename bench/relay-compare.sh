#!/usr/bin/env bash
# The relay benchmark with Sygnal beside pushbox: the same APNs stand-in, the
# same number of pushes, the same concurrency, in one run; then pushbox with
# its state in PostgreSQL, one node and two.
#
#   bash bench/relay-compare.sh [pushes] [concurrency]     # default 5000 64
#
# Sygnal is installed into a virtualenv ($VENV, default: a temporary one):
# from $SYGNAL_SRC (a checkout of Sygnal's source) when set, else the
# `matrix-sygnal` package. Its code is not changed: only its configuration
# (`proxy`) and the environment (`SSL_CERT_FILE`) point it at the stand-in;
# see `sygnal` in benches/relay_load.rs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PUSHES="${1:-5000}"
CONC="${2:-64}"
VENV="${VENV:-$(mktemp -d)/sygnal-venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import sygnal" 2>/dev/null; then
  echo "== installing Sygnal" >&2
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q "${SYGNAL_SRC:-matrix-sygnal}" >&2
fi

cd "$ROOT"
SYGNAL_PYTHON="$VENV/bin/python" cargo bench --bench relay_load -- "$PUSHES" "$CONC"

# The relay on PostgreSQL (a throw-away local cluster): one node, then two
# nodes sharing the database, the senders split between them. Skipped with
# NO_POSTGRES=1.
if [ -z "${NO_POSTGRES:-}" ]; then
  # shellcheck source=tests/postgres/cluster.sh
  . tests/postgres/cluster.sh
  start_postgres
  BENCH_POSTGRES="$PG_URL" cargo bench --bench relay_load -- "$PUSHES" "$CONC"
  BENCH_POSTGRES="$PG_URL" BENCH_NODES=2 cargo bench --bench relay_load -- "$PUSHES" "$CONC"
fi

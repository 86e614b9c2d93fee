# A throw-away PostgreSQL cluster for the tests and benchmarks (sourced).
# `start_postgres` installs Debian's postgresql if needed, starts a cluster
# on a free loopback port in a temporary directory (as the `postgres` user:
# PostgreSQL refuses root), sets PG_URL to a database URL of it, and stops
# and removes it when the calling shell exits.

start_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local bin
  bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  PG_WORK=$(mktemp -d)
  chmod 711 "$PG_WORK"
  mkdir "$PG_WORK/data" "$PG_WORK/sock"
  chown postgres "$PG_WORK/data" "$PG_WORK/sock"
  trap 'stop_postgres' EXIT
  runuser -u postgres -- "$bin/initdb" -D "$PG_WORK/data" -A trust -U postgres >"$PG_WORK/initdb.log" 2>&1
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  runuser -u postgres -- "$bin/postgres" -D "$PG_WORK/data" -p "$port" -k "$PG_WORK/sock" \
    -c listen_addresses=127.0.0.1 -c max_connections=300 >"$PG_WORK/postgres.log" 2>&1 &
  PG_PID=$!
  for _ in $(seq 1 50); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
  done
  "$bin/pg_isready" -h 127.0.0.1 -p "$port" >/dev/null || { cat "$PG_WORK/postgres.log"; return 1; }
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

stop_postgres() {
  if [ -n "${PG_PID:-}" ]; then
    kill "$PG_PID" 2>/dev/null || true
    wait "$PG_PID" 2>/dev/null || true
    PG_PID=""
  fi
  if [ -n "${PG_WORK:-}" ]; then
    rm -rf "$PG_WORK"
    PG_WORK=""
  fi
}

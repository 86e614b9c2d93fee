# Shell functions shared by the benchmark scripts (bench/compare.sh,
# bench/routing.sh): source it, don't run it.

# Wait until 127.0.0.1:PORT accepts connections, or fail when PID exits.
# Up to five minutes: ejabberd's first start (Mnesia) is slow on a busy machine.
wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 1 3000); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "== server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "== port $port never opened" >&2; return 1
}

# Write DIR/pushbox.toml, the configuration every pushbox benchmark runs:
# c2s on PORT, direct TLS on TLS_PORT, open registration, limits out of the
# way of a load generator on loopback.
pushbox_bench_config() {
  local d=$1 port=$2 tls_port=$3
  mkdir -p "$d"
  cat >"$d/pushbox.toml" <<TOML
domain = "localhost"
data_dir = "data"
[listen]
c2s = ["127.0.0.1:$port"]
c2s_direct_tls = ["127.0.0.1:$tls_port"]
https = []
[registration]
mode = "open"
[limits]
connections_per_ip_per_minute = 1000000
max_connections_per_ip = 1000000
max_auth_failures_per_ip = 1000000
[log]
level = "warn"
TOML
}

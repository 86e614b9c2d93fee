#!/usr/bin/env bash
# Relayed UDP throughput and CPU per relayed megabyte: pushbox's built-in
# TURN server beside coturn on the same machine, both driven by coturn's
# load client (`turnutils_uclient`, client-to-client mode with channels) with
# the same REST-API credentials, on loopback.
#
#   bash bench/turn-compare.sh [clients] [messages] [length] [interval_ms]
#                                               # default 20 2000 1000 2
#
# Each of `clients` allocations sends `messages` datagrams of `length` bytes,
# one every `interval_ms` per client, to another client's relayed address;
# the server relays every datagram twice (client → relay → peer relay →
# client). Reported per server: messages sent and received, loss, wall
# time, payload MB/s sent by the clients, the server's CPU seconds (utime +
# stime from /proc) and CPU ms per MB of payload, peak RSS, and the UDP
# datagrams the kernel dropped meanwhile for full receive buffers (machine-wide,
# from /proc/net/snmp), which tells where lost messages went. pushbox's own
# drop counters (pushbox_turn_dropped_packets_total) are printed after its row.
# Needs Debian's `coturn` package (installed if missing) and a release build.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLIENTS="${1:-20}"
MESSAGES="${2:-2000}"
LENGTH="${3:-1000}"
INTERVAL="${4:-2}"
SECRET="bench-secret-0123456789abcdef"

command -v turnutils_uclient >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn >/dev/null
}
cd "$ROOT"
cargo build --release --locked -q
BIN="$ROOT/target/release/pushbox"
work=$(mktemp -d)
srv=""
trap '[ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$work"' EXIT

free_port() {
  python3 - <<'PY'
import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    p = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        t.close(); u.close()
PY
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Datagrams the kernel dropped for full receive buffers (all sockets of the machine).
rcvbuf_errors() { awk '/^Udp:/ && $2 ~ /^[0-9]+$/ {print $6}' /proc/net/snmp; }
hz=$(getconf CLK_TCK)

# run NAME PORT: drive the server whose pid is $srv, print one result row.
run() {
  local name=$1 port=$2 log="$work/uclient-$1.log"
  local c0 t0 t1 c1 rss line sent recv lost secs mbps cpu cpumb k0 k1
  c0=$(cpu_ticks "$srv"); t0=$(date +%s.%N); k0=$(rcvbuf_errors)
  turnutils_uclient -y -c -m "$CLIENTS" -n "$MESSAGES" -l "$LENGTH" -z "$INTERVAL" \
    -u "bench" -W "$SECRET" -p "$port" 127.0.0.1 > "$log" 2>&1 || true
  t1=$(date +%s.%N); c1=$(cpu_ticks "$srv"); k1=$(rcvbuf_errors)
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
  line=$(grep 'start_mclient: tot_send_msgs=' "$log" | tail -1)
  sent=$(sed -n 's/.*tot_send_msgs=\([0-9]*\).*/\1/p' <<<"$line")
  recv=$(sed -n 's/.*tot_recv_msgs=\([0-9]*\).*/\1/p' <<<"$line")
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' "$log" | tail -1 | sed 's/Total lost packets //')
  secs=$(echo "$t1 - $t0" | bc -l)
  mbps=$(echo "$sent * $LENGTH / 1000000 / $secs" | bc -l)
  cpu=$(echo "($c1 - $c0) / $hz" | bc -l)
  cpumb=$(echo "1000 * $cpu / ($sent * $LENGTH / 1000000)" | bc -l)
  printf '| %s | %s | %s | %s | %s | %.1f s | %.2f MB/s | %.2f s | %.1f ms | %.1f MiB |\n' \
    "$name" "$sent" "$recv" "$lost" "$((k1 - k0))" "$secs" "$mbps" "$cpu" "$cpumb" "$(echo "$rss / 1024" | bc -l)"
}

echo "clients=$CLIENTS messages=$MESSAGES length=$LENGTH interval=${INTERVAL}ms; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| server | sent | received | lost | kernel rcvbuf drops | wall | payload sent | server CPU | CPU per MB | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|"

# pushbox: only the TURN server and one (unused) c2s listener.
p=$(free_port); c2s=$(free_port); mport=$(free_port)
cat > "$work/pushbox.toml" <<TOML
domain = "localhost"
data_dir = "data"
[listen]
c2s = ["127.0.0.1:$c2s"]
c2s_direct_tls = []
https = []
[metrics]
listen = ["127.0.0.1:$mport"]
[log]
level = "warn"
[turn]
mode = "builtin"
bind = ["127.0.0.1"]
port = $p
tls_port = 0
secret = "$SECRET"
allowed_peers = ["127.0.0.1/32"]
max_allocations_per_user = 100000
max_allocations_per_ip = 100000
max_allocations = 100000
max_bandwidth = 0
TOML
"$BIN" --config "$work/pushbox.toml" serve 2>"$work/pushbox.log" &
srv=$!
for _ in $(seq 100); do grep -q "pushbox is ready" "$work/pushbox.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
run "pushbox $(git -C "$ROOT" rev-parse --short HEAD)" "$p"
curl -s "http://127.0.0.1:$mport/metrics" | grep '^pushbox_turn_dropped' | sed 's/^/    /' || true
kill "$srv"; wait "$srv" 2>/dev/null || true; srv=""

# coturn with the same secret, realm, loopback peers and no quotas.
p=$(free_port)
turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$p" \
  --use-auth-secret --static-auth-secret="$SECRET" --realm=localhost \
  --allow-loopback-peers --no-tls --no-dtls --no-cli --no-tcp-relay \
  --min-port=49152 --max-port=65535 --log-file=stdout --simple-log --no-stdout-log \
  > "$work/coturn.log" 2>&1 &
srv=$!
sleep 1
run "coturn $(turnserver --version 2>/dev/null | head -1)" "$p"
kill "$srv"; wait "$srv" 2>/dev/null || true; srv=""

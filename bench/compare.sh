#!/usr/bin/env bash
# Compare pushbox, Prosody (Debian stock GC and tuned GC) and ejabberd (Debian)
# on loopback with the same accounts and the same workloads, one server at a
# time. Each server's own cost is read from /proc by pushbox-loadgen --pid.
#
#   bash bench/compare.sh            # full run (installs prosody/ejabberd if missing)
#   QUICK=1 bash bench/compare.sh    # small sizes, to check the script
#   SERVERS="pushbox prosody" bash bench/compare.sh
#   GROUP_ONLY=1 SERVERS="pushbox prosody" bash bench/compare.sh   # the group chat workload only
#   LOGIN_ONLY=1 bash bench/compare.sh   # logins only: SASL+bind for all; SASL2+Bind 2 and FAST for pushbox
#   IDLE_ONLY=1 IDLE_SESSIONS=10000 SERVERS=pushbox bash bench/compare.sh   # idle memory at 10,000 sessions
#
# Results: one RESULT line per run on stdout and a Markdown table at the end
# (also written to $OUT, default bench-results.md in the work directory).
set -euo pipefail

ROOT="${BENCH_SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
OUT="${OUT:-$WORK/bench-results.md}"
SERVERS="${SERVERS:-pushbox prosody prosody-gc ejabberd}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# Workload sizes (same for every server).
if [ -n "${QUICK:-}" ]; then
  USERS=200; IDLE=200; PAIRS=20; COUNT=200; LOGINS=200; PINGPONG_COUNT=200; MANY=1000
else
  USERS=1000; IDLE=1000; PAIRS=20; COUNT=500; LOGINS=300; PINGPONG_COUNT=200; MANY=10000
fi
WINDOW=10
# IDLE_SESSIONS overrides the number of idle sessions (e.g. 5000 or 10000 with
# IDLE_ONLY=1; above USERS, several resources log in on each account).
IDLE="${IDLE_SESSIONS:-$IDLE}"
# LOGIN_COUNT overrides the number of measured logins (more logins, finer CPU figures).
LOGINS="${LOGIN_COUNT:-$LOGINS}"
# Group chat: one room of GROUP_OCCUPANTS, GROUP_COUNT room messages.
GROUP_OCCUPANTS=50
if [ -n "${QUICK:-}" ]; then GROUP_COUNT=100; else GROUP_COUNT=500; fi

log() { echo "== $*" >&2; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

install_peers() {
  local need=()
  command -v prosody >/dev/null || need+=(prosody)
  command -v ejabberdctl >/dev/null || need+=(ejabberd)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # Debian starts the packaged services when it can; this run uses its own instances.
  for s in prosody ejabberd; do
    if command -v service >/dev/null; then service "$s" stop >/dev/null 2>&1 || true; fi
  done
}

build() {
  if [ -z "${NO_BUILD:-}" ]; then
    log "building pushbox and pushbox-loadgen (release)"
    (cd "$ROOT" && cargo build --release --locked -p pushbox -p pushbox-loadgen >&2)
  fi
  PUSHBOX="$TARGET/release/pushbox"
  LOADGEN="$TARGET/release/pushbox-loadgen"
}

cert() {
  [ -f "$WORK/cert.pem" ] && return
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  cat "$WORK/key.pem" "$WORK/cert.pem" >"$WORK/both.pem"
}

# ---- servers: each start_X sets SERVER_PID and PORT ----

start_pushbox() {
  local d="$WORK/pushbox"
  pushbox_bench_config "$d" 15222 15223
  "$PUSHBOX" --config "$d/pushbox.toml" serve >"$d/log" 2>&1 &
  SERVER_PID=$!; PORT=15222
  wait_port $PORT $SERVER_PID
}

prosody_cfg() {
  local d=$1 gc=$2
  # Debian's stock module list and settings, with what a loopback benchmark
  # needs: own ports and paths, registration open, no 10 kB/s mod_limits
  # throttle, TCP_NODELAY. $gc is empty (stock GC) or the tuned setting.
  cat >"$d/prosody.cfg.lua" <<LUA
admins = { }
modules_enabled = {
  "disco"; "roster"; "saslauth"; "tls"; "blocklist"; "bookmarks"; "carbons";
  "dialback"; "pep"; "private"; "smacks"; "vcard4"; "vcard_legacy";
  "csi_simple"; "invites"; "invites_adhoc"; "invites_register"; "ping";
  "register"; "time"; "uptime"; "version"; "admin_adhoc";
}
modules_disabled = { }
run_as_root = true
use_ipv6 = false
interfaces = { "127.0.0.1" }
c2s_ports = { 25222 }
s2s_ports = { }
pidfile = "$d/prosody.pid"
data_path = "$d/data"
allow_registration = true
registration_invite_only = false
min_seconds_between_registrations = 0
registration_throttle_max = 1000000
c2s_require_encryption = true
s2s_secure_auth = true
authentication = "internal_hashed"
network_settings = { nagle = false }
log = { warn = "$d/prosody.log" }
$gc
VirtualHost "localhost"
  ssl = { certificate = "$WORK/cert.pem"; key = "$WORK/key.pem" }
-- Group chat with its archive, as pushbox's rooms have one.
Component "conference.localhost" "muc"
  modules_enabled = { "muc_mam" }
  muc_room_default_persistent = true
LUA
}

start_prosody() { start_prosody_with ""; }
start_prosody-gc() { start_prosody_with 'gc = { mode = "incremental"; threshold = 200; speed = 200 }'; }
start_prosody_with() {
  local d="$WORK/$CURRENT"; mkdir -p "$d/data"
  cert; prosody_cfg "$d" "$1"
  prosody --config "$d/prosody.cfg.lua" -F >"$d/stdout" 2>&1 &
  SERVER_PID=$!; PORT=25222
  wait_port $PORT $SERVER_PID
}

start_ejabberd() {
  local d="$WORK/ejabberd"; mkdir -p "$d/spool" "$d/logs"
  cert; cp "$WORK/both.pem" "$d/both.pem"
  # Debian's stock ejabberd.yml reduced to c2s, with the traps removed:
  # listen backlog 128 (stock 5), no 3000 B/s c2s shaper, more sessions per
  # account, in-band registration for the shared accounts, no per-IP
  # registration timeout.
  cat >"$d/ejabberd.yml" <<YML
loglevel: warning
log_rotate_count: 0
hosts:
  - localhost
certfiles:
  - "$d/both.pem"
define_macro:
  'TLS_CIPHERS': "HIGH:!aNULL:!eNULL:!3DES:@STRENGTH"
  'TLS_OPTIONS':
    - "no_sslv3"
    - "no_tlsv1"
    - "no_tlsv1_1"
    - "cipher_server_preference"
    - "no_compression"
c2s_ciphers: 'TLS_CIPHERS'
c2s_protocol_options: 'TLS_OPTIONS'
listen:
  -
    port: 35222
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    access: c2s
    starttls_required: true
    protocol_options: 'TLS_OPTIONS'
    backlog: 128
disable_sasl_mechanisms:
  - "digest-md5"
  - "X-OAUTH2"
auth_password_format: scram
registration_timeout: infinity
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    deny: blocked
    allow: all
  register:
    allow: all
  muc_create:
    allow: local
  pubsub_createnode:
    allow: local
shaper_rules:
  max_user_sessions: 100000
  max_user_offline_messages: 100
modules:
  mod_adhoc: {}
  mod_avatar: {}
  mod_blocking: {}
  mod_caps: {}
  mod_carboncopy: {}
  mod_client_state: {}
  mod_disco: {}
  mod_last: {}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_ping: {}
  mod_privacy: {}
  mod_private: {}
  mod_pubsub:
    access_createnode: pubsub_createnode
    plugins:
      - flat
      - pep
  mod_push: {}
  mod_register:
    access: register
    ip_access: all
  mod_roster:
    versioning: true
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_vcard:
    search: false
  mod_vcard_xupdate: {}
  mod_version: {}
YML
  cat >"$d/ejabberdctl.cfg" <<CFG
INET_DIST_INTERFACE=127.0.0.1
ERL_DIST_PORT=36999
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
ERLANG_NODE=pushbox-bench@localhost
CFG
  chown -R ejabberd: "$d"
  # Started as the ejabberd user directly (not through ejabberdctl's su, which
  # drops the open-files limit to 1024).
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  HOME="$d" setpriv --reuid ejabberd --regid ejabberd --init-groups \
    ejabberdctl --config "$d/ejabberd.yml" --ctl-config "$d/ejabberdctl.cfg" \
    --spool "$d/spool" --logs "$d/logs" --node pushbox-bench@localhost foreground >"$d/stdout" 2>&1 &
  local wrapper=$!
  PORT=35222
  wait_port $PORT $wrapper
  # On a busy machine the listener can come up before the node is ready: check again.
  sleep 5
  wait_port $PORT $wrapper
  SERVER_PID=$(pgrep -n -f "beam.smp.*$d/ejabberd.yml" || pgrep -n -f "beam.smp.*pushbox-bench@localhost")
  EJ_WRAPPER=$wrapper
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  if [ -n "${EJ_WRAPPER:-}" ]; then kill "$EJ_WRAPPER" 2>/dev/null || true; wait "$EJ_WRAPPER" 2>/dev/null || true; EJ_WRAPPER=; fi
  wait "$SERVER_PID" 2>/dev/null || true
}

lg() { "$LOADGEN" --server "127.0.0.1:$PORT" --pid "$SERVER_PID" --label "$CURRENT" "$@"; }
# pushbox's direct TLS port (XEP-0368).
lgd() { "$LOADGEN" --server 127.0.0.1:15223 --direct-tls --pid "$SERVER_PID" --label "$CURRENT" "$@"; }

run_one() {
  CURRENT=$1
  log "$CURRENT: starting"
  "start_$CURRENT"
  if [ ! -e "$WORK/$CURRENT.registered" ]; then
    log "$CURRENT: pid $SERVER_PID on $PORT; registering $USERS accounts"
    lg --concurrency 20 register --users "$USERS" >&2
    touch "$WORK/$CURRENT.registered"
  fi
  # Memory first, in a fresh process: garbage left by the registrations would
  # otherwise be reused by the new sessions and hide their cost.
  stop_server
  "start_$CURRENT"
  sleep 3
  if [ -n "${LOGIN_ONLY:-}" ]; then
    lg logins --count 50 --users "$USERS" --parallel 5 >/dev/null
    log "$CURRENT: logins (SASL, restart, bind)"
    lg logins --count "$LOGINS" --users "$USERS" --parallel 10 | tee -a "$WORK/results"
    if [ "$CURRENT" = pushbox ]; then
      log "$CURRENT: logins (SASL2 + Bind 2, SCRAM)"
      lg logins --count "$LOGINS" --users "$USERS" --parallel 10 --sasl2 | sed 's/mode=logins/mode=logins_sasl2/' | tee -a "$WORK/results"
      log "$CURRENT: logins (SASL2 + Bind 2, FAST token)"
      lg logins --count "$LOGINS" --users "$USERS" --parallel 10 --fast | sed 's/mode=logins/mode=logins_fast/' | tee -a "$WORK/results"
      log "$CURRENT: TCP + TLS + stream features only (the floor)"
      lg logins --count "$LOGINS" --users "$USERS" --parallel 10 --tls-only | sed 's/mode=logins/mode=logins_tls/' | tee -a "$WORK/results"
      lgd logins --count "$LOGINS" --users "$USERS" --parallel 10 --tls-only | sed 's/mode=logins/mode=logins_tls_direct/' | tee -a "$WORK/results"
      log "$CURRENT: the same three over direct TLS"
      lgd logins --count "$LOGINS" --users "$USERS" --parallel 10 | sed 's/mode=logins/mode=logins_direct/' | tee -a "$WORK/results"
      lgd logins --count "$LOGINS" --users "$USERS" --parallel 10 --sasl2 | sed 's/mode=logins/mode=logins_sasl2_direct/' | tee -a "$WORK/results"
      lgd logins --count "$LOGINS" --users "$USERS" --parallel 10 --fast | sed 's/mode=logins/mode=logins_fast_direct/' | tee -a "$WORK/results"
    fi
    stop_server
    return
  fi
  log "$CURRENT: $IDLE idle sessions"
  lg --concurrency 50 idle --sessions "$IDLE" --users "$USERS" --hold 1 | tee -a "$WORK/results"
  if [ -n "${IDLE_ONLY:-}" ]; then
    stop_server
    return
  fi
  if [ "$CURRENT" != ejabberd ]; then
    local rooms=conference.localhost
    [ "$CURRENT" = pushbox ] && rooms=groups.localhost
    log "$CURRENT: group chat, $GROUP_OCCUPANTS occupants"
    lg group --occupants 10 --count 50 --window "$WINDOW" --room "warmup$$@$rooms" >/dev/null
    lg group --occupants "$GROUP_OCCUPANTS" --count "$GROUP_COUNT" --window "$WINDOW" --room "bench$$@$rooms" | tee -a "$WORK/results"
  fi
  if [ -n "${GROUP_ONLY:-}" ]; then
    stop_server
    return
  fi
  # Warm-up: a few logins and messages so every server has loaded its code paths.
  lg logins --count 50 --users "$USERS" --parallel 5 >/dev/null
  lg messages --pairs 5 --count 200 --window "$WINDOW" >/dev/null
  log "$CURRENT: logins"
  lg logins --count "$LOGINS" --users "$USERS" --parallel 10 | tee -a "$WORK/results"
  log "$CURRENT: messages, window $WINDOW"
  lg messages --pairs "$PAIRS" --count "$COUNT" --window "$WINDOW" | tee -a "$WORK/results"
  log "$CURRENT: messages, ping-pong"
  lg messages --pairs "$PAIRS" --count "$PINGPONG_COUNT" --window 1 | sed 's/mode=messages/mode=pingpong/' | tee -a "$WORK/results"
  stop_server
}

# pushbox on its own: binary size, start-up time, idle RSS, RSS with many idle sessions.
pushbox_alone() {
  CURRENT=pushbox-alone
  local d="$WORK/pushbox"
  log "pushbox alone: size, start-up, idle RSS, $MANY idle sessions"
  local size; size=$(stat -c %s "$PUSHBOX")
  # Start-up to accepting connections (data directory already initialised).
  local startup_ms
  startup_ms=$(python3 - "$PUSHBOX" "$d/pushbox.toml" <<'PY'
import socket, subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen([sys.argv[1], "--config", sys.argv[2], "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    try:
        socket.create_connection(("127.0.0.1", 15222), timeout=1).close()
        break
    except OSError:
        time.sleep(0.001)
print(f"{(time.monotonic() - t0) * 1000:.0f}")
p.terminate(); p.wait()
PY
)
  start_pushbox
  sleep 2
  local idle_rss; idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
  lg --concurrency 100 idle --sessions "$MANY" --users "$USERS" --hold 1 | tee -a "$WORK/results"
  stop_server
  echo "RESULT label=pushbox mode=alone binary_bytes=$size startup_ms=$startup_ms idle_rss_kib=$idle_rss" | tee -a "$WORK/results"
}

table() {
  python3 - "$WORK/results" <<'PY'
import sys, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(p.split("=", 1) for p in line.split()[1:])
    rows.setdefault(kv["label"], {})[kv["mode"]] = kv
def g(l, m, k):
    return rows.get(l, {}).get(m, {}).get(k, "–")
cols = [
    ("CPU µs / routed message (window %s)", "messages", "server_cpu_us_per_msg"),
    ("CPU µs / routed message (ping-pong)", "pingpong", "server_cpu_us_per_msg"),
    ("KiB RSS / idle TLS session", "idle", "kib_per_session"),
    ("CPU µs / login (TLS+SCRAM+bind)", "logins", "server_cpu_us_per_login"),
    ("CPU µs / login (TLS+SASL2 SCRAM+Bind 2)", "logins_sasl2", "server_cpu_us_per_login"),
    ("CPU µs / login (TLS+FAST token+Bind 2)", "logins_fast", "server_cpu_us_per_login"),
    ("round trips to a bound session (SASL+bind / SASL2+Bind 2 / FAST)", "logins", "round_trips_to_bound"),
    ("round trips, SASL2+Bind 2", "logins_sasl2", "round_trips_to_bound"),
    ("round trips, FAST", "logins_fast", "round_trips_to_bound"),
    ("CPU µs / login, direct TLS (SASL+bind)", "logins_direct", "server_cpu_us_per_login"),
    ("CPU µs / login, direct TLS (SASL2+Bind 2)", "logins_sasl2_direct", "server_cpu_us_per_login"),
    ("CPU µs / login, direct TLS (FAST+Bind 2)", "logins_fast_direct", "server_cpu_us_per_login"),
    ("CPU µs / connection, STARTTLS + features only (floor)", "logins_tls", "server_cpu_us_per_login"),
    ("CPU µs / connection, direct TLS + features only (floor)", "logins_tls_direct", "server_cpu_us_per_login"),
    ("round trips, direct TLS (SASL+bind)", "logins_direct", "round_trips_to_bound"),
    ("round trips, direct TLS (FAST)", "logins_fast_direct", "round_trips_to_bound"),
    ("p50 / p99 ms (window)", "messages", ("p50_ms", "p99_ms")),
    ("p50 / p99 ms (ping-pong)", "pingpong", ("p50_ms", "p99_ms")),
    ("p50 / p99 ms to the client's socket, without the generator's own wait (ping-pong)", "pingpong", ("arrived_p50_ms", "arrived_p99_ms")),
    ("messages/s (window)", "messages", "msgs_per_s"),
    ("logins/s", "logins", "logins_per_s"),
    ("RSS MiB with idle sessions", "idle", "rss_after_kib"),
    ("CPU µs / delivered room copy (50 occupants)", "group", "server_cpu_us_per_copy"),
    ("CPU µs / room message (50 occupants)", "group", "server_cpu_us_per_room_msg"),
    ("p50 / p99 ms per room copy", "group", ("p50_ms", "p99_ms")),
]
labels = [l for l in rows if l != "pushbox-alone"]
print("| figure | " + " | ".join(labels) + " |")
print("|---|" + "---|" * len(labels))
for title, mode, key in cols:
    cells = []
    for l in labels:
        if l == "pushbox-alone":
            continue
        if isinstance(key, tuple):
            cells.append(" / ".join(g(l, mode, k) for k in key))
        elif key == "rss_after_kib":
            v = g(l, mode, key)
            cells.append(f"{int(v)/1024:.0f}" if v != "–" else v)
        else:
            cells.append(g(l, mode, key))
    t = title % (rows[labels[0]].get("messages", {}).get("window", "?"),) if "%s" in title else title
    print(f"| {t} | " + " | ".join(cells) + " |")
alone = rows.get("pushbox", {}).get("alone")
many = rows.get("pushbox-alone", {}).get("idle")
if alone:
    print()
    print("| pushbox alone | |")
    print("|---|---|")
    print(f"| release binary | {int(alone['binary_bytes'])/1048576:.1f} MiB |")
    print(f"| start-up to accepting connections | {alone['startup_ms']} ms |")
    print(f"| idle RSS after start | {int(alone['idle_rss_kib'])/1024:.1f} MiB |")
if many:
    print(f"| {many['sessions']} idle TLS sessions | {int(many['rss_after_kib'])/1024:.0f} MiB RSS, {many['kib_per_session']} KiB each |")
PY
}

main() {
  install_peers
  build
  [ -n "${APPEND:-}" ] || : >"$WORK/results"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  for s in $SERVERS; do run_one "$s"; done
  case " $SERVERS " in *" pushbox "*) [ -n "${IDLE_ONLY:-}${GROUP_ONLY:-}${LOGIN_ONLY:-}" ] || pushbox_alone ;; esac
  {
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg); users=$USERS idle=$IDLE pairs=$PAIRS count=$COUNT logins=$LOGINS"
    echo
    table
  } | tee "$OUT"
  log "raw results: $WORK/results; table: $OUT"
}

trap 'stop_server 2>/dev/null || true' EXIT
main "$@"

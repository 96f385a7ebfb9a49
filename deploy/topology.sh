#!/usr/bin/env bash
# opsgate scaled out, on one machine: each gateway replica is a host of its own (a network namespace with
# its own address, data dir and CPU core), nginx balances them, and PostgreSQL, Redis and a chroma server
# are shared services reached over veth links. Tests (tests/deploy/), the benchmark (bench/scaleout.py)
# and docs/operations.md use it; deploy/compose.yaml runs the same topology in containers, with the same
# nginx config (deploy/nginx/) and replica environment (deploy/gateway.env).
#
#   deploy/topology.sh up [--replicas N]    start what is not running (idempotent); prints the env
#   deploy/topology.sh down                 stop everything; remove namespaces, links, hosts files, state
#   deploy/topology.sh status               what runs (exit 1 unless everything does)
#   deploy/topology.sh env                  addresses and files as KEY=VALUE lines (for scripts and tests)
#   deploy/topology.sh kill rN              kill -9 one replica (its data dir stays)
#   deploy/topology.sh start|stop rN        start a replica (same data dir) / stop it with SIGTERM
#   deploy/topology.sh start|stop|restart postgres|redis|chroma|nginx
#   deploy/topology.sh cli ARGS...          the opsgate CLI as a replica runs it (in r1's namespace)
#
# Layout, for ID = $OPSGATE_TOPOLOGY_ID (default 1; several topologies may run side by side):
#   root namespace   bridge og${ID}br 10.231.${ID}.1/24: postgres :5432, redis :6379, chroma :8000 and
#                    nginx :8080, all bound to 10.231.${ID}.1 only (the machine's own services are untouched)
#   opsgate${ID}-rN  veth 10.231.${ID}.(10+N): `opsgate serve --host 0.0.0.0 --port 8080`, taskset to core
#                    (N-1) mod nproc, data dir $STATE/rN/data; postgres/redis/chroma in its /etc/hosts
#
# Environment: OPSGATE_PROJECT_DIR (default: this checkout), OPSGATE_TOPOLOGY_DIR (state, default
# /tmp/opsgate-topology-$ID), OPSGATE_BIN (default: .venv/bin/opsgate of this checkout, else on PATH),
# OPSGATE_TOPOLOGY_CPUS ("0,1": the cores replicas are pinned to in turn; "none": no pinning),
# OPSGATE_TOPOLOGY_GATEWAY_ENV (extra KEY=VALUE lines file for replicas, after deploy/gateway.env).
# Variables named OPSGATE_TEST_* and PYTHONPATH are passed to replicas (the test suite's network guard).
# Needs root, iproute2, nginx (deploy/install-deps.sh), redis-server, PostgreSQL's initdb/pg_ctl.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$DEPLOY/.." && pwd)"
ID="${OPSGATE_TOPOLOGY_ID:-1}"
NET="10.231.${ID}"
HOST_IP="${NET}.1"
BRIDGE="og${ID}br"
STATE="${OPSGATE_TOPOLOGY_DIR:-/tmp/opsgate-topology-${ID}}"
PROJECT="${OPSGATE_PROJECT_DIR:-$REPO}"
PG_BIN="${OPSGATE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
READY_TIMEOUT_S="${OPSGATE_TOPOLOGY_READY_TIMEOUT_S:-300}"

die() { echo "topology: $*" >&2; exit 1; }
note() { echo "topology: $*" >&2; }

opsgate_bin() {
  if [[ -n "${OPSGATE_BIN:-}" ]]; then echo "$OPSGATE_BIN"
  elif [[ -x "$REPO/.venv/bin/opsgate" ]]; then echo "$REPO/.venv/bin/opsgate"
  else command -v opsgate || die "no opsgate executable: set OPSGATE_BIN or install the project"
  fi
}
chroma_bin() { echo "$(dirname "$(opsgate_bin)")/chroma"; }
ns() { echo "opsgate${ID}-r$1"; }
replica_ip() { echo "${NET}.$((10 + $1))"; }
replica_count() { cat "$STATE/replicas" 2>/dev/null || echo 0; }
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_http() {  # URL SECONDS [PID FILE]: until URL answers 200
  local url="$1" deadline=$((SECONDS + $2)) pidfile="${3:-}"
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if [[ -n "$pidfile" ]] && ! pid_alive "$pidfile"; then return 1; fi
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# -- network ------------------------------------------------------------------------------------------

net_up() {
  local n="$1"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "${HOST_IP}/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  for ((i = 1; i <= n; i++)); do
    local name root_end
    name="$(ns "$i")"
    root_end="og${ID}r${i}"
    ip netns list | grep -qw "^$name" || ip netns add "$name"
    if ! ip link show "$root_end" >/dev/null 2>&1; then
      ip link add "$root_end" type veth peer name "${root_end}p"
      ip link set "${root_end}p" netns "$name"
      ip -n "$name" link set "${root_end}p" name eth0
      ip -n "$name" addr add "$(replica_ip "$i")/24" dev eth0
      ip -n "$name" link set eth0 up
      ip -n "$name" link set lo up
      ip link set "$root_end" master "$BRIDGE"
      ip link set "$root_end" up
    fi
    # `ip netns exec` shows this file as /etc/hosts: the service names of deploy/gateway.env
    mkdir -p "/etc/netns/$name"
    printf '127.0.0.1 localhost\n%s postgres redis chroma nginx\n' "$HOST_IP" >"/etc/netns/$name/hosts"
  done
}

net_down() {
  for name in $(ip netns list | awk '{print $1}' | grep "^opsgate${ID}-r[0-9]*$" || true); do
    ip netns del "$name" 2>/dev/null || true
    rm -rf "/etc/netns/$name"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rmdir /etc/netns 2>/dev/null || true  # only when no other namespace has files there
}

# -- shared services ------------------------------------------------------------------------------------

pg_ctl_() { runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STATE/postgres/data" "$@"; }
psql_() { runuser -u postgres -- "$PG_BIN/psql" -h "$STATE/postgres" -U postgres -d postgres -qAt "$@"; }

postgres_start() {
  [[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL's initdb not found (set OPSGATE_PG_BIN)"
  if [[ ! -f "$STATE/postgres/data/PG_VERSION" ]]; then
    mkdir -p "$STATE/postgres"
    chown postgres: "$STATE/postgres"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$STATE/postgres/data" -U postgres --auth=trust -E UTF8 \
      --no-instructions >"$STATE/postgres/initdb.log"
    echo "host all all ${NET}.0/24 trust" >>"$STATE/postgres/data/pg_hba.conf"
    cat >>"$STATE/postgres/data/postgresql.conf" <<EOF
listen_addresses = '${HOST_IP}'
port = 5432
unix_socket_directories = '${STATE}/postgres'
max_connections = 200
EOF
  fi
  if ! pg_ctl_ status >/dev/null 2>&1; then
    pg_ctl_ -l "$STATE/postgres/postgres.log" -w -t 60 start >/dev/null
  fi
  if [[ "$(psql_ -c "SELECT 1 FROM pg_roles WHERE rolname = 'opsgate'")" != 1 ]]; then
    psql_ -c "CREATE ROLE opsgate LOGIN PASSWORD 'opsgate'"
    psql_ -c "CREATE DATABASE opsgate OWNER opsgate"
  fi
}
postgres_stop() { [[ -f "$STATE/postgres/data/PG_VERSION" ]] && pg_ctl_ -m fast -w stop >/dev/null 2>&1 || true; }
postgres_running() { [[ -f "$STATE/postgres/data/PG_VERSION" ]] && pg_ctl_ status >/dev/null 2>&1; }

redis_start() {
  pid_alive "$STATE/redis/redis.pid" && return 0
  mkdir -p "$STATE/redis"
  # append-only file: counters (rate limits, budgets) survive a restart, at most 1 s of them lost
  redis-server --bind "$HOST_IP" --port 6379 --protected-mode no --dir "$STATE/redis" \
    --appendonly yes --appendfsync everysec --save "" --daemonize yes \
    --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis/redis.log"
  local deadline=$((SECONDS + 20))
  until redis-cli -h "$HOST_IP" -p 6379 ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "redis did not start: $(tail -5 "$STATE/redis/redis.log")"
    sleep 0.1
  done
}
redis_stop() { stop_pid "$STATE/redis/redis.pid" 20; }
redis_running() { pid_alive "$STATE/redis/redis.pid"; }

chroma_start() {
  pid_alive "$STATE/chroma/pid" && return 0
  mkdir -p "$STATE/chroma/home"
  HOME="$STATE/chroma/home" ANONYMIZED_TELEMETRY=False setsid "$(chroma_bin)" run --host "$HOST_IP" \
    --port 8000 --path "$STATE/chroma/data" >>"$STATE/chroma/chroma.log" 2>&1 </dev/null &
  echo $! >"$STATE/chroma/pid"
  wait_http "http://${HOST_IP}:8000/api/v2/heartbeat" 60 "$STATE/chroma/pid" ||
    die "chroma did not start: $(tail -5 "$STATE/chroma/chroma.log")"
}
chroma_stop() { stop_pid "$STATE/chroma/pid" 20; }
chroma_running() { pid_alive "$STATE/chroma/pid"; }

stop_pid() {  # PIDFILE SECONDS: SIGTERM, then SIGKILL after SECONDS
  local pidfile="$1" pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
  rm -f "$pidfile"
}

# -- replicas -------------------------------------------------------------------------------------------

replica_env() {  # N: the replica's environment, as KEY=VALUE words for `env -i`
  local n="$1"
  echo "PATH=$(dirname "$(opsgate_bin)"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  echo "HOME=$STATE/r$n/home" "LANG=C.UTF-8" "PYTHONUNBUFFERED=1"
  grep -Ev '^\s*(#|$)' "$DEPLOY/gateway.env"
  if [[ -n "${OPSGATE_TOPOLOGY_GATEWAY_ENV:-}" ]]; then grep -Ev '^\s*(#|$)' "$OPSGATE_TOPOLOGY_GATEWAY_ENV"; fi
  echo "OPSGATE_DATA_DIR=$STATE/r$n/data" "OPSGATE_PROJECT_DIR=$PROJECT"
  # this checkout's gateway package first (a venv may hold another checkout's editable install)
  echo "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}"
  env | grep -E '^OPSGATE_TEST_[A-Z_]*=' || true
}

replica_core() {
  local n="$1" cpus="${OPSGATE_TOPOLOGY_CPUS:-}"
  [[ "$cpus" == none ]] && return 0
  if [[ -z "$cpus" ]]; then cpus="$(seq -s, 0 $(($(nproc) - 1)))"; fi
  IFS=, read -ra list <<<"$cpus"
  echo "${list[$(((n - 1) % ${#list[@]}))]}"
}

replica_start() {  # N (no wait)
  local n="$1" core pin=()
  pid_alive "$STATE/r$n/pid" && return 0
  ((n >= 1 && n <= $(replica_count))) || die "no replica r$n (the topology has $(replica_count))"
  mkdir -p "$STATE/r$n/data" "$STATE/r$n/home"
  core="$(replica_core "$n")"
  [[ -n "$core" ]] && pin=(taskset -c "$core")
  # shellcheck disable=SC2046 # one word per KEY=VALUE line, by design
  ip netns exec "$(ns "$n")" env -i $(replica_env "$n") setsid "${pin[@]}" "$(opsgate_bin)" serve \
    --host 0.0.0.0 --port 8080 >>"$STATE/r$n/serve.log" 2>&1 </dev/null &
  echo $! >"$STATE/r$n/pid"
}

replica_wait() {  # N
  local n="$1"
  wait_http "http://$(replica_ip "$n"):8080/readyz" "$READY_TIMEOUT_S" "$STATE/r$n/pid" ||
    die "replica r$n is not ready: $(tail -20 "$STATE/r$n/serve.log")"
}

replica_kill() { pid_alive "$STATE/r$1/pid" && kill -KILL "$(cat "$STATE/r$1/pid")"; rm -f "$STATE/r$1/pid"; }
replica_stop() { stop_pid "$STATE/r$1/pid" 40; }

admin_key() {  # the first start's admin key, kept at $STATE/admin.key
  [[ -s "$STATE/admin.key" ]] && return 0
  local f
  for f in "$STATE"/r*/data/admin.key; do
    [[ -s "$f" ]] && install -m 600 "$f" "$STATE/admin.key" && return 0
  done
  note "no replica created an admin key (the database had keys already); create one with: $0 cli keys create"
}

# -- balancer -------------------------------------------------------------------------------------------

nginx_config() {
  local n i ips=""
  n="$(replica_count)"
  for ((i = 1; i <= n; i++)); do ips+="$(replica_ip "$i") "; done
  mkdir -p "$STATE/nginx/tmp"
  # compose's upstream blocks, with one `server` line per replica here for gateway-1's (same parameters)
  awk -v ips="$ips" '
    BEGIN { print "# written by deploy/topology.sh from deploy/nginx/compose/opsgate-upstreams.conf" }
    /^[[:space:]]*server gateway-1:8080/ {
      params = $0; sub(/^[[:space:]]*server gateway-1:8080/, "", params)
      n = split(ips, list, " ")
      for (i = 1; i <= n; i++) print "    server " list[i] ":8080" params
      next
    }
    /^[[:space:]]*server gateway-[0-9]+:8080/ { next }
    { print }
  ' "$DEPLOY/nginx/compose/opsgate-upstreams.conf" >"$STATE/nginx/opsgate-upstreams.conf"
  echo "listen ${HOST_IP}:8080;" >"$STATE/nginx/opsgate-listen.conf"
  cat >"$STATE/nginx/nginx.conf" <<EOF
# written by deploy/topology.sh; the server itself is deploy/nginx/opsgate.conf, as in compose
daemon off;
user root;  # a throwaway test balancer: its temp files live in the topology's state dir
worker_processes 1;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $STATE/nginx/tmp/body;
    proxy_temp_path $STATE/nginx/tmp/proxy;
    fastcgi_temp_path $STATE/nginx/tmp/fastcgi;
    uwsgi_temp_path $STATE/nginx/tmp/uwsgi;
    scgi_temp_path $STATE/nginx/tmp/scgi;
    include $DEPLOY/nginx/opsgate.conf;
}
EOF
}

nginx_start() {  # start, or reload with the current replicas
  command -v nginx >/dev/null || die "nginx is not installed: run deploy/install-deps.sh"
  nginx_config
  nginx -t -q -p "$STATE/nginx" -c "$STATE/nginx/nginx.conf" 2>>"$STATE/nginx/error.log" ||
    die "nginx config: $(tail -3 "$STATE/nginx/error.log")"
  if nginx_running; then
    kill -HUP "$(cat "$STATE/nginx/master.pid")"
    return 0
  fi
  setsid nginx -p "$STATE/nginx" -c "$STATE/nginx/nginx.conf" >>"$STATE/nginx/access.log" 2>&1 </dev/null &
  echo $! >"$STATE/nginx/master.pid"
  wait_http "http://${HOST_IP}:8080/nginx-health" 20 "$STATE/nginx/master.pid" ||
    die "nginx did not start: $(tail -5 "$STATE/nginx/error.log")"
}
nginx_stop() { stop_pid "$STATE/nginx/master.pid" 10; }
nginx_running() { pid_alive "$STATE/nginx/master.pid"; }

# -- commands -------------------------------------------------------------------------------------------

print_env() {
  local n i
  n="$(replica_count)"
  echo "TOPOLOGY_ID=$ID"
  echo "TOPOLOGY_DIR=$STATE"
  echo "TOPOLOGY_NETWORK=${NET}.0/24"
  echo "TOPOLOGY_URL=http://${HOST_IP}:8080"
  echo "TOPOLOGY_REPLICAS=$n"
  for ((i = 1; i <= n; i++)); do echo "TOPOLOGY_R${i}_URL=http://$(replica_ip "$i"):8080"; done
  echo "TOPOLOGY_ADMIN_KEY_FILE=$STATE/admin.key"
  echo "TOPOLOGY_PROJECT_DIR=$PROJECT"
  # the shared services as the root namespace reaches them (replicas use the names in gateway.env)
  echo "TOPOLOGY_DATABASE_URL=postgresql://opsgate:opsgate@${HOST_IP}:5432/opsgate"
  echo "TOPOLOGY_REDIS_URL=redis://${HOST_IP}:6379/0"
  echo "TOPOLOGY_CHROMA_URL=http://${HOST_IP}:8000"
}

cmd_up() {
  local n="${OPSGATE_TOPOLOGY_REPLICAS:-}"
  while (($#)); do
    case "$1" in
      --replicas) n="$2"; shift 2 ;;
      *) die "up: unknown option $1" ;;
    esac
  done
  [[ $EUID -eq 0 ]] || die "needs root (network namespaces)"
  local current
  current="$(replica_count)"
  n="${n:-$((current > 0 ? current : 2))}"
  ((n >= 1 && n <= 200)) || die "--replicas must be 1-200"
  if ((current > n)); then
    for ((i = n + 1; i <= current; i++)); do replica_stop "$i"; done
  fi
  mkdir -p "$STATE"
  echo "$n" >"$STATE/replicas"
  net_up "$n"
  postgres_start
  redis_start
  chroma_start
  for ((i = 1; i <= n; i++)); do replica_start "$i"; done
  for ((i = 1; i <= n; i++)); do replica_wait "$i"; done
  admin_key
  nginx_start
  print_env
}

cmd_down() {
  nginx_stop
  local n i
  n="$(replica_count)"
  for ((i = 1; i <= n; i++)); do replica_stop "$i"; done
  # anything still running in our namespaces was started in them by this script
  for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^opsgate${ID}-r[0-9]*$" || true); do
    for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  chroma_stop
  redis_stop
  postgres_stop
  net_down
  rm -rf "$STATE"
}

cmd_status() {
  local ok=0 n i
  n="$(replica_count)"
  report() { if "$2"; then echo "$1: running"; else echo "$1: stopped"; ok=1; fi; }
  report postgres postgres_running
  report redis redis_running
  report chroma chroma_running
  report nginx nginx_running
  for ((i = 1; i <= n; i++)); do
    if pid_alive "$STATE/r$i/pid"; then
      echo "r$i ($(ns "$i"), $(replica_ip "$i")): running, pid $(cat "$STATE/r$i/pid")"
    else
      echo "r$i ($(ns "$i"), $(replica_ip "$i")): stopped"; ok=1
    fi
  done
  ((n > 0)) || { echo "no topology at $STATE"; ok=1; }
  return "$ok"
}

service() {  # ACTION NAME
  local action="$1" name="$2"
  case "$name" in
    postgres|redis|chroma|nginx) ;;
    r[0-9]*)
      local n="${name#r}"
      case "$action" in
        start) replica_start "$n"; replica_wait "$n" ;;
        stop) replica_stop "$n" ;;
        restart) replica_stop "$n"; replica_start "$n"; replica_wait "$n" ;;
      esac
      return 0 ;;
    *) die "unknown service $name (postgres, redis, chroma, nginx, rN)" ;;
  esac
  case "$action" in
    start) "${name}_start" ;;
    stop) "${name}_stop" ;;
    restart) "${name}_stop"; "${name}_start" ;;
  esac
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) print_env ;;
    kill) [[ "${1:-}" =~ ^r[0-9]+$ ]] || die "kill rN"; replica_kill "${1#r}" ;;
    start|stop|restart) [[ -n "${1:-}" ]] || die "$cmd NAME"; service "$cmd" "$1" ;;
    cli)
      # shellcheck disable=SC2046
      ip netns exec "$(ns 1)" env -i $(replica_env 1) "$(opsgate_bin)" "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
}

main "$@"

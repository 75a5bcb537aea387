#!/usr/bin/env bash
# Switchyard load tests: direct-to-mock, nginx (the floor), two Rust peers (noveum-ai-gateway, crabllm),
# Switchyard default, bare and full, and failover, in one run on 127.0.0.1, against the same mock. Prints
# Markdown tables and every target ratio of issue 14 (see load-tests/RESULTS.md for how to read them).
#
#   bash load-tests/run.sh                 # full run, 10 s per measurement: ~5 minutes plus the build
#   bash load-tests/run.sh --quick         # 3 s per measurement: under 2 minutes plus the build
#   bash load-tests/run.sh --runs 3        # repeat every measurement 3 times, report medians
#   bash load-tests/run.sh --perf          # afterwards, perf-profile bare Switchyard under 50 connections
#
# Peers are installed once with `cargo install --locked --root load-tests/.cache/peers` (gitignored; a
# release build of each, slow on 2 cores); a peer that fails to install or start is reported, not fatal.
# Options: --quick, --runs N, --duration S, --no-build, --no-failover, --no-peers, --no-install (run only the peers
# already installed), --no-redis, --perf, --perf-system NAME
# (profile another system: bare-w2, full-w1, full-w2, fullnd-w1, fullnc-w1), --keep DIR (keep raw results, logs, configs
# and the perf data in DIR), --workers-failover N (default 1).
# Also measured: /v1/messages and /v1/responses passed through by the default config (against chat), and, when
# redis-server is installed, `state.backend: redis` against a redis-server the script starts on a free port: the
# default and full configs at 1 connection beside local mode, Redis's own round trip (redis-benchmark, 1 connection),
# and 3 full replicas behind nginx at 50 connections.
# Environment: RUST_LOG (passed to Switchyard; default: its own default, info: no line per request); CARGO_TARGET_DIR
# (where the release binaries are built and taken from; default: target/).
#
# Everything this script starts is stopped by PID on exit (trap EXIT); nothing is killed by name.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
LUA="$HERE/lua/chat.lua"

DURATION=10
QUICK=0
RUNS=1
BUILD=1
FAILOVER=1
PEERS=1
INSTALL=1
REDIS=1
PERF=0
KEEP=""
FO_WORKERS=1
PERF_SYSTEM=bare-w1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) DURATION=3; QUICK=1 ;;
    --runs) RUNS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --no-failover) FAILOVER=0 ;;
    --no-peers) PEERS=0 ;;
    --no-install) INSTALL=0 ;;
    --no-redis) REDIS=0 ;;
    --perf) PERF=1 ;;
    --perf-system) PERF=1; PERF_SYSTEM="$2"; shift ;;
    --keep) KEEP="$2"; shift ;;
    --workers-failover) FO_WORKERS="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------------
# Tools
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v python3 >/dev/null || need_apt+=(python3)
if [ "$REDIS" = 1 ] && ! command -v redis-server >/dev/null; then
  log "redis-server is not installed: the redis-mode runs are skipped (apt-get install redis-server to add them)"
  REDIS=0
fi
if [ "$PERF" = 1 ] && ! command -v perf >/dev/null; then need_apt+=(linux-perf); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [ "$BUILD" = 1 ]; then
  log "building release binaries (cargo build --release -p switchyard -p switchyard-load-tests)"
  (cd "$ROOT" && cargo build --release -q -p switchyard -p switchyard-load-tests)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# What is measured: the checkout at start (a commit that lands mid-run is not in this binary).
SOURCE=""
if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
  dirty=""; [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] || dirty=" plus uncommitted changes"
  SOURCE="commit $(git -C "$ROOT" rev-parse --short HEAD)$dirty at start; binary built $(date -u -r "$BIN/switchyard" +%Y-%m-%dT%H:%MZ)"
  [ "$BUILD" = 1 ] || SOURCE="$SOURCE (--no-build: it may predate that commit)"
fi
for b in switchyard mock-upstream; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (build failed?)" >&2; exit 1; }
done

# The peers: crate name -> binary. Installed once into the cache; a failure is noted and the run goes on.
PEER_ROOT="$HERE/.cache/peers"
declare -A PEER_NOTE
PEER_LIST=(noveum-ai-gateway crabllm)
install_peer() { # crate
  local crate="$1"
  [ -x "$PEER_ROOT/bin/$crate" ] && return 0
  if [ "$INSTALL" = 0 ]; then PEER_NOTE[$crate]="not installed (--no-install)"; return 1; fi
  mkdir -p "$HERE/.cache"
  log "installing peer $crate (cargo install --locked --root $PEER_ROOT: a release build, several minutes)"
  if nice -n 10 cargo install --locked --root "$PEER_ROOT" "$crate" >"$HERE/.cache/install-$crate.log" 2>&1 &&
    [ -x "$PEER_ROOT/bin/$crate" ]; then
    return 0
  fi
  PEER_NOTE[$crate]="did not install: $(grep -m1 -E '^error' "$HERE/.cache/install-$crate.log" || tail -1 "$HERE/.cache/install-$crate.log")"
  log "peer $crate ${PEER_NOTE[$crate]}"
  return 1
}
if [ "$PEERS" = 1 ]; then
  for crate in "${PEER_LIST[@]}"; do install_peer "$crate" || true; done
fi

# 1,000 held connections plus wrk and the proxies' upstream sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 4096 ] || { echo "ulimit -n is below 4096" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------
# Process bookkeeping: every PID we start is stopped on exit.
WORK="$(mktemp -d /tmp/switchyard-load.XXXXXX)"
PIDS=()
HOLD_PID=""
cleanup() {
  local rc=$?
  set +e
  [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && log "raw results, logs and configs kept in $KEEP"
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A PID_OF ADDR_OF SERVED KEY_OF HEADERS_OF
ADMIN_TOKEN="load-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

start_mock() { # name [extra args...]
  local name="$1"; shift
  "$BIN/mock-upstream" --listen 127.0.0.1:0 --name "$name" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!; PIDS+=("$pid"); PID_OF[$name]=$pid
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$WORK/$name.out" 2>/dev/null; then break; fi
    sleep 0.05
  done
  ADDR_OF[$name]="$(sed -n 's/^listening on //p' "$WORK/$name.out" | head -1)"
  [ -n "${ADDR_OF[$name]}" ] || { echo "mock $name did not start" >&2; cat "$WORK/$name.err" >&2; exit 1; }
}

start_nginx() { # name ready-path upstream-addr... (several: round robin over them)
  local name="$1" ready="$2"; shift 2
  local port; port="$($TOOLS freeport)"
  local dir="$WORK/$name"; mkdir -p "$dir/tmp"
  local user_line=""; [ "$(id -u)" = 0 ] && user_line="user root;"
  local servers="" a
  for a in "$@"; do servers="$servers server $a;"; done
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@SERVERS@|$servers|g" -e "s|@USER@|$user_line|g" \
    "$HERE/nginx.conf.tmpl" >"$dir/nginx.conf"
  "$NGINX" -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' >"$dir/stdout" 2>"$dir/stderr" &
  local pid=$!; PIDS+=("$pid"); PID_OF[$name]=$pid; ADDR_OF[$name]="127.0.0.1:$port"
  $TOOLS wait "127.0.0.1:$port" "$ready" 10 || { cat "$dir/stderr" "$dir/error.log" >&2; exit 1; }
}

# name workers config-template [substitutions as KEY=VALUE...]
start_switchyard() {
  local name="$1" workers="$2" tmpl="$3"; shift 3
  local port; port="$($TOOLS freeport)"
  local dir="$WORK/$name"; mkdir -p "$dir/data"
  local sed_args=(-e "s|@PORT@|$port|g" -e "s|@DATA@|$dir/data|g")
  local kv
  for kv in "$@"; do sed_args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed_args+=(-e "s|@STATE@|# state: local (the default)|g")
  sed "${sed_args[@]}" "$HERE/configs/$tmpl" >"$dir/config.yaml"
  SWITCHYARD_ADMIN_TOKEN="$ADMIN_TOKEN" SWITCHYARD_NO_WATCH=true "$BIN/switchyard" serve --config "$dir/config.yaml" --workers "$workers" \
    --shutdown-timeout 2s --log-format json >"$dir/stdout" 2>"$dir/log" &
  local pid=$!; PIDS+=("$pid"); PID_OF[$name]=$pid; ADDR_OF[$name]="127.0.0.1:$port"
  $TOOLS wait "127.0.0.1:$port" /health/ready 20 || { tail -20 "$dir/log" >&2; exit 1; }
  if grep -q '^  required: true' "$dir/config.yaml"; then
    KEY_OF[$name]="$($TOOLS mkkey "127.0.0.1:$port" "$ADMIN_TOKEN" '{"name":"load","account":"load-test","tier":"load"}')" ||
      { echo "cannot create a key on $name" >&2; tail -5 "$dir/log" >&2; exit 1; }
  fi
}

# Peers, configured as their docs say, to forward to the mock like the others. Returns 1 when one does
# not start (noted in PEER_NOTE, process stopped).
start_peer() { # crate
  local crate="$1" port; port="$($TOOLS freeport)"
  local dir="$WORK/$crate"; mkdir -p "$dir"
  case "$crate" in
    noveum-ai-gateway)
      # Provider credentials travel with each request; `x-provider` picks the upstream, OPENAI_BASE_URL
      # points it at the mock.
      PORT="$port" HOST=127.0.0.1 OPENAI_BASE_URL="http://${ADDR_OF[mock]}" RUST_LOG=warn \
        "$PEER_ROOT/bin/$crate" >"$dir/stdout" 2>"$dir/log" </dev/null &
      HEADERS_OF[$crate]="x-provider: openai|Authorization: Bearer sk-load-test"
      ;;
    crabllm)
      # No keys and no admin token: crabllm then asks clients for none.
      printf 'listen = "127.0.0.1:%s"\n\n[providers.mock]\nkind = "openai"\napi_key = "sk-load-test"\nbase_url = "http://%s/v1"\nmodels = ["gpt-4o-mini"]\n' \
        "$port" "${ADDR_OF[mock]}" >"$dir/crabllm.toml"
      RUST_LOG=warn "$PEER_ROOT/bin/$crate" serve --config "$dir/crabllm.toml" >"$dir/stdout" 2>"$dir/log" </dev/null &
      ;;
  esac
  local pid=$!; PIDS+=("$pid"); PID_OF[$crate]=$pid; ADDR_OF[$crate]="127.0.0.1:$port"
  if ! $TOOLS wait "127.0.0.1:$port" /health 20 >/dev/null 2>&1; then
    PEER_NOTE[$crate]="did not start: $(tail -1 "$dir/log" 2>/dev/null)"
  elif [ "$(SY_HEADERS="${HEADERS_OF[$crate]:-}" $TOOLS send "127.0.0.1:$port" 3 "$WORK/body.json")" != 3 ]; then
    PEER_NOTE[$crate]="started, but did not answer 3 chat requests with 200: $(tail -1 "$dir/log" 2>/dev/null)"
  else
    return 0
  fi
  log "peer $crate ${PEER_NOTE[$crate]}"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  return 1
}

# ---------------------------------------------------------------------------------------------------
# Measurements. Raw results go to $RAW as: run  system  key  value
RAW="$WORK/results.tsv"
printf 'run\tsystem\tkey\tvalue\n' >"$RAW"
put() { printf '%s\t%s\t%s\t%s\n' "$RUN" "$1" "$2" "$3" >>"$RAW"; }

# The path of each request shape (chat.lua's SY_ROUTE).
declare -A ROUTE_PATH=([chat]=/v1/chat/completions [messages]=/v1/messages [responses]=/v1/responses)

# wrk_run system prefix threads conns seconds stream sessions [route] -> records prefix_p50.. and prints RESULT
wrk_run() {
  local sys="$1" prefix="$2" t="$3" c="$4" d="$5" stream="$6" sessions="$7" route="${8:-chat}"
  local out="$WORK/wrk-$RUN-$sys-$prefix.txt"
  SY_ROUTE="$route" SY_STREAM="$stream" SY_SESSIONS="$sessions" SY_AUTH="${KEY_OF[$sys]:-}" SY_HEADERS="${HEADERS_OF[$sys]:-}" \
    timeout $((d + 30)) wrk -t"$t" -c"$c" -d"${d}s" --timeout 5s --latency -s "$LUA" \
    "http://${ADDR_OF[$sys]}${ROUTE_PATH[$route]}" >"$out" 2>&1 || true
  local line; line="$(grep '^RESULT ' "$out" | tail -1 || true)"
  if [ -z "$line" ]; then log "wrk failed for $sys $prefix: $(tail -3 "$out")"; return 0; fi
  local kv
  for kv in ${line#RESULT }; do put "$sys" "${prefix}_${kv%%=*}" "${kv#*=}"; done
  local n="${line#*requests=}"; n="${n%% *}"
  SERVED[$sys]=$(( ${SERVED[$sys]:-0} + n ))
  echo "$line"
}

metric_sum() { # addr metric-name [skip]: sum of a Prometheus counter's samples (labels without skip)
  $TOOLS metric "$@"
}

SESSIONS=1000   # distinct X-Session-Id values in every request (only "full" has sticky sessions on)
MAIN_SYSTEMS=(direct nginx)   # the peers and Switchyards are added once they started

measure_one_connection() { # tag (lat|stream) stream-flag (0|1) what
  local sys
  for sys in "${MAIN_SYSTEMS[@]}"; do
    log "run $RUN: $sys: $3 at 1 connection (${DURATION}s)"
    wrk_run "$sys" "$1" 1 1 "$DURATION" "$2" "$SESSIONS" >/dev/null
  done
}

measure_throughput() { # systems...
  local sys pid before after
  for sys in "$@"; do
    pid="${PID_OF[$sys]}"
    [ "$sys" = direct ] && pid="${PID_OF[mock]}"
    log "run $RUN: $sys: throughput at 50 connections (${DURATION}s)"
    local fails_before=0
    case "$sys" in fo-*) fails_before="$(metric_sum "${ADDR_OF[$sys]}" switchyard_attempts_total 'outcome="ok"')" ;; esac
    before="$($TOOLS cpu "$pid")"
    wrk_run "$sys" thr 2 50 "$DURATION" 0 "$SESSIONS" >/dev/null
    after="$($TOOLS cpu "$pid")"
    put "$sys" thr_cpu_s "$(python3 -c "print(round($after - $before, 2))")"
    case "$sys" in
      fo-*) put "$sys" faults_seen $(($(metric_sum "${ADDR_OF[$sys]}" switchyard_attempts_total 'outcome="ok"') - fails_before)) ;;
    esac
  done
}

# hold_1k system key: RSS (key, in kB) while 1,000 keep-alive connections are open, each after one request.
hold_1k() {
  local sys="$1" key="$2" pid="${PID_OF[$1]}"
  local fifo="$WORK/hold.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  SY_HEADERS="${HEADERS_OF[$sys]:-}" $TOOLS hold "${ADDR_OF[$sys]}" 1000 "$WORK/body.json" "${KEY_OF[$sys]:-}" <"$fifo" >"$WORK/hold.out" 2>&1 &
  HOLD_PID=$!
  exec 9>"$fifo"   # keeps the helper's stdin open until we close fd 9
  for _ in $(seq 300); do grep -q '^held' "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
  sleep 0.3
  put "$sys" "$key" "$($TOOLS rss "$pid")"
  put "$sys" "${key%_kb}_held" "$(awk '/^held/ {print $2}' "$WORK/hold.out")"
  put "$sys" "${key%_kb}_non200" "$(awk '/^held/ {print $4}' "$WORK/hold.out")"
  SERVED[$sys]=$(( ${SERVED[$sys]:-0} + 1000 ))
  exec 9>&-
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
  sleep 0.3  # let the server close the 1,000 sockets before the next system
}

# On fresh processes (before any load): RSS at 1,000 connections.
measure_rss_fresh() {
  local sys
  for sys in "${MAIN_SYSTEMS[@]}"; do
    log "$sys: RSS with 1,000 open keep-alive connections (fresh process)"
    hold_1k "$sys" rss_1k_kb
  done
}

# After each run's load: RSS, RSS at 1,000 connections, and how many requests the process had served.
# Streaming at 50 connections: requests/s and latency of whole streams.
measure_stream_throughput() { # systems...
  local sys
  for sys in "$@"; do
    log "run $RUN: $sys: streaming throughput at 50 connections (${DURATION}s)"
    wrk_run "$sys" sthr 2 50 "$DURATION" 1 "$SESSIONS" >/dev/null
  done
}

measure_rss_loaded() {
  local sys
  for sys in "${MAIN_SYSTEMS[@]}"; do
    log "run $RUN: $sys: RSS after load$([ "$QUICK" = 1 ] || echo ', and with 1,000 open connections')"
    put "$sys" rss_after_load_kb "$($TOOLS rss "${PID_OF[$sys]}")"
    put "$sys" served_before "${SERVED[$sys]:-0}"
    [ "$QUICK" = 1 ] || hold_1k "$sys" rss_1k_loaded_kb   # --quick: RSS after load only
  done
}

# The default config's pass-through routes beside chat: 1 connection (and the direct path of each, for
# the added latency), then 50 connections with the CPU used.
measure_routes() {
  local route sys pid before after
  for route in messages responses; do
    for sys in direct default-w2; do
      log "run $RUN: $sys: $route at 1 connection (${DURATION}s)"
      wrk_run "$sys" "lat_$route" 1 1 "$DURATION" 0 "$SESSIONS" "$route" >/dev/null
    done
    pid="${PID_OF[default-w2]}"
    log "run $RUN: default-w2: $route at 50 connections (${DURATION}s)"
    before="$($TOOLS cpu "$pid")"
    wrk_run default-w2 "thr_$route" 2 50 "$DURATION" 0 "$SESSIONS" "$route" >/dev/null
    after="$($TOOLS cpu "$pid")"
    put default-w2 "thr_${route}_cpu_s" "$(python3 -c "print(round($after - $before, 2))")"
  done
}

# Redis mode: Redis's own round trip at 1 connection (PING, and a one-key script like the limits'),
# the redis-mode systems at 1 connection (right after their local twins, in the same run), and the
# 3-replica fleet behind nginx at 50 connections.
measure_redis() {
  local cmd key
  for cmd in ping eval; do
    case "$cmd" in
      ping) set -- PING ;;
      eval) set -- EVAL "return redis.call('INCR', KEYS[1])" 1 load:rtt ;;
    esac
    # p50 in ms, in microseconds for the table
    key="$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 1 -n 20000 --csv "$@" 2>/dev/null |
      awk -F'","' 'NR == 2 {print $5 * 1000}')"
    put redis "rtt_${cmd}_p50" "${key:-}"
  done
  local sys
  for sys in redis-w2 fullr-w2; do
    log "run $RUN: $sys: latency at 1 connection (${DURATION}s)"
    wrk_run "$sys" lat 1 1 "$DURATION" 0 "$SESSIONS" >/dev/null
  done
  log "run $RUN: fleet (3 replicas, redis, behind nginx): throughput at 50 connections (${DURATION}s)"
  local before=0 after=0 p
  for p in "${FLEET_PIDS[@]}"; do before="$(python3 -c "print($before + $($TOOLS cpu "$p"))")"; done
  wrk_run fleet thr 2 50 "$DURATION" 0 "$SESSIONS" >/dev/null
  for p in "${FLEET_PIDS[@]}"; do after="$(python3 -c "print($after + $($TOOLS cpu "$p"))")"; done
  put fleet thr_cpu_s "$(python3 -c "print(round($after - $before, 2))")"
}

# ---------------------------------------------------------------------------------------------------
# Start everything
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "work dir $WORK"
if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
  log "WARNING: load average $(cut -d' ' -f1 /proc/loadavg) before start: something else is using the CPU; numbers will be noisy"
fi
FSYNC_MS="$(python3 -c '
import os, statistics, sys, time
path = os.path.join(sys.argv[1], "fsync.probe"); fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600); t = []
for _ in range(50):
    os.write(fd, b"x" * 512); s = time.perf_counter(); os.fsync(fd); t.append(time.perf_counter() - s)
os.close(fd); os.unlink(path); print(f"{statistics.median(t) * 1000:.3f}")' "$WORK")"
log "fsync of a small write in the work dir ($(df --output=source "$WORK" | tail -1)): median ${FSYNC_MS} ms"
printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}]}' >"$WORK/body.json"

start_mock mock
ADDR_OF[direct]="${ADDR_OF[mock]}"; PID_OF[direct]="${PID_OF[mock]}"
start_nginx nginx /v1/models "${ADDR_OF[mock]}"
if [ "$PEERS" = 1 ]; then
  for crate in "${PEER_LIST[@]}"; do
    [ -z "${PEER_NOTE[$crate]:-}" ] && start_peer "$crate" && MAIN_SYSTEMS+=("$crate")
  done
fi
# The default config: bare with usage.durable: true, a worker per core (2 here).
start_switchyard default-w2 2 bare.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" DURABLE=true
start_switchyard bare-w1 1 bare.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" DURABLE=false
start_switchyard bare-w2 2 bare.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" DURABLE=false
CREDITS_ON="CREDITS=monthly_credits: 1000000.00"
start_switchyard full-w1 1 full.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" "$CREDITS_ON" DURABLE=true
start_switchyard full-w2 2 full.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" "$CREDITS_ON" DURABLE=true
# Usage and credits recorded, but a response does not wait for the fsync (usage.durable: false).
start_switchyard fullnd-w1 1 full.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" "$CREDITS_ON" DURABLE=false
start_switchyard fullnc-w1 1 full.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" "CREDITS=# no monthly_credits: not metered" DURABLE=true
MAIN_SYSTEMS+=(default-w2 bare-w1 bare-w2 full-w1 full-w2 fullnd-w1 fullnc-w1)
FLEET_PIDS=()
if [ "$REDIS" = 1 ]; then
  REDIS_PORT="$($TOOLS freeport)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
  PIDS+=($!); PID_OF[redis]=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis_state() { # db: a state section on one line (each system its own database, so none shares another's keys)
    echo "state: {backend: redis, redis: {url: \"redis://127.0.0.1:$REDIS_PORT/$1\", replicas: 3, margin: 0.1}}"
  }
  start_switchyard redis-w2 2 bare.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" DURABLE=true "STATE=$(redis_state 1)"
  start_switchyard fullr-w2 2 full.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" "$CREDITS_ON" DURABLE=true "STATE=$(redis_state 2)"
  fleet=()
  for i in 1 2 3; do
    start_switchyard "fleet-r$i" 1 full.yaml.tmpl "UPSTREAM=${ADDR_OF[mock]}" "$CREDITS_ON" DURABLE=true "STATE=$(redis_state 3)"
    fleet+=("${ADDR_OF[fleet-r$i]}"); FLEET_PIDS+=("${PID_OF[fleet-r$i]}")
  done
  start_nginx fleet /health/ready "${fleet[@]}"
  # One key for the fleet (made on replica 1): wait until every replica has pulled it from Redis.
  KEY_OF[fleet]="${KEY_OF[fleet-r1]}"
  for i in 2 3; do
    for _ in $(seq 100); do
      [ "$($TOOLS send "${ADDR_OF[fleet-r$i]}" 1 "$WORK/body.json" "${KEY_OF[fleet]}")" = 1 ] && break
      sleep 0.1
    done
  done
fi
if [ "$FAILOVER" = 1 ]; then
  start_mock mock-b
  start_mock mock-faulty --fault-rate 0.3
  start_switchyard fo-steady "$FO_WORKERS" failover.yaml.tmpl "A=${ADDR_OF[mock]}" "B=${ADDR_OF[mock-b]}" \
    "COOLDOWN_INITIAL=1s" "COOLDOWN_MAX=5m" "BREAKER=5"
  start_switchyard fo-30 "$FO_WORKERS" failover.yaml.tmpl "A=${ADDR_OF[mock]}" "B=${ADDR_OF[mock-faulty]}" \
    "COOLDOWN_INITIAL=1s" "COOLDOWN_MAX=5m" "BREAKER=5"
  start_switchyard fo-30-fast "$FO_WORKERS" failover.yaml.tmpl "A=${ADDR_OF[mock]}" "B=${ADDR_OF[mock-faulty]}" \
    "COOLDOWN_INITIAL=1ms" "COOLDOWN_MAX=1ms" "BREAKER=1000000000"
fi
sleep 1

RUN=1
for sys in "${MAIN_SYSTEMS[@]}"; do
  put "$sys" rss_idle_kb "$($TOOLS rss "${PID_OF[$sys]}")"
done
measure_rss_fresh

ALL_SYSTEMS=("${MAIN_SYSTEMS[@]}")
[ "$FAILOVER" = 1 ] && ALL_SYSTEMS+=(fo-steady fo-30 fo-30-fast)
log "warm-up: 1 s at 50 connections on each system"
for sys in "${ALL_SYSTEMS[@]}"; do
  wrk_run "$sys" warm 2 50 1 0 "$SESSIONS" >/dev/null
done

for RUN in $(seq "$RUNS"); do
  put direct loadavg_start "$(cut -d' ' -f1 /proc/loadavg)"
  measure_one_connection lat 0 latency
  [ "$REDIS" = 1 ] && measure_redis
  measure_one_connection stream 1 "streaming, time to last chunk"
  measure_throughput "${MAIN_SYSTEMS[@]}"
  measure_stream_throughput "${MAIN_SYSTEMS[@]}"
  measure_routes
  [ "$FAILOVER" = 1 ] && measure_throughput fo-steady fo-30 fo-30-fast
  measure_rss_loaded
  put direct loadavg_end "$(cut -d' ' -f1 /proc/loadavg)"
done

# ---------------------------------------------------------------------------------------------------
# Optional profile of one Switchyard (bare, 1 worker, unless --perf-system) under 50 connections: perf with DWARF call graphs (Rust
# release builds have no frame pointers; Cargo.toml's release profile keeps line tables, debug = 1).
if [ "$PERF" = 1 ]; then
  [ -n "${PID_OF[$PERF_SYSTEM]:-}" ] || { echo "--perf-system: unknown system $PERF_SYSTEM" >&2; exit 2; }
  log "perf: profiling $PERF_SYSTEM under 50 connections for ${DURATION}s"
  SY_SESSIONS="$SESSIONS" SY_AUTH="${KEY_OF[$PERF_SYSTEM]:-}" timeout $((DURATION + 30)) wrk -t2 -c50 -d"$((DURATION + 3))s" -s "$LUA" \
    "http://${ADDR_OF[$PERF_SYSTEM]}/v1/chat/completions" >"$WORK/perf-wrk.txt" 2>&1 &
  WRK_PID=$!
  sleep 1
  perf record -F 499 --call-graph dwarf,16384 -o "$WORK/perf.data" -p "${PID_OF[$PERF_SYSTEM]}" -- sleep "$DURATION" \
    >"$WORK/perf.log" 2>&1 || log "perf record failed: $(tail -2 "$WORK/perf.log")"
  wait "$WRK_PID" 2>/dev/null || true
  if [ -s "$WORK/perf.data" ]; then
    log "perf: building reports"
    perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
      grep -E '^ +[0-9]' | head -60 >"$WORK/perf-self.txt" || true
    perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
      grep -E '^ +[0-9]' >"$WORK/perf-children-all.txt" || true
    perf report -i "$WORK/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
      grep -E '^ +[0-9]' | head -8 >"$WORK/perf-threads.txt" || true
    # Inclusive cost of the frames that name a component, not runtime plumbing.
    grep -E 'switchyard|sled::tree::Tree::insert |tracing_subscriber::fmt::fmt_layer::Layer<S,N,E,W> as tracing_subscriber::layer::Layer<S>>::on_(event|new_span) |url::Url::parse|reqwest::async_impl::client::Client::execute_request|serde_json::de::from_(slice|str|trait)|tcp_sendmsg |tcp_recvmsg |epoll_wait |uuid::' \
      "$WORK/perf-children-all.txt" | grep -v '{{closure}}}' | head -60 >"$WORK/perf-children.txt" || true
  fi
fi

echo
echo "## Switchyard load test, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; ${DURATION}s per measurement; fsync of a small write in the data dirs: ${FSYNC_MS} ms (median)."
[ -n "$SOURCE" ] && echo "Switchyard: $SOURCE."
echo "Load average (1 min) at the start and end of each run: $(awk -F'\t' '$3 ~ /^loadavg/ {printf "%s%s", sep, $4; sep = ($3 == "loadavg_end") ? "; " : " -> "}' "$RAW")."
echo
for crate in "${PEER_LIST[@]}"; do
  if [ "$PEERS" = 0 ]; then echo "Peer $crate: not run (--no-peers)."
  elif [ -n "${PEER_NOTE[$crate]:-}" ]; then echo "Peer $crate: ${PEER_NOTE[$crate]}."
  else echo "Peer $crate $(sed -n "s/^\"$crate \([^ ]*\) .*/\1/p" "$PEER_ROOT/.crates.toml" 2>/dev/null), installed in $PEER_ROOT."
  fi
done
echo
python3 "$HERE/tools.py" table "$RAW"
if [ "$PERF" = 1 ] && [ -s "$WORK/perf-self.txt" ]; then
  echo
  echo "perf, $PERF_SYSTEM under 50 connections ($(grep -o 'requests=[0-9]*' "$WORK/perf-wrk.txt" || true) in $((DURATION + 3))s with perf attached)."
  echo "CPU by thread:"
  echo '```'; sed -E 's/ +- +- *$//; s/ +$//' "$WORK/perf-threads.txt"; echo '```'
  echo "Self time by symbol (top 40):"
  echo '```'; head -40 "$WORK/perf-self.txt" | sed -E 's/ +- +- *$//; s/ +$//' | cut -c1-160; echo '```'
  echo "Inclusive time of named components (children):"
  echo '```'; sed -E 's/ +- +- *$//; s/ +$//' "$WORK/perf-children.txt" | cut -c1-200; echo '```'
fi

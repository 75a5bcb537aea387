#!/usr/bin/env bash
# Latency at one connection of several Switchyard configurations, interleaved: issue 14's targets 1 and
# 6 compare two added latencies of ~0.13 ms that differ by a few µs, and one run of run.sh (each system
# measured once, minutes apart) moves such a ratio by 0.2x. Here every round measures the direct path
# and every system back to back, in an order that rotates each round, and the ratios are taken within
# each round; the table gives their median and spread.
#
#   bash load-tests/latency.sh [--no-build] [--rounds R] [--duration S] [--workers W] [--stream]
#                              [--raw FILE] [SYSTEM...]
#                              (defaults: 7 rounds, 5 s a point, 2 workers; systems: bare default)
#
# SYSTEM: VARIANT or VARIANT:ROUTE, with VARIANT as in callgrind.sh (default, fsync, bare, full, fullnd,
# fullnc) and ROUTE chat (the default), messages or responses; e.g. `bare default` (target 1: the
# default config's added latency over the not-durable one's) or
# `default default:messages default:responses` (target 6). The first system is the baseline of the
# ratios. --stream asks for streamed answers (wrk then times the whole stream). --raw FILE keeps every
# point (round, system, route, p50 and p99 in µs).
#
# In each round a fresh mock upstream and one fresh Switchyard per variant (an empty data directory
# each). A point is wrk with 1 thread and 1 keep-alive connection for S seconds (the same request as
# run.sh); "added" is the point's p50 (or p99) minus the direct path's p50 (p99) on the
# same route in the same round. Everything started is stopped by PID on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
BUILD=1 ROUNDS=7 DURATION=5 WORKERS=2 STREAM=0 RAW_COPY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --stream) STREAM=1 ;;
    --raw) RAW_COPY="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
SYSTEMS=("$@")
[ ${#SYSTEMS[@]} -gt 0 ] || SYSTEMS=(bare default)
source "$HERE/common.sh"
# route_of SYSTEM: the route a system name asks for (chat unless it says VARIANT:ROUTE).
route_of() { if [[ "$1" == *:* ]]; then echo "${1#*:}"; else echo chat; fi; }

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
declare -A ROUTE_PATH=([chat]=/v1/chat/completions [messages]=/v1/messages [responses]=/v1/responses)
for sys in "${SYSTEMS[@]}"; do
  variant "${sys%%:*}"
  route="$(route_of "$sys")"
  [ -n "${ROUTE_PATH[$route]:-}" ] || { echo "unknown route $route (chat, messages or responses)" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -q -p switchyard -p switchyard-load-tests)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

TOP="$(mktemp -d /tmp/switchyard-latency.XXXXXX)"
trap 'set +e; stop_started; rm -rf "$TOP"' EXIT
trap 'exit 130' INT TERM

# start_round ROUND: a fresh mock and one fresh Switchyard per variant (an empty data directory each, in
# the round's folder), warmed up; stop_started ends them. Fresh each round: at one connection on two
# cores, where the scheduler puts a process's worker against wrk and the mock (the same core, or
# waking the other) is a large part of its latency, and a long-lived process keeps one draw of it for
# the whole run; fresh processes make it vary between rounds, where the median handles it.
declare -A ADDR KEY_OF
start_round() {
  local sys v port
  ADDR=(); KEY_OF=()
  WORK="$TOP/$1"; mkdir -p "$WORK"
  start_mock "$BIN"
  for sys in "${SYSTEMS[@]}"; do
    v="${sys%%:*}"
    [ -n "${ADDR[$v]:-}" ] && continue
    variant "$v"
    WORK="$TOP/$1/$v"; mkdir -p "$WORK"
    port="$($TOOLS freeport)"
    render_config "$port"
    start_switchyard "$BIN/switchyard" "$port" "$WORKERS"
    ADDR[$v]="127.0.0.1:$port"
    KEY_OF[$v]="$KEY"
  done
  WORK="$TOP"
  # Warm-up: one short point each, not recorded.
  for sys in "${SYSTEMS[@]}"; do
    v="${sys%%:*}"
    SY_ROUTE="$(route_of "$sys")" SY_STREAM="$STREAM" SY_AUTH="${KEY_OF[$v]}" wrk -t1 -c1 -d1s -s "$HERE/lua/chat.lua" \
      "http://${ADDR[$v]}${ROUTE_PATH[$(route_of "$sys")]}" >/dev/null 2>&1 || true
  done
}

RAW="$TOP/raw.tsv"
: >"$RAW"
# point ROUND NAME ADDR ROUTE KEY SESSIONS: one wrk run, one row in RAW (round, name, route, p50, p99 in µs).
point() {
  local round="$1" name="$2" addr="$3" route="$4" key="$5" sessions="$6" out="$TOP/wrk.out"
  SY_ROUTE="$route" SY_STREAM="$STREAM" SY_SESSIONS="$sessions" SY_AUTH="$key" \
    timeout $((DURATION + 30)) wrk -t1 -c1 -d"${DURATION}s" --timeout 5s --latency -s "$HERE/lua/chat.lua" \
    "http://$addr${ROUTE_PATH[$route]}" >"$out" 2>&1 || true
  local line; line="$(wrk_result "$out" "$name")"
  local p50="${line#*p50=}" p99="${line#*p99=}"
  printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$route" "${p50%% *}" "${p99%% *}" >>"$RAW"
}

ROUTES=()
for sys in "${SYSTEMS[@]}"; do
  route="$(route_of "$sys")"
  [[ " ${ROUTES[*]:-} " == *" $route "* ]] || ROUTES+=("$route")
done
n=${#SYSTEMS[@]}
for round in $(seq "$ROUNDS"); do
  echo "[$(date +%T)] round $round of $ROUNDS" >&2
  start_round "$round"
  for route in "${ROUTES[@]}"; do point "$round" direct "$UPSTREAM" "$route" "" 0; done
  for i in $(seq 0 $((n - 1))); do
    sys="${SYSTEMS[$(((i + round) % n))]}"   # rotated: no system is always first after the direct path
    v="${sys%%:*}"
    point "$round" "$sys" "${ADDR[$v]}" "$(route_of "$sys")" "${KEY_OF[$v]}" "$(sessions_for "${KEY_OF[$v]}")"
  done
  stop_started
  rm -rf "${TOP:?}/$round"
done

echo "## Latency at 1 connection, interleaved: $ROUNDS rounds of ${DURATION} s a point, $WORKERS workers$([ "$STREAM" = 1 ] && echo ', streamed answers')"
echo
echo "Checkout at commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), binary built $(date -u -r "$BIN/switchyard" +%Y-%m-%dT%H:%MZ). ms; added = the system's minus the direct path's, same route, same round; ratios are the added p50 (p99) over the first system's, per round."
echo
$TOOLS latency "$RAW" "${SYSTEMS[@]}"
[ -z "$RAW_COPY" ] || cp "$RAW" "$RAW_COPY"

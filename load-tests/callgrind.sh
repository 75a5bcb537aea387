#!/usr/bin/env bash
# Instructions per request of one Switchyard configuration, under callgrind: a repeatable cost measure
# for comparing optimisations on a shared or noisy machine, where wall-clock numbers drift by 30% between
# runs. It counts every thread of the process (the worker, the actix system thread with the usage
# recorder, sled's threads), so work moved off the request path still counts.
#
#   bash load-tests/callgrind.sh [--no-build] [default|fsync|bare|full|fullnd|fullnc] [REQUESTS] [chat|messages|responses]
#                                                               (defaults: default 2000 chat)
#
# default = the default config (usage.durable: true: the journal); fsync = the same with usage.fsync: true
# (each response waits for a sled flush); bare = usage.durable: false.
# The route: `chat` (POST /v1/chat/completions), `messages` (POST /v1/messages passed through to an
# Anthropic profile) or `responses` (POST /v1/responses passed through to an OpenAI profile), each a body
# of the same size and meaning.
#
# Starts the mock upstream natively and Switchyard (1 worker) under valgrind, sends 200 warm-up requests,
# zeroes the counters, sends REQUESTS sequential requests on one keep-alive connection (non-streaming,
# the same small chat body as run.sh), dumps, and prints instructions per request and the top functions
# by inclusive and by self instruction count. Everything started is stopped by PID on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
BUILD=1
if [ "${1:-}" = --no-build ]; then BUILD=0; shift; fi
VARIANT="${1:-default}"
N="${2:-2000}"
ROUTE="${3:-chat}"
source "$HERE/common.sh"
variant "$VARIANT"

for tool in valgrind callgrind_control callgrind_annotate python3; do
  command -v "$tool" >/dev/null || {
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind python3 >/dev/null
    break
  }
done
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -q -p switchyard -p switchyard-load-tests)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK="$(mktemp -d /tmp/switchyard-callgrind.XXXXXX)"
cleanup() {
  set +e
  stop_started
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/callgrind.out* "$KEEP"/ 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
KEEP="${CALLGRIND_KEEP:-}"   # a directory to copy the callgrind dump into (for kcachegrind / callgrind_annotate)
trap 'exit 130' INT TERM

start_mock "$BIN"

PORT="$($TOOLS freeport)"
render_config "$PORT"
start_switchyard "$BIN/switchyard" "$PORT" 1 valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out"
case "$ROUTE" in
  chat) export SEND_PATH=/v1/chat/completions
    printf '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello in five words."}],"max_tokens":16}' >"$WORK/body.json" ;;
  messages) export SEND_PATH=/v1/messages
    printf '{"model":"claude-x","system":"You are terse.","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}' >"$WORK/body.json" ;;
  responses) export SEND_PATH=/v1/responses
    printf '{"model":"gpt-4o-mini","instructions":"You are terse.","input":"Say hello in five words.","max_output_tokens":16}' >"$WORK/body.json" ;;
  *) echo "unknown route $ROUTE (chat, messages or responses)" >&2; exit 2 ;;
esac

echo "warm-up: 200 requests" >&2
$TOOLS send "127.0.0.1:$PORT" 200 "$WORK/body.json" "$KEY" >/dev/null
callgrind_control -z "$SY_PID" >/dev/null
echo "measuring: $N requests" >&2
start=$(date +%s.%N)
ok="$($TOOLS send "127.0.0.1:$PORT" "$N" "$WORK/body.json" "$KEY")"
end=$(date +%s.%N)
callgrind_control --dump=measured "$SY_PID" >/dev/null
sleep 1
DUMP="$(ls -t "$WORK"/callgrind.out.* 2>/dev/null | head -1 || true)"
[ -n "$DUMP" ] || DUMP="$(ls -t "$WORK"/callgrind.out* | head -1)"
TOTAL="$(grep -m1 '^summary:' "$DUMP" | awk '{print $2}')"
[ -n "$TOTAL" ] || TOTAL="$(grep -m1 '^totals:' "$DUMP" | awk '{print $2}')"

echo "## callgrind: Switchyard $VARIANT, route $ROUTE ($SEND_PATH), 1 worker, $N sequential non-streaming requests ($ok answered 200)"
echo
echo "Checkout at commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), binary built $(date -u -r "$BIN/switchyard" +%Y-%m-%dT%H:%MZ)$([ "$BUILD" = 1 ] || echo ' (--no-build)'); $(python3 -c "print(f'{$TOTAL / $N:,.0f}')") instructions per request" \
  "(all threads; $TOTAL in total; $(python3 -c "print(f'{($end - $start) / $N * 1000:.2f}')") ms per request under valgrind)."
echo
echo "Inclusive, top 35 (share of the total, instructions; runtime plumbing left out):"
echo '```'
callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" 2>/dev/null | $TOOLS cgtop 35
echo '```'
echo "Self, top 30:"
echo '```'
callgrind_annotate --inclusive=no --threshold=100 "$DUMP" 2>/dev/null | $TOOLS cgtop 30
echo '```'

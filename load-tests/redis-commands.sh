#!/usr/bin/env bash
# The Redis commands one request causes in redis mode (`state.backend: redis`): starts a redis-server,
# the mock upstream and Switchyard (1 worker) on free ports, sends 20 warm-up requests, then watches
# `redis-cli MONITOR` for an idle IDLE seconds (the background loops alone) and while REQUESTS
# sequential requests are sent, and prints the commands per request (background subtracted, by rate)
# by command name and script. Everything started is stopped by PID on exit.
#
#   bash load-tests/redis-commands.sh [bare|full] [REQUESTS] [IDLE]    (defaults: bare 50 3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="python3 $HERE/tools.py"
VARIANT="${1:-bare}"
N="${2:-50}"
IDLE="${3:-3}"
case "$VARIANT" in
  bare) TMPL=bare.yaml.tmpl; CREDITS="" ;;
  full) TMPL=full.yaml.tmpl; CREDITS="monthly_credits: 1000000.00" ;;
  *) echo "unknown variant $VARIANT (bare or full)" >&2; exit 2 ;;
esac
BIN="${CARGO_TARGET_DIR:-$HERE/../target}/release"
WORK="$(mktemp -d /tmp/switchyard-redis-commands.XXXXXX)"
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

REDIS_PORT="$($TOOLS freeport)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN/mock-upstream" --listen 127.0.0.1:0 >"$WORK/mock.out" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/mock.out" 2>/dev/null && break; sleep 0.05; done
UPSTREAM="$(sed -n 's/^listening on //p' "$WORK/mock.out" | head -1)"
PORT="$($TOOLS freeport)"
ADMIN="rc-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
STATE="state: {backend: redis, redis: {url: \"redis://127.0.0.1:$REDIS_PORT/1\", replicas: 3, margin: 0.1}}"
sed -e "s|@PORT@|$PORT|g" -e "s|@DATA@|$WORK/data|g" -e "s|@UPSTREAM@|$UPSTREAM|g" -e "s|@CREDITS@|$CREDITS|g" \
  -e "s|@DURABLE@|true|g" -e "s|@STATE@|$STATE|g" "$HERE/configs/$TMPL" >"$WORK/config.yaml"
SWITCHYARD_ADMIN_TOKEN="$ADMIN" SWITCHYARD_NO_WATCH=true \
  "$BIN/switchyard" serve --config "$WORK/config.yaml" --workers 1 --shutdown-timeout 2s --log-format json \
  >"$WORK/stdout" 2>"$WORK/log" &
PIDS+=($!)
$TOOLS wait "127.0.0.1:$PORT" /health/ready 60 || { tail -20 "$WORK/log" >&2; exit 1; }
KEY=""
if grep -q '^  required: true' "$WORK/config.yaml"; then
  KEY="$($TOOLS mkkey "127.0.0.1:$PORT" "$ADMIN" '{"name":"load","account":"load-test","tier":"load"}')"
fi
export SEND_PATH=/v1/chat/completions
printf '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello in five words."}],"max_tokens":16}' >"$WORK/body.json"
$TOOLS send "127.0.0.1:$PORT" 20 "$WORK/body.json" "$KEY" >/dev/null

# Script bodies by SHA1, to name EVALSHA calls: SCRIPT LOAD is idempotent, so ask Redis which are known
# is not possible; instead the MONITOR line's first key names the script's resource.
watch() { # seconds, file
  timeout "$1" redis-cli -p "$REDIS_PORT" MONITOR >"$2" 2>/dev/null || true
}
watch "$IDLE" "$WORK/idle.txt"
timeout 600 redis-cli -p "$REDIS_PORT" MONITOR >"$WORK/busy.txt" 2>/dev/null &
MON=$!
PIDS+=("$MON")
sleep 0.3
start=$(date +%s.%N)
$TOOLS send "127.0.0.1:$PORT" "$N" "$WORK/body.json" "$KEY" >/dev/null
end=$(date +%s.%N)
sleep 0.3
kill -TERM "$MON" 2>/dev/null || true
wait "$MON" 2>/dev/null || true
python3 - "$WORK/idle.txt" "$WORK/busy.txt" "$IDLE" "$(python3 -c "print($end - $start + 0.6)")" "$N" "$VARIANT" <<'PY'
import collections, re, sys
idle, busy, idle_s, busy_s, n, variant = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def names(path):
    c = collections.Counter()
    for line in open(path):
        parts = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
        if not parts:
            continue
        cmd = parts[0].upper()
        if " lua]" in line:
            cmd = "  (in a script) " + cmd
        if cmd in ("EVALSHA", "EVAL") and len(parts) > 3:
            cmd += " " + parts[3].split(":")[0] + ":" + (parts[3].split(":")[1] if ":" in parts[3] else "")
        elif len(parts) > 1 and cmd not in ("PING", "MULTI", "EXEC"):
            cmd += " " + ":".join(parts[1].split(":")[:2])
        c[cmd] += 1
    return c
i, b = names(idle), names(busy)
print(f"## Redis commands, {variant} config, {n} sequential requests ({busy_s:.1f} s watched; background {idle_s:.0f} s idle)")
print(f"{'command (first key prefix)':60} {'per request':>12} {'background /s':>14}")
total = 0.0
for cmd in sorted(set(i) | set(b), key=lambda c: (c.startswith("  "), c)):
    bg = i[cmd] / idle_s
    per = max(0.0, (b[cmd] - bg * busy_s) / n)
    total += per
    print(f"{cmd[:60]:60} {per:12.2f} {bg:14.2f}")
top = [c for c in set(i) | set(b) if not c.startswith("  ")]
calls = sum(max(0.0, (b[c] - i[c] / idle_s * busy_s) / n) for c in top)
print(f"{'total':60} {total:12.2f} {sum(i.values()) / idle_s:14.2f}")
print(f"{'calls from Switchyard (round trips at most)':60} {calls:12.2f} {sum(i[c] for c in top) / idle_s:14.2f}")
PY

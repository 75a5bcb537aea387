#!/usr/bin/env bash
# Resident memory of Switchyard after a fixed number of requests (issue 14, target 5), by kind.
#
#   bash load-tests/memory.sh [--no-build] [--runs R] [--workers W] [--conns C]
#                             [--server 'KEY: VALUE'] [--purge] [VARIANT] [REQUESTS]
#                             (defaults: 3 runs, 2 workers, 50 connections, default 500000)
#
# VARIANT: default (usage.durable: true), bare (usage.durable: false) or full (a key, a tier, credits and
# sticky sessions, as run.sh's full*). --server adds a line under `server:` of the config (repeatable),
# e.g. --server 'store_cache_size: 2MiB'. jemalloc options go in the environment, as _RJEM_MALLOC_CONF
# (the allocator's symbols are prefixed), e.g. _RJEM_MALLOC_CONF=narenas:2.
#
# Each run starts a fresh mock and a fresh Switchyard (an empty data directory), reads its memory idle,
# sends REQUESTS non-streaming chat requests with wrk at C connections (stopped after that many answers),
# and reads it again 1 s after the load and 15 s after (by then jemalloc has returned most dirty pages to
# the kernel: its decay is 10 s). "Memory" is /proc/PID/status (VmRSS = RssAnon + RssFile) and
# /proc/PID/smaps: thread stacks, the other anonymous memory (the heap: jemalloc's extents), and
# file-backed pages by file (the binary's code and read-only data). The last table is the median of the
# runs. --purge: then, with gdb attached, tell jemalloc to purge every arena's unused pages
# (mallctl arena.4096.purge) and read it once more ("purged"): what is left is memory in use, and the
# difference to "settled" is what the allocator held for reuse. Everything started is stopped by PID on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
BUILD=1 RUNS=3 WORKERS=2 CONNS=50 PURGE=0
SERVER_LINES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --runs) RUNS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --server) SERVER_LINES+=("$2"); shift ;;
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
VARIANT="${1:-default}"
N="${2:-500000}"
source "$HERE/common.sh"
variant "$VARIANT"
SESSIONS=0; [ "$TMPL" = full.yaml.tmpl ] && SESSIONS=1000
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -q -p switchyard -p switchyard-load-tests)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK="$(mktemp -d /tmp/switchyard-memory.XXXXXX)"
trap 'set +e; stop_started; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

mb() { python3 -c "print(f'{$1 / 1024:.1f}')"; }
# snapshot PID LABEL SERVED: one TSV row of the memory figures (MB) of PID.
snapshot() {
  local pid="$1" label="$2" served="$3"
  $TOOLS smaps "$pid" >"$WORK/smaps.$label"
  val() { awk -v k="$1" '$1 == k {print $2}' "$WORK/smaps.$label"; }
  local binary; binary="$(awk '$1 == "file:switchyard" {print $2}' "$WORK/smaps.$label")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$served" "$(mb "$(val VmRSS)")" "$(mb "$(val RssAnon)")" \
    "$(mb "$(val anon_thread_stacks)")" "$(mb "$(val anon_other)")" "$(mb "$(val RssFile)")" \
    "$(mb "${binary:-0}")" "$(val Threads)"
}

ROWS="$WORK/rows.tsv"
: >"$ROWS"
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/data"
  start_mock "$BIN"
  PORT="$($TOOLS freeport)"
  ADMIN="mem-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  render_config "$PORT"
  for line in "${SERVER_LINES[@]}"; do
    sed -i "/^server:/a\\  $line" "$WORK/config.yaml"
  done
  SWITCHYARD_ADMIN_TOKEN="$ADMIN" SWITCHYARD_NO_WATCH=true \
    "$BIN/switchyard" serve --config "$WORK/config.yaml" --workers "$WORKERS" --shutdown-timeout 2s \
    --log-format json >"$WORK/stdout" 2>"$WORK/log" &
  SY_PID=$!
  PIDS+=("$SY_PID")
  $TOOLS wait "127.0.0.1:$PORT" /health/ready 60 || { tail -20 "$WORK/log" >&2; exit 1; }
  KEY=""
  if [ "$VARIANT" = full ]; then
    KEY="$($TOOLS mkkey "127.0.0.1:$PORT" "$ADMIN" '{"name":"load","account":"load-test","tier":"load"}')"
  fi
  sleep 0.5
  printf 'run %s\t' "$run" >>"$ROWS"; snapshot "$SY_PID" idle 0 >>"$ROWS"
  echo "run $run: $N requests at $CONNS connections (pid $SY_PID)" >&2
  rm -f "$WORK/done"
  SY_LIMIT="$N" SY_DONE_FILE="$WORK/done" SY_AUTH="$KEY" SY_SESSIONS="$SESSIONS" \
    wrk -t1 -c"$CONNS" -d3600s -s "$HERE/lua/count.lua" "http://127.0.0.1:$PORT/v1/chat/completions" \
    >"$WORK/wrk.out" &
  WRK_PID=$!
  while kill -0 "$WRK_PID" 2>/dev/null && [ ! -e "$WORK/done" ]; do sleep 0.2; done
  kill -INT "$WRK_PID" 2>/dev/null || true
  wait "$WRK_PID" || true
  out="$(cat "$WORK/wrk.out")"
  served="$(sed -n 's/^RESULT requests=\([0-9]*\).*$/\1/p' <<<"$out")"
  echo "run $run: served $served; $(grep -o 'non2xx=[0-9]* errors=[0-9]*' <<<"$out")" >&2
  grep -q 'non2xx=0 errors=0' <<<"$out" || { echo "errors during the load: not a valid measurement" >&2; exit 1; }
  sleep 1
  printf 'run %s\t' "$run" >>"$ROWS"; snapshot "$SY_PID" after "$served" >>"$ROWS"
  cp "$WORK/smaps.after" "$WORK/smaps.after.$run"
  sleep 14
  printf 'run %s\t' "$run" >>"$ROWS"; snapshot "$SY_PID" settled "$served" >>"$ROWS"
  if [ "$PURGE" = 1 ]; then
    # The binary's symbols carry no C types for gdb: call mallctl by its address (PIE: load base + offset).
    off="$(nm "$BIN/switchyard" | awk '$3 == "_rjem_mallctl" {print $1}')"
    base="$(awk '$6 ~ /\/switchyard$/ {split($1, a, "-"); print a[1]; exit}' "/proc/$SY_PID/maps")"
    [ -n "$off" ] && [ -n "$base" ] || { echo "--purge: no _rjem_mallctl in $BIN/switchyard" >&2; exit 1; }
    gdb -batch -p "$SY_PID" \
      -ex "print ((int (*)(const char *, void *, void *, void *, unsigned long)) (0x$base + 0x$off))(\"arena.4096.purge\", 0, 0, 0, 0)" \
      >"$WORK/gdb.out" 2>&1
    grep -q '^\$1 = 0$' "$WORK/gdb.out" || { echo "--purge: mallctl failed:" >&2; tail -5 "$WORK/gdb.out" >&2; exit 1; }
    sleep 0.5
    printf 'run %s\t' "$run" >>"$ROWS"; snapshot "$SY_PID" purged "$served" >>"$ROWS"
  fi
  stop_started
done

echo "## Switchyard $VARIANT, $WORKERS workers, $N requests at $CONNS connections, $RUNS fresh processes" \
  "(${SERVER_LINES[*]:-no server lines}; _RJEM_MALLOC_CONF=${_RJEM_MALLOC_CONF:-unset})"
echo
echo "MB; after = 1 s after the load, settled = 15 s after. anon = stacks + other (the heap)."
echo
python3 - "$ROWS" <<'EOF'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
cols = ["served", "VmRSS", "anon", "stacks", "other anon", "file", "binary", "threads"]
print("| run | when | " + " | ".join(cols) + " |")
print("|" + " --- |" * (len(cols) + 2))
for r in rows:
    print(f"| {r[0]} | {r[1]} | " + " | ".join(r[2:]) + " |")
for when in ("idle", "after", "settled", "purged"):
    sel = [r for r in rows if r[1] == when]
    if not sel:
        continue
    med = [statistics.median(float(r[i]) for r in sel) for i in range(2, 2 + len(cols))]
    print(f"| median | {when} | " + " | ".join(f"{v:g}" for v in med) + " |")
EOF
echo
echo "File-backed pages after the load, last run (kB):"
grep '^file:' "$WORK/smaps.after.$RUNS" | head -8 | sed 's/^file:/  /'

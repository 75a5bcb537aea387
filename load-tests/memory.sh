#!/usr/bin/env bash
# Resident memory of Switchyard after a fixed number of requests (issue 14, target 5), by kind.
#
#   bash load-tests/memory.sh [--no-build] [--runs R] [--workers W] [--conns C]
#                             [--server 'KEY: VALUE'] [--purge] [--stats] [--heap-profile]
#                             [VARIANT] [REQUESTS]
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
# difference to "settled" is what the allocator held for reuse. --stats and --heap-profile measure a
# second build with jemalloc's statistics (target/jemalloc-stats; the feature tikv-jemallocator/stats)
# and, for --heap-profile, its profiler (target/heap-profile; /profiling as well). --stats: print
# jemalloc's statistics of the last run once settled (merged arenas: allocated, active, metadata,
# resident, retained, and the size classes that hold it). --heap-profile: who holds the memory in use,
# from jemalloc's sampling profiler (prof:true): the profile is dumped once settled and jeprof prints the
# allocation sites by bytes allocated (not resident: memory obtained zeroed and never written counts).
# Everything started is stopped by PID on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
BUILD=1 RUNS=3 WORKERS=2 CONNS=50 PURGE=0 STATS=0 HEAP_PROFILE=0
SERVER_LINES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --runs) RUNS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --server) SERVER_LINES+=("$2"); shift ;;
    --purge) PURGE=1 ;;
    --stats) STATS=1 ;;
    --heap-profile) HEAP_PROFILE=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
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
SWITCHYARD="$BIN/switchyard"
if [ "$STATS" = 1 ] || [ "$HEAP_PROFILE" = 1 ]; then
  # jemalloc's statistics and profiler are compiled out of the measured binary: a second build (its own
  # target folder, so the measured one stays as it is) has them; the mock still comes from $BIN. The
  # profiler's own bookkeeping is memory too, so --stats alone builds without it.
  FEATURES=tikv-jemallocator/stats
  PROF_TARGET="$ROOT/target/jemalloc-stats"
  if [ "$HEAP_PROFILE" = 1 ]; then
    FEATURES="$FEATURES,tikv-jemallocator/profiling"
    PROF_TARGET="$ROOT/target/heap-profile"
  fi
  (cd "$ROOT" && CARGO_TARGET_DIR="$PROF_TARGET" cargo build --release -q -p switchyard --features "$FEATURES")
  SWITCHYARD="$PROF_TARGET/release/switchyard"
  # The newest: a change of features leaves the former build's folder beside it.
  JEPROF="$(ls -t "$PROF_TARGET"/release/build/tikv-jemalloc-sys-*/out/build/bin/jeprof 2>/dev/null | head -1)"
  [ "$HEAP_PROFILE" = 0 ] || [ -n "$JEPROF" ] || { echo "jeprof was not built" >&2; exit 1; }
fi

WORK="$(mktemp -d /tmp/switchyard-memory.XXXXXX)"
trap 'set +e; stop_started; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
if [ "$HEAP_PROFILE" = 1 ]; then
  # Sample one allocation per 2^12 bytes on average: exact enough for sites above ~100 kB.
  export _RJEM_MALLOC_CONF="${_RJEM_MALLOC_CONF:+$_RJEM_MALLOC_CONF,}prof:true,lg_prof_sample:12,prof_prefix:$WORK/jeprof"
fi

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

# jemalloc_call PID 'NAME(ARGS)' SYMBOL CAST: call one of jemalloc's functions inside PID with gdb. The
# binary's symbols carry no C types for gdb, so it is called by its address (PIE: load base + offset);
# an int result must be 0 (a void one prints as void).
jemalloc_call() {
  local pid="$1" call="$2" symbol="$3" cast="$4" off base
  off="$(nm "$SWITCHYARD" | awk -v s="$symbol" '$3 == s {print $1}')"
  base="$(awk '$6 ~ /\/switchyard$/ {split($1, a, "-"); print a[1]; exit}' "/proc/$pid/maps")"
  [ -n "$off" ] && [ -n "$base" ] || { echo "no $symbol in $SWITCHYARD" >&2; exit 1; }
  gdb -batch -p "$pid" -ex "print ($cast (0x$base + 0x$off))(${call#*(}" >"$WORK/gdb.out" 2>&1
  local want=0; [[ "$cast" == "(void "* ]] && want=void
  if ! grep -qx "\\\$1 = $want" "$WORK/gdb.out"; then
    echo "$call failed:" >&2; tail -5 "$WORK/gdb.out" >&2; exit 1
  fi
}

ROWS="$WORK/rows.tsv"
: >"$ROWS"
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/data"
  start_mock "$BIN"
  PORT="$($TOOLS freeport)"
  render_config "$PORT"
  for line in "${SERVER_LINES[@]}"; do
    sed -i "/^server:/a\\  $line" "$WORK/config.yaml"
  done
  start_switchyard "$SWITCHYARD" "$PORT" "$WORKERS"
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
  if [ "$HEAP_PROFILE" = 1 ] && [ "$run" = "$RUNS" ]; then
    # Before --purge: the profile is of memory in use, the same with or without the purge.
    jemalloc_call "$SY_PID" "mallctl(\"prof.dump\", 0, 0, 0, 0)" '_rjem_mallctl' \
      '(int (*)(const char *, void *, void *, void *, unsigned long))'
  fi
  if [ "$PURGE" = 1 ]; then
    jemalloc_call "$SY_PID" "mallctl(\"arena.4096.purge\", 0, 0, 0, 0)" '_rjem_mallctl' \
      '(int (*)(const char *, void *, void *, void *, unsigned long))'
    sleep 0.5
    printf 'run %s\t' "$run" >>"$ROWS"; snapshot "$SY_PID" purged "$served" >>"$ROWS"
  fi
  if [ "$STATS" = 1 ] && [ "$run" = "$RUNS" ]; then
    # Merged arenas only ("a" leaves out each arena's own table); it goes to the process's stderr.
    jemalloc_call "$SY_PID" "malloc_stats_print(0, 0, \"a\")" '_rjem_malloc_stats_print' \
      '(void (*)(void *, void *, const char *))'
    sleep 0.5
    cp "$WORK/log" "$WORK/stats.log"
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
if [ "$STATS" = 1 ]; then
  echo
  echo "jemalloc's statistics, last run, settled (merged arenas):"
  # The process's log is JSON lines; jemalloc's lines are the rest.
  grep -v '^{' "$WORK/stats.log" | sed -n '/___ Begin jemalloc statistics ___/,/--- End jemalloc statistics ---/p' \
    | grep -v '^ *\(opt\|config\)\.' | sed 's/^/  /'
fi
if [ "$HEAP_PROFILE" = 1 ]; then
  dump="$(ls -t "$WORK"/jeprof.*.heap 2>/dev/null | head -1)"
  [ -n "$dump" ] || { echo "--heap-profile: no profile was dumped" >&2; exit 1; }
  # Kept for a closer look: perl JEPROF --text --focus=FUNCTION BINARY DUMP.
  cp "$dump" "$PROF_TARGET/last.heap"
  echo
  echo "Live heap, last run, settled: the top sites by bytes held (jeprof --inuse_space)."
  echo
  echo "By the function that allocated (flat), then by what each function's callees hold (cum); MB:"
  perl "$JEPROF" --text --inuse_space "$SWITCHYARD" "$dump" 2>/dev/null | sed -n '1,30p' | sed 's/^/  /'
  echo
  # By cumulative bytes, without the frames every allocation passes through (the runtime, the
  # allocator's own, and the profiler's bookkeeping of its samples).
  perl "$JEPROF" --text --cum --inuse_space "$SWITCHYARD" "$dump" 2>/dev/null \
    | grep -Ev '(std::|core::|tokio::runtime|tokio::task|actix_rt::|alloc::|__libc|_start|main$|::call_once|::poll|prof_backtrace|::alloc|::allocate|::default \(inline)' \
    | sed -n '1,45p' | sed 's/^/  /'
  echo "  (profile kept in $PROF_TARGET/last.heap; jeprof is $JEPROF)"
fi

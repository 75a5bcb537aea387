#!/usr/bin/env bash
# The kernel side of a request: system calls, context switches and CPU time per request of one
# Switchyard configuration, which callgrind (user space only) does not see.
#
#   bash load-tests/kernel.sh [--no-build] [default|bare|full] [WORKERS] [CONNS] [SECONDS] [RUNS]
#                                                      (defaults: default 2 50 10 3)
#
# Starts the mock upstream and Switchyard (release binary, the config of callgrind.sh's VARIANT),
# warms it up, then RUNS times: wrk (CONNS connections, SECONDS) while `perf stat` counts the
# process's system calls (the raw_syscalls:sys_enter tracepoint), context switches, migrations and
# task-clock, all threads. Prints each run's figures per request and their median, and, for the last
# run, the counts per thread (`perf stat --per-thread`). With KERNEL_KINDS=1 a further run under
# `perf trace -s` lists the system calls by kind and thread (perf trace slows the process: its
# throughput is not comparable, its counts per request are). CONNS=1 also prints wrk's p50 and the
# mock's direct p50, so "added" latency can be read. Everything started is stopped by PID on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
BUILD=1
if [ "${1:-}" = --no-build ]; then BUILD=0; shift; fi
VARIANT="${1:-default}"
WORKERS="${2:-2}"
CONNS="${3:-50}"
SECONDS_EACH="${4:-10}"
RUNS="${5:-3}"
source "$HERE/common.sh"
variant "$VARIANT"
for tool in perf wrk python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -q -p switchyard -p switchyard-load-tests)
fi
BIN="${KERNEL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"   # KERNEL_BIN: another folder with both binaries

WORK="$(mktemp -d /tmp/switchyard-kernel.XXXXXX)"
trap 'set +e; stop_started; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

start_mock "$BIN"

PORT="$($TOOLS freeport)"
render_config "$PORT"
start_switchyard "$BIN/switchyard" "$PORT" "$WORKERS"
SESSIONS=1000
# wrk at CONNS connections for SECONDS against ADDR; prints its RESULT line.
load() { # addr seconds
  SY_ROUTE=chat SY_STREAM=0 SY_SESSIONS="$SESSIONS" SY_AUTH="$KEY" \
    wrk -t"$([ "$CONNS" -ge 2 ] && echo 2 || echo 1)" -c"$CONNS" -d"${2}s" --timeout 5s --latency \
    -s "$HERE/lua/chat.lua" "http://$1/v1/chat/completions" | grep '^RESULT '
}
load "127.0.0.1:$PORT" 2 >/dev/null   # warm-up: connections, pools, sled's first pages

echo "## kernel.sh: Switchyard $VARIANT, $WORKERS workers, $CONNS connections, ${SECONDS_EACH}s x $RUNS (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), binary built $(date -u -r "$BIN/switchyard" +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1 /proc/loadavg))"
echo
printf '| run | requests | rps | syscalls/req | ctx switches/req | migrations/req | CPU µs/req | p50 ms |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n'
ROWS="$WORK/rows"
: >"$ROWS"
for run in $(seq "$RUNS"); do
  extra=()
  [ "$run" = "$RUNS" ] && extra=(--per-thread)
  perf stat "${extra[@]}" -x, -e raw_syscalls:sys_enter,context-switches,cpu-migrations,task-clock -p "$SY_PID" \
    -o "$WORK/perf-$run.csv" &
  PERF_PID=$!
  sleep 0.2
  line="$(load "127.0.0.1:$PORT" "$SECONDS_EACH")"
  kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
  python3 - "$WORK/perf-$run.csv" "$line" "$run" "$SECONDS_EACH" >>"$ROWS" <<'EOF'
import sys, collections
path, line, run, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
kv = dict(p.split("=") for p in line.split()[1:])
n = int(kv["requests"])
tot = collections.Counter()
for row in open(path):
    f = row.strip().split(",")
    if len(f) < 3 or row.startswith("#"):
        continue
    # --per-thread rows start with the thread's comm-tid.
    if not f[0].replace(".", "").isdigit():
        f = f[1:]
    try:
        v = float(f[0])
    except ValueError:
        continue
    tot[f[2]] += v
print(f"{run}\t{n}\t{n / secs:.0f}\t{tot['raw_syscalls:sys_enter'] / n:.2f}\t{tot['context-switches'] / n:.3f}\t"
      f"{tot['cpu-migrations'] / n:.3f}\t{tot['task-clock'] * 1000 / n:.1f}\t{int(kv['p50']) / 1000:.3f}")
EOF
  tail -1 "$ROWS" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8}'
done
python3 - "$ROWS" <<'EOF'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cols = list(zip(*rows))
print("| median | " + " | ".join(str(statistics.median(float(x) for x in c)) for c in cols[1:]) + " |")
EOF
echo
echo "Per thread, last run (thread: syscalls, context switches, task-clock ms):"
echo '```'
python3 - "$WORK/perf-$RUNS.csv" <<'EOF'
import sys, collections, re
per = collections.defaultdict(dict)
for row in open(sys.argv[1]):
    f = row.strip().split(",")
    if len(f) < 4 or row.startswith("#"):
        continue
    try:
        per[f[0]][f[3]] = float(f[1])
    except ValueError:
        pass
# sled's pool threads (sled-io-3, sled-io-7 ...: they come and go) are summed; other threads keep
# their id (the actix arbiters' names are cut to the same 15 characters).
by_name = collections.defaultdict(collections.Counter)
for t, d in per.items():
    name = "sled-io (all)" if t.startswith("sled-io") else t
    for k, v in d.items():
        by_name[name][k] += v
for name, d in sorted(by_name.items(), key=lambda x: -x[1]["task-clock"]):
    if d["raw_syscalls:sys_enter"] or d["task-clock"] > 1:
        print(f"{name:24} {d['raw_syscalls:sys_enter']:>10.0f} {d['context-switches']:>9.0f} {d['task-clock']:>9.1f}")
EOF
echo '```'
if [ "$CONNS" = 1 ]; then
  direct="$(SY_SESSIONS=0 SY_AUTH="" load "$UPSTREAM" "$SECONDS_EACH")"
  echo "Direct to the mock, 1 connection: p50 $(echo "$direct" | sed -n 's/.*p50=\([0-9]*\).*/\1/p') µs"
fi
if [ "${KERNEL_KINDS:-0}" = 1 ]; then
  echo
  echo "System calls by kind and thread (perf trace -s, ${SECONDS_EACH}s; requests in that time: see the last line):"
  echo '```'
  perf trace -s -p "$SY_PID" -o "$WORK/trace.txt" &
  TRACE_PID=$!
  sleep 1
  line="$(load "127.0.0.1:$PORT" "$SECONDS_EACH")"
  kill -INT "$TRACE_PID"; wait "$TRACE_PID" 2>/dev/null || true
  grep -E '^ [^ ].*\([0-9]+\)|^   [a-z_0-9]+ +[0-9]+' "$WORK/trace.txt" | awk '{print $1, $2}' | head -120
  echo "$line"
  echo '```'
fi

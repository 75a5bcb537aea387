#!/usr/bin/env bash
# CPU a request under load of several Switchyard configurations (and builds), measured back to back, and
# where it goes by thread: the workers (the request path), the system thread (the actix system and the
# usage recorder, which writes usage batches and the credit ledger to sled) and sled's own threads (its
# io threads write and sync the log). Target 4 of issue 14 compares full and default this way.
#
#   bash load-tests/cpu.sh [--no-build] [--rounds R] [--duration S] [--connections C] [--workers W]
#                          [--raw FILE] [SYSTEM...]
#
# SYSTEM is a variant of common.sh (default, fsync, bare, full, fullnd, fullnc), optionally @DIR for the
# binaries in DIR/release instead of this checkout's (for A/B of two builds: `full@/work/old`). The
# first system is the baseline (default: `default full`). Each round starts a fresh mock and, in turn,
# each system as a fresh process (an empty data directory, W workers, default 2), warms it up for 2 s,
# then runs wrk (2 threads, C connections, default 50) for S seconds (default 8) and reads the
# process's CPU by thread from /proc before and after; the order rotates between rounds. The table:
# medians over R rounds (default 3), and the ratio of CPU a request to the first system's taken within
# each round. --raw FILE keeps the rows (round, system, requests, seconds, CPU s, CPU s by group).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
BUILD=1 ROUNDS=3 DURATION=8 CONNS=50 WORKERS=2 RAW_COPY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --connections) CONNS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --raw) RAW_COPY="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
SYSTEMS=("$@")
[ ${#SYSTEMS[@]} -gt 0 ] || SYSTEMS=(default full)
source "$HERE/common.sh"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -q -p switchyard -p switchyard-load-tests)
fi
OWN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# bin_of SYSTEM: the folder of the system's binaries.
bin_of() { if [[ "$1" == *@* ]]; then echo "${1#*@}/release"; else echo "$OWN"; fi; }
for sys in "${SYSTEMS[@]}"; do
  variant "${sys%%@*}"
  [ -x "$(bin_of "$sys")/switchyard" ] || { echo "no $(bin_of "$sys")/switchyard" >&2; exit 2; }
done

TOP="$(mktemp -d /tmp/switchyard-cpu.XXXXXX)"
trap 'set +e; stop_started; rm -rf "$TOP"' EXIT
trap 'exit 130' INT TERM
RAW="$TOP/raw.tsv"
: >"$RAW"

# wrk_for ADDR KEY SECONDS OUT: the load (the full variants carry their key and 1,000 session ids).
wrk_for() {
  SY_SESSIONS="$(sessions_for "$2")" SY_AUTH="$2" timeout $(($3 + 30)) wrk -t2 -c"$CONNS" -d"$3s" --timeout 5s \
    -s "$HERE/lua/chat.lua" "http://$1/v1/chat/completions" >"$4" 2>&1 || true
}

n=${#SYSTEMS[@]}
for round in $(seq "$ROUNDS"); do
  echo "[$(date +%T)] round $round of $ROUNDS" >&2
  for i in $(seq 0 $((n - 1))); do
    sys="${SYSTEMS[$(((i + round) % n))]}"
    WORK="$TOP/$round-$i"; mkdir -p "$WORK"
    variant "${sys%%@*}"
    start_mock "$(bin_of "$sys")"
    port="$($TOOLS freeport)"
    render_config "$port"
    start_switchyard "$(bin_of "$sys")/switchyard" "$port" "$WORKERS"
    wrk_for "127.0.0.1:$port" "$KEY" 2 "$TOP/warm.out"
    before="$($TOOLS cputhreads "$SY_PID" | awk '{print $2}' | paste -sd' ')"
    wrk_for "127.0.0.1:$port" "$KEY" "$DURATION" "$TOP/wrk.out"
    after="$($TOOLS cputhreads "$SY_PID" | awk '{print $2}' | paste -sd' ')"
    line="$(wrk_result "$TOP/wrk.out" "$sys")"
    requests="${line#*requests=}"; requests="${requests%% *}"
    us="${line#*duration_us=}"; us="${us%% *}"
    python3 - "$round" "$sys" "$requests" "$us" "$before" "$after" >>"$RAW" <<'PY'
import sys
rnd, name, n, us, before, after = sys.argv[1:]
groups = [float(a) - float(b) for a, b in zip(after.split(), before.split())]
print("\t".join([rnd, name, n, f"{int(us) / 1e6:.3f}", *[f"{g:.2f}" for g in groups], f"{sum(groups):.2f}"]))
PY
    stop_started
    rm -rf "$WORK"
  done
done

echo "## CPU a request at $CONNS connections, interleaved: $ROUNDS rounds of ${DURATION} s, $WORKERS workers"
echo
echo "Checkout at commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown). µs of CPU a request (utime + stime from /proc), medians over the rounds; the ratio is taken within each round."
echo
$TOOLS cputable "$RAW" "${SYSTEMS[@]}"
[ -z "$RAW_COPY" ] || cp "$RAW" "$RAW_COPY"

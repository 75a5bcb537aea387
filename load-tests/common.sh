# Sourced by callgrind.sh, cpu.sh, kernel.sh, memory.sh and latency.sh: the variants, and starting and stopping the mock
# upstream and Switchyard the same way in each. Expects HERE (this folder), TOOLS and WORK.

# variant NAME: sets TMPL, CREDITS and DURABLE for one of the configurations the scripts measure.
# default = the default config (usage.durable: true: the journal); fsync = the same with usage.fsync:
# true; bare = usage.durable: false; full = a key, a tier and metered credits (as run.sh's full*);
# fullnd = full not durable; fullnc = full without credits.
variant() {
  case "$1" in
    default) TMPL=bare.yaml.tmpl; CREDITS=""; DURABLE=true ;;
    fsync) TMPL=bare.yaml.tmpl; CREDITS=""; DURABLE="true, fsync: true" ;;
    bare) TMPL=bare.yaml.tmpl; CREDITS=""; DURABLE=false ;;
    full) TMPL=full.yaml.tmpl; CREDITS="monthly_credits: 1000000.00"; DURABLE=true ;;
    fullnd) TMPL=full.yaml.tmpl; CREDITS="monthly_credits: 1000000.00"; DURABLE=false ;;
    fullnc) TMPL=full.yaml.tmpl; CREDITS="# no monthly_credits: not metered"; DURABLE=true ;;
    *) echo "unknown variant $1 (default, fsync, bare, full, fullnd or fullnc)" >&2; exit 2 ;;
  esac
}

PIDS=()
# stop_started: TERM every process this script started, KILL what is left after 10 s.
stop_started() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# start_switchyard SWITCHYARD PORT WORKERS [WRAPPER...]: serves WORK/config.yaml (see render_config) with
# the binary SWITCHYARD on PORT, run through WRAPPER if given (valgrind, say: then it may take 120 s to be
# ready instead of 60); creates a client key when the config requires one. Sets SY_PID, ADMIN and KEY
# ("" without keys); SY_PID joins PIDS.
start_switchyard() {
  local bin="$1" port="$2" workers="$3"; shift 3
  ADMIN="load-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  SWITCHYARD_ADMIN_TOKEN="$ADMIN" SWITCHYARD_NO_WATCH=true "$@" "$bin" serve --config "$WORK/config.yaml" \
    --workers "$workers" --shutdown-timeout 2s --log-format json >"$WORK/stdout" 2>"$WORK/log" &
  SY_PID=$!
  PIDS+=("$SY_PID")
  $TOOLS wait "127.0.0.1:$port" /health/ready "$([ $# -gt 0 ] && echo 120 || echo 60)" || { tail -20 "$WORK/log" >&2; exit 1; }
  KEY=""
  if grep -q '^  required: true' "$WORK/config.yaml"; then
    KEY="$($TOOLS mkkey "127.0.0.1:$port" "$ADMIN" '{"name":"load","account":"load-test","tier":"load"}')"
  fi
}

# sessions_for KEY: how many distinct X-Session-Id values a variant's load carries: 1,000 for the full
# variants (those with a key: sticky sessions are on in their config, as run.sh's full*), else none.
sessions_for() { if [ -n "$1" ]; then echo 1000; else echo 0; fi; }

# wrk_result OUT NAME: the RESULT line of the wrk output in OUT (chat.lua's done()); exits when wrk gave
# none or the system answered with anything but 2xx.
wrk_result() {
  local line; line="$(grep '^RESULT ' "$1" | tail -1 || true)"
  [ -n "$line" ] || { echo "wrk failed for $2: $(tail -3 "$1")" >&2; exit 1; }
  [[ "$line" == *"non2xx=0 errors=0"* ]] || { echo "$2 answered with errors: $line" >&2; exit 1; }
  echo "$line"
}

# start_mock BIN: starts BIN/mock-upstream on a free port; sets UPSTREAM to its address.
start_mock() {
  "$1/mock-upstream" --listen 127.0.0.1:0 >"$WORK/mock.out" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^listening on ' "$WORK/mock.out" 2>/dev/null && break; sleep 0.05; done
  UPSTREAM="$(sed -n 's/^listening on //p' "$WORK/mock.out" | head -1)"
  [ -n "$UPSTREAM" ] || { echo "the mock upstream did not start ($1/mock-upstream)" >&2; exit 1; }
}

# render_config PORT: writes WORK/config.yaml from configs/TMPL for the variant, serving on PORT, its
# data in WORK/data and its upstream UPSTREAM.
render_config() {
  sed -e "s|@PORT@|$1|g" -e "s|@DATA@|$WORK/data|g" -e "s|@UPSTREAM@|$UPSTREAM|g" -e "s|@CREDITS@|$CREDITS|g" \
    -e "s|@DURABLE@|$DURABLE|g" -e "s|@STATE@|# state: local|g" "$HERE/configs/$TMPL" >"$WORK/config.yaml"
}

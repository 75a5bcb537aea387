#!/usr/bin/env bash
# The real coding agents against Switchyard and the mock upstream, offline: Claude Code (`claude -p`) on
# an Anthropic profile and on an OpenAI one, and Codex (`codex exec`) on an OpenAI profile (Responses
# passed through) and on a chat-only one (the Responses bridge). Each run is one tool round trip: the
# mock (`mock-upstream --agent`) has the model call the agent's shell tool to print a marker, and
# answers the tool's output back; a run passes when the agent's final answer quotes the marker.
#
#   bash load-tests/agents.sh [--no-build]
#
# The CLIs are installed with npm into load-tests/.cache (gitignored; versions: CLAUDE_CODE_VERSION,
# CODEX_VERSION). Nothing leaves 127.0.0.1: each agent gets a fresh HOME with its telemetry, update
# checks and error reporting off, and the proxy's only profiles point at the mock. Not in CI: it
# downloads the CLIs, and their own start-up traffic is outside this repository's control.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOOLS="python3 $HERE/tools.py"
CACHE="$HERE/.cache"
CLAUDE_CODE_VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
CODEX_VERSION="${CODEX_VERSION:-0.171.0}"
MARKER="switchyard-tool-ok"
BUILD=1
if [ "${1:-}" = --no-build ]; then BUILD=0; shift; fi

mkdir -p "$CACHE"
if [ ! -x "$CACHE/node_modules/.bin/claude" ] || [ ! -x "$CACHE/node_modules/.bin/codex" ]; then
  echo "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION and @openai/codex@$CODEX_VERSION into $CACHE" >&2
  (cd "$CACHE" && npm install --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" >&2)
fi
CLAUDE="$CACHE/node_modules/.bin/claude"
CODEX="$CACHE/node_modules/.bin/codex"
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build -q -p switchyard -p switchyard-load-tests)
fi
BIN="$ROOT/target/debug"

WORK="$(mktemp -d /tmp/switchyard-agents.XXXXXX)"
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/mock-upstream" --agent --name agents --listen 127.0.0.1:0 >"$WORK/mock.out" 2>"$WORK/mock.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/mock.out" 2>/dev/null && break; sleep 0.05; done
UPSTREAM="http://$(sed -n 's/^listening on //p' "$WORK/mock.out" | head -1)/v1"

PORT="$($TOOLS freeport)"
cat >"$WORK/config.yaml" <<EOF
server:
  listen: "127.0.0.1:$PORT"
  data_dir: "$WORK/data"
auth:
  required: false
routing:
  strategy: round_robin
models:
  - {name: claude-on-anthropic, profiles: [anthropic]}
  - {name: claude-on-openai, profiles: [openai]}
  - {name: gpt-on-openai, profiles: [openai]}
  - {name: gpt-on-chat-only, profiles: [chat-only]}
profiles:
  - {id: anthropic, provider: anthropic, base_url: "$UPSTREAM", api_key: "sk-ant-mock"}
  - {id: openai, provider: openai, base_url: "$UPSTREAM", api_key: "sk-mock"}
  - {id: chat-only, provider: deepseek, base_url: "$UPSTREAM", api_key: "sk-mock"}
EOF
SWITCHYARD_NO_WATCH=true "$BIN/switchyard" serve --config "$WORK/config.yaml" --log-format json \
  >"$WORK/switchyard.out" 2>"$WORK/switchyard.log" &
PIDS+=($!)
$TOOLS wait "127.0.0.1:$PORT" /health/ready 60 || { tail -20 "$WORK/switchyard.log" >&2; exit 1; }
PROXY="http://127.0.0.1:$PORT"

# A fresh home per run: no user settings, credentials or history leak in or out.
quiet_env() {
  local home="$1"
  mkdir -p "$home"
  echo "HOME=$home" "DISABLE_TELEMETRY=1" "DISABLE_AUTOUPDATER=1" "DISABLE_ERROR_REPORTING=1" \
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" "NO_UPDATE_NOTIFIER=1"
}

FAILED=0
report() {
  local name="$1" rc="$2" out="$3"
  # The final answer quotes the tool's output: the marker on a line that is not the command itself.
  if [ "$rc" = 0 ] && grep -q "The tool printed:" "$out" && grep -v "echo $MARKER" "$out" | grep -q "$MARKER"; then
    echo "PASS  $name: $(grep -m1 "The tool printed:" "$out" | cut -c1-100)"
  else
    FAILED=1
    echo "FAIL  $name (exit $rc); last lines:"
    tail -15 "$out" | sed 's/^/      /'
  fi
}

PROMPT="Run the shell command: echo $MARKER"
for model in claude-on-anthropic claude-on-openai; do
  out="$WORK/claude-$model.out"
  set +e
  (cd "$WORK" && env $(quiet_env "$WORK/home-claude-$model") \
    ANTHROPIC_BASE_URL="$PROXY" ANTHROPIC_API_KEY="sy-local" ANTHROPIC_MODEL="$model" \
    ANTHROPIC_SMALL_FAST_MODEL="$model" ANTHROPIC_DEFAULT_HAIKU_MODEL="$model" \
    timeout 180 "$CLAUDE" -p "$PROMPT" --allowedTools "Bash(echo:*)" --output-format text \
    </dev/null >"$out" 2>&1)
  rc=$?
  set -e
  report "claude -p ($model)" "$rc" "$out"
done

for model in gpt-on-openai gpt-on-chat-only; do
  home="$WORK/home-codex-$model"
  mkdir -p "$home/.codex"
  cat >"$home/.codex/config.toml" <<EOF
model = "$model"
model_provider = "switchyard"

[model_providers.switchyard]
name = "Switchyard"
base_url = "$PROXY/v1"
env_key = "SWITCHYARD_KEY"
wire_api = "responses"
EOF
  out="$WORK/codex-$model.out"
  set +e
  (cd "$WORK" && env $(quiet_env "$home") CODEX_HOME="$home/.codex" SWITCHYARD_KEY="sy-local" \
    timeout 180 "$CODEX" exec --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox "$PROMPT" \
    </dev/null >"$out" 2>&1)
  rc=$?
  set -e
  report "codex exec ($model)" "$rc" "$out"
done

echo
echo "requests the proxy answered, by model and status:"
curl -s "$PROXY/metrics" | grep '^switchyard_requests_total' | sed 's/^/  /' || true
exit "$FAILED"

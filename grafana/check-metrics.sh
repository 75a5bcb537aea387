#!/usr/bin/env bash
# Lints a live Switchyard scrape with promtool (Debian: apt-get install prometheus).
#
#   grafana/check-metrics.sh http://127.0.0.1:8080/metrics
#
# Starts nothing: the server must already run. Exits non-zero when the scrape fails, is empty, or
# promtool reports a problem (1: parse error, 3: lint problems).
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 METRICS_URL   (e.g. http://127.0.0.1:8080/metrics)" >&2
    exit 2
fi
url=$1

if ! command -v promtool >/dev/null 2>&1; then
    echo "$0: promtool not found (Debian/Ubuntu: apt-get install prometheus)" >&2
    exit 2
fi

scrape=$(mktemp)
trap 'rm -f "$scrape"' EXIT

# --noproxy: a local server must not be sent through an HTTP(S)_PROXY from the environment.
if ! curl --fail --silent --show-error --max-time 10 --noproxy '*' -o "$scrape" "$url"; then
    echo "$0: cannot scrape $url" >&2
    exit 1
fi
if ! grep -q '^switchyard_' "$scrape"; then
    echo "$0: $url returned no switchyard_ series" >&2
    exit 1
fi

# promtool reads the exposition from stdin and prints one line per problem.
if ! promtool check metrics <"$scrape"; then
    echo "$0: promtool check metrics failed for $url" >&2
    exit 1
fi
echo "$0: $(grep -c '^# TYPE ' "$scrape") metric families from $url pass promtool check metrics"

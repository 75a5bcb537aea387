#!/usr/bin/env bash
# Parses every PromQL query of the dashboard with promtool, so a syntax error fails CI rather than a panel.
#
#   grafana/check-dashboard.sh [grafana/dashboards/switchyard.json]
#
# Needs jq and promtool (Debian: apt-get install jq prometheus). Grafana's variables are replaced by
# values Prometheus accepts ($__rate_interval by 5m, $model and $profile by .*) and each query becomes a
# recording rule for `promtool check rules`. tests/it/dashboard.rs checks the metric names.
set -euo pipefail

dashboard=${1:-$(dirname "$0")/dashboards/switchyard.json}
for tool in jq promtool; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: $tool not found (Debian/Ubuntu: apt-get install jq prometheus)" >&2
        exit 2
    fi
done

rules=$(mktemp --suffix=.yml)
trap 'rm -f "$rules"' EXIT

jq -r '
  [.panels[] | ., (.panels // [])[]] | [.[].targets[]?.expr | select(. != null)]
  | if length == 0 then error("no queries in the dashboard") else . end
  | "groups:\n  - name: dashboard\n    rules:",
    (to_entries[] | "      - record: dashboard:query_\(.key)\n        expr: \(
        .value | gsub("\\$__rate_interval|\\$__interval"; "5m") | gsub("\\$\\{?(model|profile)\\}?"; ".*")
        | @json)")
' "$dashboard" >"$rules"

promtool check rules "$rules"

#!/usr/bin/env bash
# One scenario of the reference load (../shared/load) on a fresh server, for A/B runs of two
# builds: seeds the load's 5,000 clients and member, warms up 2 s, then runs wrk for SECS.
# Usage: bash bench/scenario.sh <health|get|search|create|patch|page50> <binary> [secs] [database-url]
# Env: PERF=1 also records the server with `perf record -g` into perf.data (needs linux-perf);
# ANALYZE=1 (PostgreSQL) runs ANALYZE after the seed, the statistics autovacuum would keep.
# Prints wrk's latency and req/s lines and the server's VmHWM/VmRSS afterwards.
set -euo pipefail
kind=$1
bin=$(realpath "$2")
secs=${3:-10}
db=${4:-}
cd "$(dirname "$0")/.."
load=$(realpath ../shared/load)
port=${BENCH_PORT:-18599}
data=$(mktemp -d)
work=$data/work
mkdir -p "$work"
# shellcheck source=bench/server.sh
. bench/server.sh
trap 'bench_server_stop; rm -rf "$data"' EXIT
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
bench_server_start "$bin" "$port" "$data" "$db" agentdesk_scenario
pid=$bench_pid
export BASE_URL=http://127.0.0.1:$port ADMIN_EMAIL=$AGENTDESK_ADMIN_EMAIL ADMIN_PASSWORD=$AGENTDESK_ADMIN_PASSWORD
export PATCH_CONTENT_TYPE=application/merge-patch+json
python3 "$load/harness/setup.py" seed "$work" >/dev/null
if [ -n "$bench_db_name" ] && [ -n "${ANALYZE:-}" ]; then psql "$db/$bench_db_name" -qc ANALYZE; fi
set -a
# shellcheck disable=SC1091
. "$work/env.sh"
set +a
if [ "$kind" = page50 ]; then
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$MEMBER_TOKEN" >"$work/page.lua"
  run() { wrk -t2 -c32 -d"$1"s -s "$work/page.lua" "$BASE_URL/api/v1/clients?limit=50"; }
else
  run() {
    SCENARIO=$kind SCOPE_IDS_FILE=$work/scope_ids.txt ALL_IDS_FILE=$work/all_ids.txt \
      wrk -t2 -c32 -d"$1"s --timeout 30s -s "$load/harness/scenarios.lua" "$BASE_URL"
  }
fi
run 2 >/dev/null
if [ -n "${PERF:-}" ]; then
  perf record -F 999 -g -p "$pid" -o perf.data -- sleep "$secs" >/dev/null 2>&1 &
  recorder=$!
fi
run "$secs" | grep -E 'Requests/sec|Latency'
if [ -n "${PERF:-}" ]; then wait "$recorder"; fi
grep -E 'VmHWM|VmRSS' "/proc/$pid/status"

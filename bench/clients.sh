#!/usr/bin/env bash
# Clients at scale on the release binary (SQLite by default; pass a postgres:// URL as $3 for
# PostgreSQL): import 100,000 rows through the real CSV import job (rows/s, peak RSS of the
# server during the import), then wrk on the client list, search, and a client write.
# Usage: bash bench/clients.sh [seconds-per-run] [rows] [database-url]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
rows=${2:-100000}
db=${3:-}
port=${BENCH_PORT:-18581}
bin=target/release/agentdesk
[ -x "$bin" ] || cargo build --release -p agentdesk
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

data=$(mktemp -d)
trap 'kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$data"' EXIT
export AGENTDESK_DATA_DIR=$data AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123 AGENTDESK_MAX_UPLOAD_MB=200
[ -n "$db" ] && export AGENTDESK_DATABASE_URL=$db
"$bin" serve >"$data/serve.log" 2>&1 &
pid=$!
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
auth=(-H "Authorization: Bearer $token")

awk -v n="$rows" 'BEGIN { print "name,email,phone,company,status,tags"; for (i = 0; i < n; i++) printf "Client %d,client%d@example.com,+49 30 %07d,Company %d,active,t%d;all\n", i, i, i, i % 977, i % 7 }' >"$data/clients.csv"
echo "binary: $bin ($(git rev-parse --short HEAD 2>/dev/null)), $(nproc) cores, database: ${db:-sqlite}"
echo "CSV: $rows rows, $(du -h "$data/clients.csv" | cut -f1)"
rss_before=$(rss)
start=$(date +%s.%N)
job=$(curl -fs "http://127.0.0.1:$port/api/v1/clients/import" "${auth[@]}" -H 'content-type: text/csv' --data-binary @"$data/clients.csv" \
  | sed -E 's/.*"id":"([^"]+)".*/\1/')
peak=$rss_before
while :; do
  status=$(curl -fs "http://127.0.0.1:$port/api/v1/jobs/$job" "${auth[@]}" | sed -E 's/.*"status":"([a-z]+)".*/\1/')
  now=$(rss); peak=$(awk -v a="$peak" -v b="$now" 'BEGIN { print (b > a) ? b : a }')
  [ "$status" = succeeded ] || [ "$status" = failed ] && break
  sleep 0.2
done
end=$(date +%s.%N)
echo "import: $status in $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }') s = $(awk -v s="$start" -v e="$end" -v n="$rows" 'BEGIN { printf "%.0f", n / (e - s) }') rows/s (upload, validation, upsert by email, one audit event per row)"
echo "server RSS: ${rss_before} MB before the import, peak ${peak} MB during it"

id=$(curl -fs "http://127.0.0.1:$port/api/v1/clients?limit=1" "${auth[@]}" | sed -E 's/.*"items":\[\{"id":"([^"]+)".*/\1/')
lua=$(mktemp --suffix=.lua)
cat >"$lua" <<LUA
wrk.method = "PATCH"
wrk.headers["Content-Type"] = "application/merge-patch+json"
wrk.headers["Authorization"] = "Bearer $token"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"notes":"note ' .. counter .. '"}')
end
LUA
echo
echo "| run | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
run() {
  local name=$1; shift
  local out; out=$(wrk -t2 -c16 -d"${duration}s" --latency "$@")
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')" "$(echo "$out" | awk '/Non-2xx/ {print $NF}')"
}
run "GET /clients?limit=50" "${auth[@]}" "http://127.0.0.1:$port/api/v1/clients?limit=50"
run "GET /clients?sort=name&limit=50" "${auth[@]}" "http://127.0.0.1:$port/api/v1/clients?sort=name&limit=50"
run "GET /clients?q=client4242 (search)" "${auth[@]}" "http://127.0.0.1:$port/api/v1/clients?q=client4242"
run "GET /clients?q=company 97 (search, many hits)" "${auth[@]}" "http://127.0.0.1:$port/api/v1/clients?q=company%2097"
run "GET /clients?tag=t3&status=active" "${auth[@]}" "http://127.0.0.1:$port/api/v1/clients?tag=t3&status=active"
run "PATCH /clients/{id} (audited write)" -s "$lua" "http://127.0.0.1:$port/api/v1/clients/$id"
rm -f "$lua"
echo
echo "server RSS after the runs: $(rss) MB"

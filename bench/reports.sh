#!/usr/bin/env bash
# The reports agent at scale: the overview's latency and a large report's time and memory, over
# a seeded database (default 100,000 clients and 1,000,000 audit events; SQLite, or PostgreSQL
# given a database URL). Builds the release binary.
#
# Usage: bash bench/reports.sh [clients] [events] [database-url]
#
# Clients and events are seeded straight into the database after `agentdesk migrate`: clients
# with a status each (active, lead, inactive, archived in turn) created over the last two years,
# events spread over the last year by 25 people about those clients (their hashes are
# placeholders that satisfy the chain trigger; verify would flag them, an overview does not read
# them), in time order as the server appends them. Then the release binary serves and:
# - `GET /api/v1/reports/overview` (the last 30 days) runs 5 times to warm up and 50 times
#   measured, one at a time, as the admin (every client) and as a member limited to 200 clients;
# - a `client_summary` report over every client is made as CSV and as PDF, each on a freshly
#   started server, timed from the request until it is ready, the server's VmRSS sampled every
#   50 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-100000}
events=${2:-1000000}
db=${3:-}
port=${BENCH_PORT:-18593}
command -v sqlite3 >/dev/null || [ -n "$db" ] || { echo "sqlite3 is missing: apt-get install sqlite3" >&2; exit 1; }

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release -p agentdesk
bin=target/release/agentdesk
export AGENTDESK_DATA_DIR=$work/data AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
export PGOPTIONS="-c client_min_messages=warning"
mkdir -p "$work/data"
if [ -n "$db" ]; then
  psql -q "$db" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public'
  export AGENTDESK_DATABASE_URL=$db
fi
"$bin" migrate >/dev/null

seed_start=$(date +%s%N)
if [ -n "$db" ]; then
  psql -q "$db" <<SQL
INSERT INTO clients (id, name, name_key, email, email_key, status, tags, metadata, search_text,
                     version, created_at, updated_at)
SELECT gen_random_uuid(), 'Client ' || n, 'client ' || n, 'client' || n || '@example.com',
       'client' || n || '@example.com', (ARRAY['active', 'lead', 'inactive', 'archived'])[n % 4 + 1],
       '[]'::jsonb, '{}'::jsonb, 'client ' || n || ' client' || n || '@example.com', 1,
       now() - make_interval(secs => (63072000.0 * ($clients - n) / $clients)),
       now() - make_interval(secs => (63072000.0 * ($clients - n) / $clients))
FROM generate_series(1, $clients) AS n;
CREATE TEMP TABLE bench_clients AS SELECT row_number() OVER (ORDER BY id) - 1 AS k, id FROM clients;
CREATE INDEX ON bench_clients (k);
INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id,
                          client_id, outcome, changes, prev_hash, hash)
SELECT gen_random_uuid(), n, now() - make_interval(secs => (31536000.0 * ($events - n) / $events)),
       NULL, 'user' || (n % 25) || '@example.com', 'client.update', 'client', c.id::text, c.id,
       'success', '{"after":{"notes":"x"}}', lpad((n - 1)::text, 64, '0'), lpad(n::text, 64, '0')
FROM generate_series(1, $events) AS n JOIN bench_clients AS c ON c.k = n % $clients
ORDER BY n; -- appended in time order, as the server appends them (the BRIN index on at relies on it)
VACUUM ANALYZE; -- the steady state autovacuum keeps (visibility map, BRIN summaries)
SQL
else
  sqlite3 "$work/data/agentdesk.db" <<SQL
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $clients)
INSERT INTO clients (id, name, name_key, email, email_key, status, tags, metadata, search_text,
                     version, created_at, updated_at)
SELECT randomblob(16), 'Client ' || n, 'client ' || n, 'client' || n || '@example.com',
       'client' || n || '@example.com',
       CASE n % 4 WHEN 0 THEN 'active' WHEN 1 THEN 'lead' WHEN 2 THEN 'inactive' ELSE 'archived' END,
       '[]', '{}', 'client ' || n || ' client' || n || '@example.com', 1,
       strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || (63072000 * ($clients - n) / $clients) || ' seconds'),
       strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || (63072000 * ($clients - n) / $clients) || ' seconds')
FROM seq;
CREATE TEMP TABLE bench_clients AS SELECT rowid - 1 AS k, id FROM clients;
CREATE INDEX temp.bench_k ON bench_clients (k);
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $events)
INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id,
                          client_id, outcome, changes, prev_hash, hash)
SELECT randomblob(16), n,
       strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || (31536000 * ($events - n) / $events) || ' seconds'),
       NULL, 'user' || (n % 25) || '@example.com', 'client.update', 'client', hex(c.id), c.id,
       'success', '{"after":{"notes":"x"}}', printf('%064d', n - 1), printf('%064d', n)
FROM seq JOIN bench_clients AS c ON c.k = n % $clients;
ANALYZE;
SQL
fi
seed_secs=$(( ($(date +%s%N) - seed_start) / 1000000000 ))

base=http://127.0.0.1:$port
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
login() {
  curl -fs "$base/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
serve() {
  "$bin" serve >"$work/serve.log" 2>&1 &
  pid=$!
  until curl -fs "$base/readyz" >/dev/null 2>&1; do sleep 0.01; done
  token=$(login bench@example.com bench-password-123)
  sleep 3 # the login's password-hashing area is released after 2 idle seconds
  idle=$(rss)
}
stop() { if kill "$pid"; then wait "$pid" 2>/dev/null || true; fi; pid=; }

# p50 and p95 of 50 overview requests (after 5 to warm up), in ms.
overview_latency() {
  local who=$1 t=$2 times=$work/times
  for _ in 1 2 3 4 5; do curl -fs -o /dev/null "$base/api/v1/reports/overview" -H "Authorization: Bearer $t"; done
  : >"$times"
  for _ in $(seq 1 50); do
    curl -fs -o /dev/null -w '%{time_total}\n' "$base/api/v1/reports/overview" -H "Authorization: Bearer $t" >>"$times"
  done
  sort -n "$times" | awk -v who="$who" '{ v[NR] = $1 * 1000 } END { printf "| overview, %s | %.1f ms | %.1f ms |\n", who, v[int(NR * 0.5)], v[int(NR * 0.95)] }'
}

# One report over every client: seconds until ready, peak RSS.
report_once() {
  local format=$1 start id status secs sampler
  serve
  (while :; do rss; sleep 0.05; done) >"$work/rss" &
  sampler=$!
  start=$(date +%s%N)
  id=$(curl -fs "$base/api/v1/reports" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"kind\":\"client_summary\",\"format\":\"$format\"}" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  status=queued
  while [ "$status" = queued ] || [ "$status" = processing ]; do
    sleep 0.1
    status=$(curl -fs "$base/api/v1/reports/$id" -H "Authorization: Bearer $token" | sed -E 's/.*"status":"([^"]+)".*/\1/')
  done
  secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { print (b - a) / 1e9 }')
  kill $sampler; wait $sampler 2>/dev/null || true
  local peak size
  peak=$(sort -n "$work/rss" | tail -n 1)
  size=$(curl -fs "$base/api/v1/reports/$id" -H "Authorization: Bearer $token" | sed -E 's/.*"size_bytes":([0-9]+).*/\1/')
  stop
  awk -v f="$format" -v st="$status" -v s="$secs" -v p="$peak" -v i="$idle" -v b="$size" \
    'BEGIN { printf "| client_summary, %s (%s) | %.1f s | %.1f MB | %.1f MB | %+.1f MB |\n", f, st, s, b / 1e6, p / 1024, (p - i) / 1024 }'
}

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, database: ${db:-sqlite}, $clients clients and $events events seeded in $seed_secs s"
echo
serve
member=$(curl -fs "$base/api/v1/users" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"email":"member@example.com","password":"member-password-123","full_name":"Bench Member","role":"member"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
ids=$(curl -fs "$base/api/v1/clients?limit=200" -H "Authorization: Bearer $token" | grep -o '"id":"[^"]*"' | sed -E 's/"id":"([^"]+)"/"\1"/' | head -n 200 | paste -sd, -)
curl -fs -o /dev/null "$base/api/v1/permissions/grants" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"user_id\":\"$member\",\"resource\":\"agent:reports_analysis\",\"actions\":[\"read\"],\"client_ids\":[$ids]}"
member_token=$(login member@example.com member-password-123)
echo "| request | p50 | p95 |"
echo "|---|---|---|"
overview_latency "admin (every client)" "$token"
overview_latency "member (200 clients)" "$member_token"
stop
echo
echo "| report | until ready | file | server's peak RSS | over its idle RSS |"
echo "|---|---|---|---|---|"
report_once csv
report_once pdf

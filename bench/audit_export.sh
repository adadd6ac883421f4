#!/usr/bin/env bash
# Exports a large audit log over HTTP and samples the server's memory while it streams, to show
# that an export's memory does not grow with the number of events.
#
# The log is seeded straight into the database after `agentdesk migrate` (events shaped like the
# server's own client updates; their hashes are placeholders that still satisfy the chain
# trigger, so `verify` would flag them, but an export does not check the chain). Then the release
# binary serves, and `GET /api/v1/audit/export` runs as CSV and as JSON Lines over the whole log
# and over a 1 % slice (one client's events), with the server's resident memory (VmRSS) sampled
# every 50 ms. A log whose export fits in constant memory peaks at about the same RSS for both.
#
# Usage: bash bench/audit_export.sh [events] [database-url]   (default: 1000000 events, SQLite)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
db=${2:-}
port=${BENCH_PORT:-18583}
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

# 100 clients; event n belongs to client n % 100. The placeholder hash of event n is n written
# in 64 digits, so event 1's previous hash is the genesis hash (64 zeros) and each event
# continues the one before, as the chain trigger demands.
seed_start=$(date +%s%N)
if [ -n "$db" ]; then
  psql -q "$db" <<SQL
INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id,
                          client_id, outcome, ip, user_agent, request_id, changes, prev_hash, hash)
SELECT gen_random_uuid(), n, now() - make_interval(secs => $events - n),
       '00000000-0000-7000-8000-000000000001', 'seed@example.com', 'client.update', 'client',
       c::text, c, 'success', '127.0.0.1', 'bench/1.0', 'req-' || n,
       jsonb_build_object('before', jsonb_build_object('notes', 'note ' || (n - 1)),
                          'after', jsonb_build_object('notes', 'note ' || n)),
       lpad((n - 1)::text, 64, '0'), lpad(n::text, 64, '0')
FROM generate_series(1, $events) AS n,
     LATERAL (SELECT ('00000000-0000-7000-8000-' || lpad((n % 100)::text, 12, '0'))::uuid AS c) AS client;
SQL
  slice_client=00000000-0000-7000-8000-000000000042
else
  # UUIDs are 16-byte blobs on SQLite: the 100 clients' ids as literals in a scratch table.
  for c in $(seq 0 99); do
    printf "INSERT INTO bench_clients VALUES (%d, X'000000000000700080000000%08d', '00000000-0000-7000-8000-%012d');\n" "$c" "$c" "$c"
  done >"$work/clients.sql"
  sqlite3 "$work/data/agentdesk.db" <<SQL
CREATE TEMP TABLE bench_clients (k INTEGER PRIMARY KEY, id BLOB, txt TEXT);
.read $work/clients.sql
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $events)
INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id,
                          client_id, outcome, ip, user_agent, request_id, changes, prev_hash, hash)
SELECT randomblob(16), n, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || ($events - n) || ' seconds'),
       X'00000000000070008000000000000001', 'seed@example.com', 'client.update', 'client',
       c.txt, c.id, 'success', '127.0.0.1', 'bench/1.0', 'req-' || n,
       json_object('before', json_object('notes', 'note ' || (n - 1)), 'after', json_object('notes', 'note ' || n)),
       printf('%064d', n - 1), printf('%064d', n)
FROM seq JOIN bench_clients AS c ON c.k = n % 100;
SQL
  slice_client=00000000-0000-7000-8000-000000000042
fi
seed_secs=$(( ($(date +%s%N) - seed_start) / 1000000000 ))

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
# Each export gets a freshly started server, so that one's peak does not hide the next one's.
serve() {
  "$bin" serve >"$work/serve.log" 2>&1 &
  pid=$!
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
  token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  sleep 3 # the login's password-hashing area is released after 2 idle seconds
  idle=$(rss)
}
stop() { kill "$pid" && wait "$pid" 2>/dev/null || true; pid=; }

# One export: prints events, MB, seconds and the peak RSS (MB) sampled while it ran.
export_once() {
  local query=$1 out=$work/export start secs peak=0 sampler
  serve
  (while :; do rss; sleep 0.05; done) >"$work/rss" &
  sampler=$!
  start=$(date +%s%N)
  curl -fsS -o "$out" "http://127.0.0.1:$port/api/v1/audit/export?$query" -H "Authorization: Bearer $token"
  secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { print (b - a) / 1e9 }')
  kill $sampler; wait $sampler 2>/dev/null || true
  peak=$(sort -n "$work/rss" | tail -n 1)
  local lines bytes
  lines=$(wc -l <"$out"); bytes=$(stat -c %s "$out")
  case $query in format=csv*) lines=$((lines - 1)) ;; esac
  rm -f "$out"
  stop
  awk -v l="$lines" -v b="$bytes" -v s="$secs" -v p="$peak" -v i="$idle" -v q="$query" \
    'BEGIN { printf "| `%s` | %d | %.0f MB | %.1f s | %.0f | %.1f MB | %+.1f MB |\n", q, l, b / 1e6, s, l / s, p / 1024, (p - i) / 1024 }'
}

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, database: ${db:-sqlite}, $events events seeded in $seed_secs s"
echo
echo "| export | events | size | time | events/s | server's peak RSS | over its idle RSS |"
echo "|---|---|---|---|---|---|---|"
export_once "format=csv&client_id=$slice_client"
export_once "format=csv"
export_once "format=jsonl&client_id=$slice_client"
export_once "format=jsonl"

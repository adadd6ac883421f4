#!/usr/bin/env bash
# What the audit log adds to a client write, as HTTP req/s with and without it, in one run.
#
# Two release binaries from the same commit: the normal one, and one built with the
# `bench-without-audit` feature, whose audit append returns without touching the database
# (everything else, including building the event at the call site, is the same). Each is started
# on a fresh data directory holding the same 10,000 imported clients, then wrk runs
#   - POST /api/v1/clients (a new client each request: one insert, its tags, one audit event)
#   - PATCH /api/v1/clients/{id} on 200 different clients (row lock, update, one audit event)
# The two binaries take turns, `rounds` times, so drift on a shared machine hits both alike.
# Usage: bash bench/audit.sh [seconds-per-run] [rounds] [database-url]   (needs wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-8}
rounds=${2:-3}
db=${3:-}
port=${BENCH_PORT:-18582}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
# Both variants in the one target directory (only our crates differ); each copied aside.
cargo build --release -p agentdesk --features agentdesk/bench-without-audit
cp target/release/agentdesk "$work/agentdesk-without-audit"
cargo build --release -p agentdesk
cp target/release/agentdesk "$work/agentdesk"
audited=$work/agentdesk
unaudited=$work/agentdesk-without-audit
export AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
# psql: no NOTICEs from the schema reset between runs.
export PGOPTIONS="-c client_min_messages=warning"

awk 'BEGIN { print "name,email,phone,company,status,tags"; for (i = 0; i < 10000; i++) printf "Seed %d,seed%d@example.com,+49 30 %07d,Company %d,active,t%d;all\n", i, i, i, i % 97, i % 7 }' >"$work/seed.csv"

# Each wrk thread numbers its own requests, so every POST has a new email.
cat >"$work/post.lua" <<'LUA'
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
  run = os.time()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local key = run .. "-" .. tid .. "-" .. counter
  return wrk.format(nil, nil, nil, '{"name":"Bench ' .. key .. '","email":"bench-' .. key .. '@example.com","phone":"+49 30 1234567","company":"Bench GmbH","tags":["bench","t' .. (counter % 7) .. '"]}')
end
LUA
cat >"$work/patch.lua" <<'LUA'
wrk.method = "PATCH"
wrk.headers["Content-Type"] = "application/merge-patch+json"
ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do table.insert(ids, line) end
counter = 0
request = function()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  return wrk.format(nil, "/api/v1/clients/" .. id, nil, '{"notes":"note ' .. counter .. '"}')
end
LUA

# Starts a binary on a fresh data directory (or a fresh PostgreSQL database) with the seed clients.
start() {
  local bin=$1
  rm -rf "$work/data" && mkdir "$work/data"
  export AGENTDESK_DATA_DIR=$work/data
  if [ -n "$db" ]; then
    psql -q "$db" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public' >/dev/null
    export AGENTDESK_DATABASE_URL=$db
  fi
  "$bin" serve >"$work/serve.log" 2>&1 &
  pid=$!
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
  token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  local job status
  job=$(curl -fs "http://127.0.0.1:$port/api/v1/clients/import" -H "Authorization: Bearer $token" \
    -H 'content-type: text/csv' --data-binary @"$work/seed.csv" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  while :; do
    status=$(curl -fs "http://127.0.0.1:$port/api/v1/jobs/$job" -H "Authorization: Bearer $token" | sed -E 's/.*"status":"([a-z]+)".*/\1/')
    [ "$status" = succeeded ] && break
    [ "$status" = failed ] && { echo "seed import failed" >&2; exit 1; }
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/api/v1/clients?limit=200" -H "Authorization: Bearer $token" \
    | python3 -c 'import json, sys; print("\n".join(c["id"] for c in json.load(sys.stdin)["items"]))' >"$work/ids"
  export BENCH_IDS=$work/ids
}

stop() {
  kill "$pid" && wait "$pid" 2>/dev/null || true
  pid=
}

# CPU time (clock ticks) of the server, and of PostgreSQL: its live processes plus the children
# the postmaster has reaped (autovacuum workers, ended backends).
server_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
postgres_ticks() {
  local postmaster p total=0
  postmaster=$(pgrep -o -x postgres || true)
  [ -n "$postmaster" ] || { echo 0; return; }
  total=$(awk '{ print $16 + $17 }' "/proc/$postmaster/stat")
  for p in $(pgrep -x postgres); do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
wal_lsn() { psql -Atq "$db" -c 'SELECT pg_current_wal_lsn()'; }

# Prints req/s of one wrk run and fails on any non-2xx answer. With a PostgreSQL database it also
# appends, per request, the server's and PostgreSQL's CPU time (µs) and the WAL written (bytes),
# each as a column after the req/s.
load() {
  local script=$1 path=$2 out s0 p0 w0 rate
  if [ -n "$db" ]; then s0=$(server_ticks); p0=$(postgres_ticks); w0=$(wal_lsn); fi
  out=$(wrk -t2 -c16 -d"${duration}s" -s "$script" -H "Authorization: Bearer $token" "http://127.0.0.1:$port$path")
  if echo "$out" | grep -q 'Non-2xx'; then
    echo "$out" >&2
    echo "non-2xx answers: the run does not count" >&2
    exit 1
  fi
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  if [ -n "$db" ]; then
    local requests s1 p1 wal hz
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    s1=$(server_ticks); p1=$(postgres_ticks)
    wal=$(psql -Atq "$db" -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$w0')")
    hz=$(getconf CLK_TCK)
    awk -v r="$rate" -v n="$requests" -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v w="$wal" -v hz="$hz" \
      'BEGIN { printf "%s %.0f %.0f %.0f\n", r, s * 1e6 / hz / n, p * 1e6 / hz / n, w / n }'
  else
    echo "$rate"
  fi
}

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, database: ${db:-sqlite}, wrk -t2 -c16 -d${duration}s, $rounds rounds"
echo
if [ -n "$db" ]; then
  echo "Per request, server CPU µs / PostgreSQL CPU µs / WAL bytes."
  echo
  echo "| round | binary | POST /clients req/s | PATCH /clients/{id} req/s | POST per request | PATCH per request |"
  echo "|---|---|---|---|---|---|"
else
  echo "| round | binary | POST /clients req/s | PATCH /clients/{id} req/s |"
  echo "|---|---|---|---|"
fi
declare -A post patch
for round in $(seq "$rounds"); do
  for variant in audited unaudited; do
    bin=$audited
    [ "$variant" = unaudited ] && bin=$unaudited
    start "$bin"
    read -r p p_detail < <(load "$work/post.lua" /api/v1/clients)
    read -r q q_detail < <(load "$work/patch.lua" /api/v1/clients)
    [ -n "$p" ] && [ -n "$q" ] || exit 1
    stop
    post[$variant]="${post[$variant]:-} $p"
    patch[$variant]="${patch[$variant]:-} $q"
    if [ -n "$db" ]; then
      echo "| $round | $variant | $p | $q | $(echo "$p_detail" | tr ' ' '/') | $(echo "$q_detail" | tr ' ' '/') |"
    else
      echo "| $round | $variant | $p | $q |"
    fi
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "| write | without audit (median) | with audit (median) | audit adds |"
echo "|---|---|---|---|"
for kind in post patch; do
  declare -n values=$kind
  without=$(echo "${values[unaudited]}" | median)
  with=$(echo "${values[audited]}" | median)
  # Added cost per request: (1/with - 1/without) / (1/without) = without/with - 1.
  added=$(awk -v a="$without" -v b="$with" 'BEGIN { printf "%+.1f %%", (a / b - 1) * 100 }')
  label="POST /clients"
  [ "$kind" = patch ] && label="PATCH /clients/{id}"
  echo "| $label | $without | $with | $added |"
  unset -n values
done

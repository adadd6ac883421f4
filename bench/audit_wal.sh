#!/usr/bin/env bash
# Where a client write's cost goes on PostgreSQL: for each binary given, `POST /api/v1/clients`
# (or with `-w patch`, `PATCH /api/v1/clients/{id}` over 200 of 10,000 imported clients, as in
# bench/audit.sh) under wrk on a fresh schema, then per request the server's and PostgreSQL's
# CPU time and the WAL written, and the WAL's records by type (pg_waldump; bytes are each type's
# combined size, full-page images included). Compare binaries built from two commits,
# or one with and one without the `bench-without-audit` feature; they take turns, `rounds` times.
#
# Needs a local PostgreSQL whose WAL directory this user can read (pg_waldump), and wrk.
# Usage: bash bench/audit_wal.sh [-s seconds] [-r rounds] [-d database-url] [-w post|patch] BINARY...
set -euo pipefail
duration=6
rounds=1
db=postgres://postgres@127.0.0.1:5432/agentdesk_bench
write=post
while getopts s:r:d:w: opt; do
  case $opt in
    s) duration=$OPTARG ;;
    r) rounds=$OPTARG ;;
    d) db=$OPTARG ;;
    w) write=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-s seconds] [-r rounds] [-d database-url] [-w post|patch] BINARY..." >&2; exit 2; }
case $write in post | patch) ;; *) echo "-w takes post or patch" >&2; exit 2 ;; esac
port=${BENCH_PORT:-18590}
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_waldump | sort -V | tail -n 1)")
wal_dir=$(psql -Atq "$db" -c 'SHOW data_directory')/pg_wal
hz=$(getconf CLK_TCK)
. "$(dirname "$0")/lib.sh"
export PGOPTIONS="-c client_min_messages=warning"
export AGENTDESK_DATABASE_URL=$db
. "$(dirname "$0")/seed.sh"
cp "$(dirname "$0")/${write}_client.lua" "$work/load.lua"
[ "$write" = patch ] && write_seed_csv "$work/seed.csv"

server_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
# PostgreSQL's live processes plus the children its postmaster has reaped (autovacuum workers).
postgres_ticks() {
  local postmaster p total
  postmaster=$(pgrep -o -x postgres)
  total=$(awk '{ print $16 + $17 }' "/proc/$postmaster/stat")
  for p in $(pgrep -x postgres); do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

measure() {
  local bin=$1 out w0 w1 s0 s1 p0 p1 n
  psql -q "$db" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public'
  start_fresh "$bin" "$work/data" "$port"
  [ "$write" = patch ] && import_seed "http://127.0.0.1:$port" "$token" "$work/seed.csv" "$work/ids"
  # Warm up, then start from a checkpoint so that full-page images are alike for every binary.
  BENCH_IDS=$work/ids BENCH_RUN=warm-$(date +%s%N) wrk -t2 -c16 -d2s -s "$work/load.lua" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/v1/clients" >/dev/null
  psql -q "$db" -c CHECKPOINT
  w0=$(psql -Atq "$db" -c 'SELECT pg_current_wal_lsn()')
  s0=$(server_ticks); p0=$(postgres_ticks)
  out=$(BENCH_IDS=$work/ids BENCH_RUN=run-$(date +%s%N) wrk -t2 -c16 -d"${duration}s" -s "$work/load.lua" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/v1/clients")
  s1=$(server_ticks); p1=$(postgres_ticks)
  sleep 0.2 # the sequencer's last batch
  w1=$(psql -Atq "$db" -c 'SELECT pg_current_wal_lsn()')
  stop_server
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "non-2xx answers" >&2; exit 1; fi
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  printf '| %s | %s | %s | %s | %s |\n' "$(basename "$bin")" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(( (s1 - s0) * 1000000 / hz / n ))" "$(( (p1 - p0) * 1000000 / hz / n ))" \
    "$(psql -Atq "$db" -c "SELECT round(pg_wal_lsn_diff('$w1', '$w0') / $n)")"
  "$pg_bin/pg_waldump" -p "$wal_dir" -s "$w0" -e "$w1" --stats=record 2>/dev/null \
    | awk -v n="$n" -v name="$(basename "$bin")" '{ gsub(/\([^)]*\)/, "") } $1 ~ /\// && $2 ~ /^[0-9]+$/ { printf "%s\t%s\t%.2f\t%.0f\n", name, $1, $2 / n, $5 / n }' \
    >>"$work/records"
}

label=$([ "$write" = patch ] && echo "PATCH /api/v1/clients/{id}" || echo "POST /api/v1/clients")
echo "$(nproc) cores, wrk -t2 -c16 -d${duration}s, $label, $rounds round(s)"
echo
echo "| binary | req/s | server CPU µs/request | PostgreSQL CPU µs/request | WAL bytes/request |"
echo "|---|---|---|---|---|"
for _ in $(seq "$rounds"); do
  for bin in "$@"; do measure "$bin"; done
done
echo
echo "WAL records per request, by type (mean over the rounds): records, bytes"
echo
echo "| record | $(for bin in "$@"; do printf '%s | ' "$(basename "$bin")"; done)"
echo "|---|$(for _ in "$@"; do printf -- '---|'; done)"
awk -F'\t' -v rounds="$rounds" -v bins="$(for bin in "$@"; do basename "$bin"; done | paste -sd,)" '
  { c[$2, $1] += $3; b[$2, $1] += $4; if (!($2 in seen)) { seen[$2]; order[++m] = $2 } }
  END {
    nb = split(bins, names, ",")
    for (i = 1; i <= m; i++) {
      line = "| " order[i] " |"
      for (j = 1; j <= nb; j++)
        line = line sprintf(" %.2f, %.0f B |", c[order[i], names[j]] / rounds, b[order[i], names[j]] / rounds)
      print line
    }
  }' "$work/records"

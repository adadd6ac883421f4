#!/usr/bin/env bash
# SQLite: WAL frames (4 KiB pages) that one `POST /api/v1/clients` writes, for each binary given
# (e.g. one built with and one without the `bench-without-audit` feature). A deterministic count,
# unlike req/s: SQLite writes every page a transaction changed to the WAL at its commit, so this
# is the write's I/O. After 300 warm-up requests, a TRUNCATE checkpoint empties the WAL, then 25
# sequential requests run (few enough that SQLite's auto-checkpoint at 1000 frames stays away).
# Usage: bash bench/audit_frames.sh BINARY...   (needs sqlite3)
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
port=${BENCH_PORT:-18593}
requests=25
. "$(dirname "$0")/lib.sh"

echo "| binary | WAL frames per POST /clients |"
echo "|---|---|"
for bin in "$@"; do
  start_fresh "$bin" "$work/data" "$port"
  post() {
    curl -fs -o /dev/null "http://127.0.0.1:$port/api/v1/clients" -H "Authorization: Bearer $token" \
      -H 'content-type: application/json' -d "{\"name\":\"C $1\",\"email\":\"c$1@example.com\",\"tags\":[\"bench\",\"t7\"]}"
  }
  for i in $(seq 1 300); do post "w$i"; done
  sqlite3 "$work/data/agentdesk.db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
  for i in $(seq 1 $requests); do post "m$i"; done
  frames=$(sqlite3 "$work/data/agentdesk.db" 'PRAGMA wal_checkpoint(PASSIVE);' | awk -F'|' '{ print $2 }')
  stop_server
  awk -v b="$(basename "$bin")" -v f="$frames" -v n=$requests 'BEGIN { printf "| %s | %.1f |\n", b, f / n }'
done

#!/usr/bin/env bash
# Backup and restore at size: 100,000 clients (imported through the API, so the audit chain is
# real) and 1 GiB of stored files (50 uploads of 20 MiB), then, timed:
# - `agentdesk backup --out` while the server serves,
# - `agentdesk backup verify`,
# - `agentdesk restore` into an empty data folder (or an empty PostgreSQL database),
# - `agentdesk audit verify` on the restored copy.
# Builds the release binary unless AGENTDESK_BIN names one.
#
# Usage: bash bench/backup.sh [clients] [files] [postgres-server-url]
#   e.g. bash bench/backup.sh 100000 50 postgres://postgres@127.0.0.1:5432
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-100000}
files=${2:-50}
pg=${3:-}
port=${BENCH_PORT:-18594}

work=$(mktemp -d -p "${BENCH_TMP:-$PWD/target}")
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  if [ -n "$pg" ]; then
    psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS bench_backup_src WITH (FORCE)" -c "DROP DATABASE IF EXISTS bench_backup_dst WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# AGENTDESK_BIN: an already built release binary (default: build it).
if [ -z "${AGENTDESK_BIN:-}" ]; then cargo build --release -p agentdesk; fi
bin=$(realpath "${AGENTDESK_BIN:-target/release/agentdesk}")
export AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
export AGENTDESK_JWT_SECRET=bench-secret-bench-secret-bench-secret-00
export AGENTDESK_AGENTS=client_management AGENTDESK_MAX_UPLOAD_MB=64
src=$work/src dst=$work/dst
mkdir -p "$src" "$dst"
if [ -n "$pg" ]; then
  for name in bench_backup_src bench_backup_dst; do
    PGOPTIONS="-c client_min_messages=warning" psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name TEMPLATE template0" >/dev/null
  done
  src_db=$pg/bench_backup_src dst_db=$pg/bench_backup_dst
else
  src_db=sqlite://$src/agentdesk.db dst_db=sqlite://$dst/agentdesk.db
fi

AGENTDESK_DATA_DIR=$src AGENTDESK_DATABASE_URL=$src_db "$bin" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.2; done
api=http://127.0.0.1:$port/api/v1
token=$(curl -fs "$api/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench-password-123"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
auth=(-H "authorization: Bearer $token")

python3 - "$clients" >"$work/clients.csv" <<'PY'
import sys
n = int(sys.argv[1])
print("name,email,company,tags")
for i in range(n):
    print(f"Client {i},client{i}@example.com,Company {i % 997},\"tier{i % 5}\"")
PY
seed_start=$(date +%s%N)
job=$(curl -fs "${auth[@]}" -H 'content-type: text/csv' --data-binary "@$work/clients.csv" "$api/clients/import" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
while :; do
  status=$(curl -fs "${auth[@]}" "$api/jobs/$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [ "$status" = succeeded ] && break
  [ "$status" = failed ] && { echo "the import failed" >&2; exit 1; }
  sleep 1
done
owner=$(curl -fs "${auth[@]}" -H 'content-type: application/json' -d '{"name":"Owner of the files"}' "$api/clients" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# 20 MiB files that pass the PDF check (the PDF agent does not run here: only storage counts).
for i in $(seq 1 "$files"); do
  { printf '%%PDF-1.4\n%% bench file %s\n' "$i"; head -c $((20 * 1024 * 1024)) /dev/urandom; } >"$work/f.pdf"
  curl -fs -o /dev/null "${auth[@]}" -F "file=@$work/f.pdf;type=application/pdf" "$api/clients/$owner/documents"
done
rm -f "$work/f.pdf"
seed_s=$(( ($(date +%s%N) - seed_start) / 1000000 ))

timed() { # label, command...
  local label=$1; shift
  local start; start=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-28s %8.1f s   max RSS %5d MiB\n' "$label" "$(echo "$ms / 1000" | bc -l)" $(( $(tail -n1 "$work/rss") / 1024 ))
}
echo "seeded $clients clients and $files x 20 MiB files in $((seed_s / 1000)) s ($([ -n "$pg" ] && echo PostgreSQL || echo SQLite))"
AGENTDESK_DATA_DIR=$src AGENTDESK_DATABASE_URL=$src_db timed "backup (server serving)" "$bin" backup --out "$work/b.backup"
echo "backup size: $(( $(stat -c %s "$work/b.backup") / 1024 / 1024 )) MiB"
timed "backup verify" "$bin" backup verify "$work/b.backup"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
AGENTDESK_DATA_DIR=$dst AGENTDESK_DATABASE_URL=$dst_db timed "restore" "$bin" restore "$work/b.backup"
AGENTDESK_DATA_DIR=$dst AGENTDESK_DATABASE_URL=$dst_db timed "audit verify (restored)" "$bin" audit verify

# shellcheck shell=bash
# Sourced by the bench scripts: an agentdesk server on a fresh data directory, and on a fresh
# PostgreSQL database when a URL is given; `bench_server_stop` stops it and drops the database.
# The caller exports AGENTDESK_ADMIN_EMAIL/PASSWORD (and any other setting) first.
#   bench_server_start <binary> <port> <directory> <database-url or ""> <database-name prefix>
# Sets bench_pid (the server) and bench_db_name (the database, empty on SQLite).
bench_pid=
bench_db_name=

bench_server_start() {
  local bin=$1 port=$2 dir=$3 db=$4 prefix=$5
  export AGENTDESK_DATA_DIR=$dir/data AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
  # The load logs in from one address many times; the per-IP limit would make it a 429 benchmark.
  export AGENTDESK_LOGIN_MAX_FAILURES_PER_IP=1000000
  bench_db_url=$db
  if [ -n "$db" ]; then
    bench_db_name=${prefix}_$$
    psql "$db/postgres" -qc "CREATE DATABASE $bench_db_name" >/dev/null
    export AGENTDESK_DATABASE_URL=$db/$bench_db_name
  fi
  "$bin" serve >"$dir/serve.log" 2>&1 &
  bench_pid=$!
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    kill -0 "$bench_pid" 2>/dev/null || { cat "$dir/serve.log"; return 1; }
    sleep 0.05
  done
}

bench_server_stop() {
  if [ -n "$bench_pid" ]; then kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null; fi
  if [ -n "$bench_db_name" ]; then
    psql "$bench_db_url/postgres" -qc "DROP DATABASE IF EXISTS $bench_db_name" >/dev/null
  fi
  return 0
}

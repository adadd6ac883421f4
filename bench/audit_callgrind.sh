#!/usr/bin/env bash
# Instructions per client write under callgrind: where a build's work goes, counted, not timed
# (callgrind counts the same for the same binary and load whatever else the machine does).
#
#   bash bench/audit_callgrind.sh server BINARY [post|patch] [seconds]
#     The server under callgrind on a fresh database of the local PostgreSQL (which runs
#     natively), 10,000 seed clients, an unmeasured warm-up, then wrk (-t1 -c4) for `seconds`
#     with instrumentation on. Prints the server's instructions per request; the profile stays in
#     OUT (callgrind_annotate OUT/callgrind.out).
#   bash bench/audit_callgrind.sh postgres BINARY [post|patch] [short] [long]
#     A PostgreSQL cluster of its own under callgrind (every process), the server native, 1,000
#     seed clients; the whole thing twice, with a load of `short` and of `long` seconds, so that
#     start-up, migrations and the seed cancel out: prints PostgreSQL's instructions per request
#     as the difference of the two totals over the difference of the requests, and the functions
#     whose inclusive count per request is largest, by the same difference.
#
# Compare a build with the one built with `--features agentdesk/bench-without-audit`. Under
# valgrind the CPU has no SHA extensions (sha2 falls back to its portable code, several times
# the native cost) and PostgreSQL runs several times slower, so the sequencer's batches are
# smaller than at full speed and their fixed cost weighs more per event.
# Needs valgrind, wrk, curl, python3, root (the cluster runs as user postgres), PostgreSQL's
# server binaries and, for `server`, PostgreSQL on 127.0.0.1:5432 (trust auth).
# OUT: BENCH_OUT, default /tmp/agentdesk-callgrind-<mode>-<write>.
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(…) fails the script too
cd "$(dirname "$0")/.."
mode=${1:?server or postgres}
bin=$(realpath "${2:?the binary}")
kind=${3:-patch}
out=${BENCH_OUT:-/tmp/agentdesk-callgrind-$mode-$kind}
for tool in valgrind callgrind_annotate wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
. bench/seed.sh
export AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
export PGOPTIONS="-c client_min_messages=warning"
port=${BENCH_PORT:-18620}
base=http://127.0.0.1:$port
rm -rf "$out" && mkdir -p "$out"

# wait_ready PID: until the server answers (fails when it died).
wait_ready() {
  until curl -fs "$base/readyz" >/dev/null 2>&1; do
    kill -0 "$1" 2>/dev/null || { echo "the server stopped" >&2; exit 1; }
    sleep 0.2
  done
}
# run_load SECONDS TOKEN IDS CONNECTIONS OUTPUT
run_load() {
  BENCH_IDS=$3 BENCH_RUN=cg-$(date +%s%N) wrk -t1 -c"$4" -d"$1s" -s "bench/${kind}_client.lua" \
    -H "Authorization: Bearer $2" "$base/api/v1/clients" >"$5"
  grep -q 'Non-2xx' "$5" && { cat "$5" >&2; echo "non-2xx answers" >&2; exit 1; }
  awk '/requests in/ {print $1}' "$5"
}

if [ "$mode" = server ]; then
  seconds=${4:-20}
  db=postgres://postgres@127.0.0.1:5432/agentdesk_callgrind
  psql -q "${db%/*}/postgres" -c "DROP DATABASE IF EXISTS agentdesk_callgrind WITH (FORCE)" \
    -c "CREATE DATABASE agentdesk_callgrind" >/dev/null
  write_seed_csv "$out/seed.csv"
  mkdir -p "$out/data"
  AGENTDESK_DATA_DIR=$out/data AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_DATABASE_URL=$db \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
    "$bin" serve >"$out/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
  wait_ready $server
  token=$(bench_login "$base")
  import_seed "$base" "$token" "$out/seed.csv" "$out/ids"
  run_load 5 "$token" "$out/ids" 4 "$out/warm-up.txt" >/dev/null
  sleep 1
  callgrind_control -i on $server >/dev/null
  requests=$(run_load "$seconds" "$token" "$out/ids" 4 "$out/wrk.txt")
  sleep 1.5 # the sequencer moves what the load queued
  callgrind_control -i off $server >/dev/null
  kill $server && wait $server 2>/dev/null || true
  trap - EXIT
  total=$(callgrind_annotate "$out/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
  echo "server: $requests requests, $total instructions, $((total / requests)) per request (profile: $out/callgrind.out)"
  exit 0
fi

[ "$mode" = postgres ] || { echo "mode is server or postgres" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root: the cluster runs as user postgres" >&2; exit 1; }
pg_bin=$(pg_bindir)
short=${4:-8}
long=${5:-32}
pg_port=${BENCH_PG_PORT:-5450}
if "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q; then
  echo "port $pg_port is taken (BENCH_PG_PORT names another)" >&2
  exit 1
fi
chmod 777 "$out"
server= cluster=
stop_all() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "$cluster" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$cluster" -m fast -w stop >/dev/null 2>&1
  server= cluster=
  return 0
}
trap stop_all EXIT

# one SECONDS: a fresh cluster under callgrind, the server, the seed, a load; writes the number
# of requests to $out/<SECONDS>s/requests.
one() {
  local seconds=$1 w=$out/$1s
  mkdir -p "$w/pg" "$w/callgrind" "$w/data"
  chmod 777 "$w" "$w/callgrind"
  chown postgres "$w/pg"
  runuser -u postgres -- "$pg_bin/initdb" -D "$w/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  runuser -u postgres -- bash -c 'nohup valgrind --tool=callgrind --vgdb=no --trace-children=yes \
    --callgrind-out-file="$1/callgrind/cg.%p" "$2/postgres" -D "$1/pg" -p "$3" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories="$1/pg" >"$1/pg.log" 2>&1 &' \
    cluster "$w" "$pg_bin" "$pg_port"
  cluster=$w/pg
  local tries=0
  until "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q; do
    tries=$((tries + 1))
    [ $tries -lt 120 ] || { cat "$w/pg.log" >&2; echo "the cluster did not start" >&2; exit 1; }
    sleep 1
  done
  psql -q "postgres://postgres@127.0.0.1:$pg_port/postgres" -c "CREATE DATABASE bench" >/dev/null
  write_seed_csv "$w/seed.csv"
  head -n 1001 "$w/seed.csv" >"$w/seed-1000.csv"
  AGENTDESK_DATA_DIR=$w/data AGENTDESK_BIND=127.0.0.1:$port \
    AGENTDESK_DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/bench "$bin" serve >"$w/server.log" 2>&1 &
  server=$!
  wait_ready $server
  local token
  token=$(bench_login "$base")
  import_seed "$base" "$token" "$w/seed-1000.csv" "$w/ids"
  run_load "$seconds" "$token" "$w/ids" 16 "$w/wrk.txt" >"$w/requests"
  sleep 2
  stop_all
  sleep 3 # callgrind writes each process's profile as it exits
}
one "$short"
one "$long"
short_requests=$(cat "$out/${short}s/requests")
long_requests=$(cat "$out/${long}s/requests")
python3 - "$out/${short}s/callgrind" "$out/${long}s/callgrind" $((long_requests - short_requests)) <<'EOF'
import collections, glob, re, subprocess, sys
short_dir, long_dir, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
def inclusive(directory):
    counts, total = collections.Counter(), 0
    for path in glob.glob(directory + "/cg.*"):
        with open(path) as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("totals:"))
        text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                              capture_output=True, text=True).stdout
        for line in text.splitlines():
            m = re.match(r"^\s*([0-9,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
            if m and "PROGRAM TOTALS" not in m.group(2):
                name = re.sub(r" \[.*\]$", "", m.group(2)).split(":")[-1]
                counts[name] += int(m.group(1).replace(",", ""))
    return counts, total
(short, short_total), (long, long_total) = inclusive(short_dir), inclusive(long_dir)
print(f"postgres: {requests} requests more in the long run, {(long_total - short_total) / requests:.0f} instructions per request")
per = {k: (long[k] - short[k]) / requests for k in set(long) | set(short)}
print("largest inclusive counts per request (named functions):")
for name, count in sorted(per.items(), key=lambda kv: -kv[1])[:60]:
    if not name.startswith("0x"):
        print(f"{count:12.0f}  {name}")
EOF

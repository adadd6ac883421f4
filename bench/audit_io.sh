#!/usr/bin/env bash
# SQLite: the I/O that a `POST /api/v1/clients` costs under load, for each binary given (e.g. one
# built with and one without the `bench-without-audit` feature): wrk -t2 -c16 for `seconds`
# after a 2 s warm-up, on a fresh data directory, then from the server's /proc/PID/io the bytes
# it sent to storage (WAL frames and checkpoints into the database file) and its write system
# calls, each per request. Unlike req/s these hardly move between runs.
# Usage: bash bench/audit_io.sh [-s seconds] BINARY...   (needs wrk)
set -euo pipefail
duration=6
while getopts s: opt; do
  case $opt in
    s) duration=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-s seconds] BINARY..." >&2; exit 2; }
port=${BENCH_PORT:-18594}
script=$(dirname "$0")/post_client.lua
. "$(dirname "$0")/lib.sh"
io() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$pid/io"; }

echo "| binary | req/s | bytes to storage per request | write calls per request |"
echo "|---|---|---|---|"
for bin in "$@"; do
  start_fresh "$bin" "$work/data" "$port"
  BENCH_RUN=warm-$(date +%s%N) wrk -t2 -c16 -d2s -s "$script" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/v1/clients" >/dev/null
  bytes0=$(io write_bytes) calls0=$(io syscw)
  out=$(BENCH_RUN=run-$(date +%s%N) wrk -t2 -c16 -d"${duration}s" -s "$script" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/v1/clients")
  sleep 0.2 # the sequencer's last move
  bytes1=$(io write_bytes) calls1=$(io syscw)
  stop_server
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "non-2xx answers" >&2; exit 1; fi
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "| $(basename "$bin") | $(echo "$out" | awk '/Requests\/sec/ {print $2}') | $(( (bytes1 - bytes0) / n )) | $(( (calls1 - calls0) / n )) |"
done

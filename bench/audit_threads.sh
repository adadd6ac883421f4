#!/usr/bin/env bash
# SQLite: where a `POST /api/v1/clients` spends CPU under load, per thread of the server, for
# each binary given (e.g. one built with and one without the `bench-without-audit` feature):
# wrk -t2 -c16 for `seconds` after a 3 s warm-up, on a fresh data directory, then from
# /proc/PID/task/*/stat the user and system time of each busy thread per request. On SQLite
# every write goes through one writer thread (the busiest `sqlx-sqlite-wor`), so its time per
# request bounds req/s while the machine still has idle CPU.
# Usage: bash bench/audit_threads.sh [-s seconds] BINARY...   (needs wrk)
set -euo pipefail
duration=8
while getopts s: opt; do
  case $opt in
    s) duration=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-s seconds] BINARY..." >&2; exit 2; }
port=${BENCH_PORT:-18596}
script=$(dirname "$0")/post_client.lua
. "$(dirname "$0")/lib.sh"
hz=$(getconf CLK_TCK)
# One line per thread: id, name, user ticks, system ticks.
threads() {
  local t
  for t in /proc/"$pid"/task/*; do
    echo "${t##*/} $(tr ' ' _ <"$t/comm") $(awk '{ print $14, $15 }' "$t/stat" 2>/dev/null || echo 0 0)"
  done | sort
}

echo "| binary | req/s | thread | user µs per request | system µs per request |"
echo "|---|---|---|---|---|"
for bin in "$@"; do
  start_fresh "$bin" "$work/data" "$port"
  BENCH_RUN=warm-$(date +%s%N) wrk -t2 -c16 -d3s -s "$script" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/v1/clients" >/dev/null
  threads >"$work/before"
  out=$(BENCH_RUN=run-$(date +%s%N) wrk -t2 -c16 -d"${duration}s" -s "$script" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/v1/clients")
  threads >"$work/after"
  stop_server
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "non-2xx answers" >&2; exit 1; fi
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  # Threads that used at least 5 µs per request, busiest first.
  join "$work/before" "$work/after" | awk -v n="$n" -v hz="$hz" -v b="$(basename "$bin")" -v r="$rate" '{
      u = ($6 - $3) * 1e6 / hz / n; s = ($7 - $4) * 1e6 / hz / n
      if (u + s >= 5) printf "%.0f| %s | %s | %s | %.0f | %.0f |\n", u + s, b, r, $2, u, s
    }' | sort -t'|' -k1,1nr | cut -d'|' -f2-
done

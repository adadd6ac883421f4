#!/usr/bin/env bash
# SQLite: what a `POST /api/v1/clients` costs under load, for each binary given (e.g. one built
# with and one without the `bench-without-audit` feature): wrk with `connections` (16; 1 sends
# one request after another, so the CPU a request costs is not mixed with queueing) for `seconds`
# after a 2 s warm-up, on a fresh data directory, then per request
#   - from the server's /proc/PID/io: the bytes it sent to storage (WAL frames and checkpoints
#     into the database file) and its write system calls; unlike req/s these hardly move;
#   - from /proc/PID/task/*/stat: the user and system CPU time of each busy thread. Every write
#     goes through SQLite's one writer thread (the busiest `sqlx-sqlite-wor`), so its time per
#     request, and the hand-offs around it, bound req/s while the machine still has idle CPU;
#   - from /proc/PID/task/*/status: each busy thread's voluntary context switches (each time it
#     waited: a hand-off between a tokio task and the writer costs one on each side).
# Usage: bash bench/audit_io.sh [-s seconds] [-c connections] BINARY...   (needs wrk)
set -euo pipefail
duration=6
connections=16
while getopts s:c: opt; do
  case $opt in
    s) duration=$OPTARG ;;
    c) connections=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-s seconds] BINARY..." >&2; exit 2; }
port=${BENCH_PORT:-18594}
script=$(dirname "$0")/post_client.lua
. "$(dirname "$0")/lib.sh"
hz=$(getconf CLK_TCK)
io() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$pid/io"; }
threads_wrk=$([ "$connections" -ge 2 ] && echo 2 || echo 1)
# One line per thread: id, name, user ticks, system ticks, voluntary context switches.
threads() {
  local t
  for t in /proc/"$pid"/task/*; do
    echo "${t##*/} $(tr ' ' _ <"$t/comm") $(awk '{ print $14, $15 }' "$t/stat" 2>/dev/null || echo 0 0) $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status" 2>/dev/null || echo 0)"
  done | LC_ALL=C sort
}

echo "| binary | req/s | bytes to storage per request | write calls per request |"
echo "|---|---|---|---|"
: >"$work/threads"
for bin in "$@"; do
  start_fresh "$bin" "$work/data" "$port"
  BENCH_RUN=warm-$(date +%s%N) wrk -t"$threads_wrk" -c"$connections" -d2s -s "$script" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/v1/clients" >/dev/null
  bytes0=$(io write_bytes) calls0=$(io syscw)
  threads >"$work/before"
  out=$(BENCH_RUN=run-$(date +%s%N) wrk -t"$threads_wrk" -c"$connections" -d"${duration}s" -s "$script" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/v1/clients")
  threads >"$work/after"
  sleep 0.2 # the sequencer's last move
  bytes1=$(io write_bytes) calls1=$(io syscw)
  stop_server
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "non-2xx answers" >&2; exit 1; fi
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  echo "| $(basename "$bin") | $rate | $(( (bytes1 - bytes0) / n )) | $(( (calls1 - calls0) / n )) |"
  # Threads that used at least 5 µs per request, busiest first.
  # Joined: id, name, user, system, switches (before), name, user, system, switches (after).
  LC_ALL=C join "$work/before" "$work/after" | awk -v n="$n" -v hz="$hz" -v b="$(basename "$bin")" '{
      u = ($7 - $3) * 1e6 / hz / n; s = ($8 - $4) * 1e6 / hz / n; w = ($9 - $5) / n
      if (u + s >= 5) printf "%.0f\t| %s | %s | %.0f | %.0f | %.1f |\n", u + s, b, $2, u, s, w
    }' | sort -k1,1nr | cut -f2- >>"$work/threads"
done
echo
echo "| binary | thread | user µs per request | system µs per request | waits per request |"
echo "|---|---|---|---|---|"
cat "$work/threads"

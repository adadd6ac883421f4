#!/usr/bin/env bash
# What the audit log adds to a client write, as HTTP req/s with and without it, in one run.
#
# Two release binaries from the same commit: the normal one, and one built with the
# `bench-without-audit` feature, whose audit append returns without touching the database
# (everything else, including building the event at the call site, is the same). Both are started
# once, side by side, each on a fresh database (SQLite: its own data directory; PostgreSQL: the
# database given and a second one beside it, named with `_without_audit`) holding the same
# 10,000 imported clients. Then wrk runs, turn by turn,
#   - POST /api/v1/clients (a new client each request: one insert, its tags, one audit event)
#   - PATCH /api/v1/clients/{id} on 200 different clients (row lock, update, one audit event)
# against one binary and then the other, seconds apart, swapping which goes first every round,
# so that drift on a shared machine hits both alike. The summary compares the medians, the
# median of the rounds' own ratios (each round compares runs made seconds apart) and their
# geometric mean (which cancels a bias of the first or second place in a round).
# With PostgreSQL it also shows, per request, the server's and PostgreSQL's CPU time and the WAL.
#
# BENCH_BLOCKS=N runs one server at a time instead: blocks in the order with, without, without,
# with (N times), each block a fresh server and database, one unmeasured run of each write, then
# `rounds` measured runs of each back to back. Side by side, the run in a round's second place
# was up to ~20 % slower than the first whichever binary it was (BENCHMARKS.md, 2026-12-02
# evening); alone, a server's runs after its first one are steady, and the order of the blocks
# cancels a drift that is linear over the run.
# Usage: bash bench/audit.sh [seconds-per-run] [rounds] [database-url]   (needs wrk)
#        BENCH_AUDITED=bin BENCH_UNAUDITED=bin bash bench/audit.sh …   (binaries built already)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-8}
rounds=${2:-3}
db=${3:-}
port=${BENCH_PORT:-18582}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
declare -A pid port_of token_of db_of
cleanup() {
  local p
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
. bench/seed.sh
audit_bench_setup "$work"

# Starts a variant on a fresh data directory (or a fresh PostgreSQL database) with the seed clients.
start() {
  local variant=$1 bin=$2 variant_port=$3 base token
  base="http://127.0.0.1:$variant_port"
  mkdir -p "$work/$variant"
  if [ -n "$db" ]; then
    local url=$db name=${db##*/}
    name=${name%%\?*}
    [ "$variant" = unaudited ] && { name=${name}_without_audit; url=${db%/*}/$name; }
    # Each database is made on first use, through the server's `postgres` database.
    psql -q "${db%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 \
      || psql -q "${db%/*}/postgres" -c "CREATE DATABASE $name" >/dev/null
    psql -q "$url" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public' >/dev/null
    db_of[$variant]=$url
  fi
  local database=()
  [ -n "$db" ] && database=("AGENTDESK_DATABASE_URL=${db_of[$variant]}")
  env AGENTDESK_DATA_DIR="$work/$variant" AGENTDESK_BIND="127.0.0.1:$variant_port" "${database[@]}" \
    "$bin" serve >"$work/$variant.log" 2>&1 &
  pid[$variant]=$!
  port_of[$variant]=$variant_port
  until curl -fs "$base/readyz" >/dev/null 2>&1; do sleep 0.01; done
  token=$(bench_login "$base")
  token_of[$variant]=$token
  import_seed "$base" "$token" "$work/seed.csv" "$work/$variant.ids"
}

# CPU time (clock ticks) of a process, and of PostgreSQL: its live processes plus the children
# the postmaster has reaped (autovacuum workers, ended backends).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
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

# Prints req/s of one wrk run against a variant and fails on any non-2xx answer. With PostgreSQL
# it also prints, per request, the server's and PostgreSQL's CPU time (µs) and the WAL (bytes).
load() {
  local variant=$1 script=$2 out s0 p0 w0 rate steal0 total0 steal1 total1 steal
  read -r steal0 total0 < <(cpu_ticks)
  if [ -n "$db" ]; then s0=$(ticks "${pid[$variant]}"); p0=$(postgres_ticks); w0=$(wal_lsn); fi
  out=$(BENCH_IDS=$work/$variant.ids BENCH_RUN=$variant-$(date +%s%N) wrk -t2 -c16 -d"${duration}s" -s "$script" \
    -H "Authorization: Bearer ${token_of[$variant]}" "http://127.0.0.1:${port_of[$variant]}/api/v1/clients")
  if echo "$out" | grep -q 'Non-2xx'; then
    echo "$out" >&2
    echo "non-2xx answers: the run does not count" >&2
    exit 1
  fi
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  read -r steal1 total1 < <(cpu_ticks)
  steal=$(steal_percent "$steal0" "$total0" "$steal1" "$total1")
  if [ -n "$db" ]; then
    local requests s1 p1 wal hz
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    s1=$(ticks "${pid[$variant]}"); p1=$(postgres_ticks)
    wal=$(psql -Atq "$db" -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$w0')")
    hz=$(getconf CLK_TCK)
    awk -v r="$rate" -v n="$requests" -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v w="$wal" -v hz="$hz" \
      -v st="$steal" 'BEGIN { printf "%s %.0f/%.0f/%.0f/%s%%\n", r, s * 1e6 / hz / n, p * 1e6 / hz / n, w / n, st }'
  else
    echo "$rate steal $steal %"
  fi
}

# Summaries: the numbers of a space-separated list, one a line.
numbers() { tr ' ' '\n' | grep -v '^$'; }
mean() { numbers | awk '{ s += $1 } END { printf "%.1f", s / NR }'; }
median() { numbers | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# The cost audit adds per request, from req/s without and with it: (1/with - 1/without) / (1/without).
adds() { awk -v u="$1" -v a="$2" 'BEGIN { printf "%+.1f %%", (u / a - 1) * 100 }'; }
setup="commit $(git rev-parse --short HEAD), $(nproc) cores, database: ${db:-sqlite}, wrk -t2 -c16 -d${duration}s"

if [ -n "${BENCH_BLOCKS:-}" ]; then
  declare -A bin_of=([audited]="$work/agentdesk" [unaudited]="$work/agentdesk-without-audit")
  declare -A runs_of cycle_of
  echo "$setup, $BENCH_BLOCKS × (with, without, without, with), $rounds measured runs of each write per block"
  echo
  if [ -n "$db" ]; then
    echo "Each run: req/s (server CPU µs / PostgreSQL CPU µs / WAL bytes, per request / CPU steal)." && echo
  else
    echo "Each run: req/s (CPU steal: the share of the machine's CPU time the hypervisor gave to others)." && echo
  fi
  echo "| block | binary | POST /clients req/s | PATCH /clients/{id} req/s |"
  echo "|---|---|---|---|"
  block=0
  for cycle in $(seq "$BENCH_BLOCKS"); do
    for variant in audited unaudited unaudited audited; do
      block=$((block + 1))
      rm -rf "${work:?}/$variant"
      start "$variant" "${bin_of[$variant]}" "$port"
      declare -A line=()
      for kind in post patch; do
        load "$variant" "$work/$kind.lua" >/dev/null # the first run after a start is not steady
        for run in $(seq "$rounds"); do
          read -r r d < <(load "$variant" "$work/$kind.lua")
          [ -n "$r" ] || exit 1
          line[$kind]="${line[$kind]:-} $r${d:+ ($d)}"
          runs_of[$variant,$kind]="${runs_of[$variant,$kind]:-} $r"
          cycle_of[$cycle,$variant,$kind]="${cycle_of[$cycle,$variant,$kind]:-} $r"
        done
      done
      echo "| $block | $variant |${line[post]} |${line[patch]} |"
      kill "${pid[$variant]}" && wait "${pid[$variant]}" 2>/dev/null || true
      unset "pid[$variant]"
    done
  done
  echo
  echo "| write | without audit (mean req/s) | with audit (mean req/s) | audit adds (means) | audit adds, each cycle of four blocks |"
  echo "|---|---|---|---|---|"
  for kind in post patch; do
    without=$(echo "${runs_of[unaudited,$kind]}" | mean)
    with=$(echo "${runs_of[audited,$kind]}" | mean)
    each=
    for cycle in $(seq "$BENCH_BLOCKS"); do
      each="$each $(adds "$(echo "${cycle_of[$cycle,unaudited,$kind]}" | mean)" "$(echo "${cycle_of[$cycle,audited,$kind]}" | mean)"),"
    done
    echo "| $(write_label "$kind") | $without | $with | $(adds "$without" "$with") |${each%,} |"
  done
  exit 0
fi

start audited "$work/agentdesk" "$port"
start unaudited "$work/agentdesk-without-audit" $((port + 1))

echo "$setup, $rounds rounds"
echo
if [ -n "$db" ]; then
  echo "Per request: server CPU µs / PostgreSQL CPU µs / WAL bytes / CPU steal."
  echo
  echo "| round | binary | POST /clients req/s | PATCH /clients/{id} req/s | POST per request | PATCH per request |"
  echo "|---|---|---|---|---|---|"
else
  echo "| round | binary | POST /clients req/s | PATCH /clients/{id} req/s |"
  echo "|---|---|---|---|"
fi
declare -A rate detail
for round in $(seq "$rounds"); do
  order=(audited unaudited)
  [ $((round % 2)) = 0 ] && order=(unaudited audited)
  for kind in post patch; do
    for variant in "${order[@]}"; do
      read -r r d < <(load "$variant" "$work/$kind.lua")
      [ -n "$r" ] || exit 1
      rate[$round,$variant,$kind]=$r
      detail[$round,$variant,$kind]=${d:-}
    done
  done
  for variant in "${order[@]}"; do
    line="| $round | $variant | ${rate[$round,$variant,post]} | ${rate[$round,$variant,patch]} |"
    [ -n "$db" ] && line="$line ${detail[$round,$variant,post]} | ${detail[$round,$variant,patch]} |"
    echo "$line"
  done
done

echo
echo "| write | without audit (median req/s) | with audit (median req/s) | audit adds (medians) | audit adds (median of the rounds' ratios) | audit adds (geometric mean of the rounds' ratios) |"
echo "|---|---|---|---|---|---|"
for kind in post patch; do
  with_all= without_all= ratios=
  for round in $(seq "$rounds"); do
    a=${rate[$round,audited,$kind]} u=${rate[$round,unaudited,$kind]}
    with_all="$with_all $a" without_all="$without_all $u"
    ratios="$ratios $(awk -v a="$a" -v u="$u" 'BEGIN { print u / a - 1 }')"
  done
  without=$(echo "$without_all" | median)
  with=$(echo "$with_all" | median)
  paired=$(echo "$ratios" | median)
  # Which binary runs first swaps every round, so a bias of the first (or second) place cancels
  # out of the mean of the ratios' logarithms, where a median of alternating ratios can miss it.
  geometric=$(echo "$ratios" | numbers | awk '{ s += log($1 + 1) } END { printf "%+.1f %%", (exp(s / NR) - 1) * 100 }')
  paired=$(awk -v r="$paired" 'BEGIN { printf "%+.1f %%", r * 100 }')
  echo "| $(write_label "$kind") | $without | $with | $(adds "$without" "$with") | $paired | $geometric |"
done

#!/usr/bin/env bash
# What the audit log costs a client write, and what an export of it costs, one mode each
# (BENCHMARKS.md, "Audit", has the figures of record and their commands):
#
#   paired     both builds at the same time on PostgreSQL, each a whole stack on half the machine
#   block      one server at a time, in blocks (SQLite, or PostgreSQL given a database URL)
#   wal        CPU and WAL per write on PostgreSQL, the WAL by record type (pg_waldump)
#   callgrind  instructions per write, of the server or of PostgreSQL, under callgrind
#   export     a large audit log exported over HTTP, the server's memory sampled
#
# Usage: bash bench/audit.sh paired [seconds-per-run] [runs-per-pass] [passes]      (root)
#        bash bench/audit.sh block [seconds-per-run] [runs-per-block] [database-url]
#        bash bench/audit.sh wal [-s seconds] [-r rounds] [-d database-url] [-w post|patch] BINARY...
#        bash bench/audit.sh callgrind server BINARY [post|patch] [seconds]
#        bash bench/audit.sh callgrind postgres BINARY [post|patch] [short] [long]   (root)
#        bash bench/audit.sh export [events] [database-url]
#
# paired and block compare two release builds of one commit: the normal one, and one built with
# `--features agentdesk/bench-without-audit`, whose audit append only makes the change and writes
# no event (everything else, including building the event at the call site, is the same). Pass
# them as BENCH_AUDITED=bin BENCH_UNAUDITED=bin (each copied aside after its build), or set
# neither and the mode builds both. wal and callgrind take the binaries to compare as arguments.
# The writes measured: POST /api/v1/clients (bench/post_client.lua: a new client with two tags
# each request: one insert, its tags, one audit event) and PATCH /api/v1/clients/{id}
# (bench/patch_client.lua: a new note on each of 200 of the 10,000 imported clients in turn:
# row lock, update, one audit event).
set -euo pipefail

usage() {
  sed -n '/^# Usage:/,/^#$/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^$/d' >&2
  exit 2
}

# ---- Shared by the modes ----

# write_seed_csv FILE: 10,000 clients as CSV, for the import job.
write_seed_csv() {
  awk 'BEGIN { print "name,email,phone,company,status,tags"; for (i = 0; i < 10000; i++) printf "Seed %d,seed%d@example.com,+49 30 %07d,Company %d,active,t%d;all\n", i, i, i, i % 97, i % 7 }' >"$1"
}

# import_seed BASE_URL TOKEN CSV IDS: imports CSV through the import job, waits until it has
# succeeded, and writes the ids of the first 200 clients, one a line, to IDS (for patch_client.lua).
import_seed() {
  local base=$1 token=$2 csv=$3 ids=$4 job status
  job=$(curl -fs "$base/api/v1/clients/import" -H "Authorization: Bearer $token" \
    -H 'content-type: text/csv' --data-binary @"$csv" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  while :; do
    status=$(curl -fs "$base/api/v1/jobs/$job" -H "Authorization: Bearer $token" | sed -E 's/.*"status":"([a-z]+)".*/\1/')
    [ "$status" = succeeded ] && break
    [ "$status" = failed ] && { echo "seed import failed" >&2; exit 1; }
    sleep 0.2
  done
  curl -fs "$base/api/v1/clients?limit=200" -H "Authorization: Bearer $token" \
    | python3 -c 'import json, sys; print("\n".join(c["id"] for c in json.load(sys.stdin)["items"]))' >"$ids"
}

# bench_login BASE_URL: the bench admin's access token (the servers start with
# AGENTDESK_ADMIN_EMAIL/PASSWORD as audit_bench_setup sets them).
bench_login() {
  curl -fs "$1/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}

# pg_bindir: the folder of PostgreSQL's server binaries (initdb, pg_ctl, postgres); fails
# when there is none.
pg_bindir() {
  local dir
  dir=$(pg_config --bindir 2>/dev/null || true)
  # shellcheck disable=SC2012 # the folders' names are PostgreSQL's versions
  [ -x "$dir/initdb" ] || dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$dir/initdb" ] || { echo "PostgreSQL's initdb was not found" >&2; return 1; }
  echo "$dir"
}

# cpu_ticks: the machine's CPU ticks, "steal total" (steal: time the hypervisor ran someone else
# while this machine wanted the CPU); steal_percent STEAL0 TOTAL0 STEAL1 TOTAL1: its share between
# two readings.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat; }
steal_percent() { awk -v s=$(($3 - $1)) -v t=$(($4 - $2)) 'BEGIN { printf "%.0f", t ? s * 100 / t : 0 }'; }

# postgres_ticks: the CPU time (clock ticks) of the local PostgreSQL: its live processes plus the
# children the postmaster has reaped (autovacuum workers, ended backends).
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

# write_label KIND: the route a wrk script of audit_bench_setup writes to.
write_label() { if [ "$1" = patch ]; then echo "PATCH /clients/{id}"; else echo "POST /clients"; fi; }

# audit_bench_setup WORK: what the modes paired and block share. The two builds compared, as
# WORK/agentdesk and WORK/agentdesk-without-audit: BENCH_AUDITED and BENCH_UNAUDITED (built
# before, from one commit) when both are set, otherwise both built here (in the one target
# directory, only our crates differ); the servers' settings; the seed CSV (WORK/seed.csv) and the
# two wrk scripts (WORK/post.lua, WORK/patch.lua).
audit_bench_setup() {
  local work=$1
  if [ "${BENCH_AUDITED:+set}" != "${BENCH_UNAUDITED:+set}" ]; then
    echo "set both BENCH_AUDITED and BENCH_UNAUDITED, or neither" >&2
    exit 1
  fi
  if [ -n "${BENCH_AUDITED:-}" ]; then
    cp "$BENCH_UNAUDITED" "$work/agentdesk-without-audit"
    cp "$BENCH_AUDITED" "$work/agentdesk"
  else
    cargo build --release -p agentdesk --features agentdesk/bench-without-audit
    cp target/release/agentdesk "$work/agentdesk-without-audit"
    cargo build --release -p agentdesk
    cp target/release/agentdesk "$work/agentdesk"
  fi
  export AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
  export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
  # psql: no NOTICEs from a schema or database reset.
  export PGOPTIONS="-c client_min_messages=warning"
  write_seed_csv "$work/seed.csv"
  cp bench/post_client.lua "$work/post.lua"
  cp bench/patch_client.lua "$work/patch.lua"
}

# ---- paired ----
# Both builds measured at the same time on PostgreSQL, each on its own half of the machine.
#
# Run one after the other (block), a build's own speed on this shared machine moves by a third
# within minutes, more than the effect measured. Here the two builds run simultaneously, each as a
# whole stack of its own: its own PostgreSQL cluster (initdb in a scratch folder), its server (a
# fresh database with the same 10,000 imported clients) and its wrk, each stack in a CPU cgroup
# of its own, so that whatever slows the host slows both alike at every moment. After each pass
# the stacks swap binaries (fresh databases), so that neither stack's place favours one build.
# Per run it reports each build's req/s and, from the cgroups' CPU accounting, the CPU time its
# whole stack (server, every PostgreSQL process, wrk) spent per request; the summary gives the
# geometric mean of the runs' ratios.
#
# How the machine is split (BENCH_SPLIT):
# - quota (default): each stack may use half of the machine's CPU time (a CFS quota in 10 ms
#   periods) on any CPU: two machines of half the size that share whatever the host does. Both
#   saturate their half, so the ratio of req/s is the ratio of cost per request. Checked with the
#   same binary in both stacks (BENCHMARKS.md): geometric means within 1.5 % by req/s, 0.2 % by
#   CPU per request.
# - shares: equal CPU shares, no cap. The CPU per request is as precise, but the split of the
#   CPU between the stacks is not even when their builds differ (the audited stack got ~15 %
#   less), so its req/s ratio is not the cost.
# - pin: each stack on one CPU of its own, swapped every run. Here one vCPU ran the same stack up
#   to ~30 % slower than the other, so only the mean over an even number of runs means anything.
#
# Needs root (cgroups v1 with the cpu and cpuacct controllers, or v2 with cpu), PostgreSQL's
# server binaries (initdb, pg_ctl; `pg_config --bindir` or /usr/lib/postgresql/*/bin) and its
# user `postgres`, wrk, curl, python3, taskset.
# The same binary as BENCH_AUDITED and BENCH_UNAUDITED is the check of the method (expect ~0 %).
# BENCH_AUTOVACUUM=off runs the clusters without autovacuum (PostgreSQL's default is on).
# BENCH_WRITES="post patch" names the writes measured (default both).
mode_paired() {
  cd "$(dirname "$0")/.."
  duration=${1:-20}
  runs=${2:-3}
  passes=${3:-2}
  writes=${BENCH_WRITES:-post patch}
  autovacuum=${BENCH_AUTOVACUUM:-on}
  split=${BENCH_SPLIT:-quota}
  case "$split" in quota | shares | pin) ;; *) echo "BENCH_SPLIT is quota, shares or pin" >&2; exit 1 ;; esac
  # quota: each stack may use half the machine's CPUs' time, in 10 ms periods, on any CPU.
  quota_period_us=10000
  cpus_each=$(($(nproc) / 2))
  [ "$cpus_each" -ge 1 ] || { echo "the machine needs two CPUs at least" >&2; exit 1; }
  for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "run as root: the stacks are put into CPU cgroups" >&2; exit 1; }

  pg_bin=$(pg_bindir)
  psql=psql
  [ -x "$pg_bin/psql" ] && psql=$pg_bin/psql
  pg_user=postgres
  id "$pg_user" >/dev/null 2>&1 || { echo "PostgreSQL's clusters run as user $pg_user, who does not exist" >&2; exit 1; }

  # The cgroup files: a group's share and quota, its CPU usage counter, where a process joins it.
  cgroup_v1_cpu=/sys/fs/cgroup/cpu
  cgroup_v1_acct=/sys/fs/cgroup/cpuacct
  cgroup_v2=/sys/fs/cgroup
  group_prefix=agentdesk-bench-$$
  if [ -f "$cgroup_v1_cpu/cpu.shares" ] && [ -f "$cgroup_v1_acct/cpuacct.usage" ]; then
    cgroup_mode=v1
  elif grep -qw cpu "$cgroup_v2/cgroup.controllers" 2>/dev/null; then
    cgroup_mode=v2
  else
    echo "no CPU cgroup controller to use (need cgroups v1 cpu+cpuacct or v2 cpu)" >&2
    exit 1
  fi
  make_group() { # name
    if [ "$cgroup_mode" = v1 ]; then
      mkdir -p "$cgroup_v1_cpu/$1" "$cgroup_v1_acct/$1"
      echo 1024 >"$cgroup_v1_cpu/$1/cpu.shares"
      if [ "$split" = quota ]; then
        echo "$quota_period_us" >"$cgroup_v1_cpu/$1/cpu.cfs_period_us"
        echo $((quota_period_us * cpus_each)) >"$cgroup_v1_cpu/$1/cpu.cfs_quota_us"
      fi
    else
      grep -qw cpu "$cgroup_v2/cgroup.subtree_control" || echo +cpu >"$cgroup_v2/cgroup.subtree_control"
      mkdir -p "$cgroup_v2/$1"
      echo 100 >"$cgroup_v2/$1/cpu.weight"
      if [ "$split" = quota ]; then
        echo "$((quota_period_us * cpus_each)) $quota_period_us" >"$cgroup_v2/$1/cpu.max"
      fi
    fi
  }
  # shellcheck disable=SC2317 # run by cleanup, on exit
  remove_group() { # name (waits a few seconds for its processes to end)
    local dirs=("$cgroup_v2/$1") i
    [ "$cgroup_mode" = v1 ] && dirs=("$cgroup_v1_cpu/$1" "$cgroup_v1_acct/$1")
    for i in $(seq 50); do
      [ -z "$(cat "${dirs[0]}/cgroup.procs" 2>/dev/null)" ] && break
      sleep 0.1
    done
    rmdir "${dirs[@]}" 2>/dev/null || true
  }
  join_files() { # name: the files a process writes its pid to, to join the group
    if [ "$cgroup_mode" = v1 ]; then
      echo "$cgroup_v1_cpu/$1/cgroup.procs $cgroup_v1_acct/$1/cgroup.procs"
    else
      echo "$cgroup_v2/$1/cgroup.procs"
    fi
  }
  usage_ns() { # name: the group's CPU time so far, in ns
    if [ "$cgroup_mode" = v1 ]; then
      cat "$cgroup_v1_acct/$1/cpuacct.usage"
    else
      awk '/^usage_usec/ { printf "%.0f\n", $2 * 1000 }' "$cgroup_v2/$1/cpu.stat"
    fi
  }
  # in_group NAME COMMAND...: runs COMMAND inside the group (its children stay in it). Started in
  # the background (`in_group … &`), it replaces the background shell, so that `$!` is COMMAND.
  in_group() {
    local name=$1; shift
    # With the split `pin`, each stack is on one CPU of its own (its processes inherit the affinity).
    if [ "${split}" = pin ]; then
      set -- taskset -c "${cpu_of[${name##*-}]}" "$@"
    fi
    # shellcheck disable=SC2016 # $$ and $@ are the inner shell's
    local join=(bash -c 'for f in '"$(join_files "$name")"'; do echo $$ >"$f"; done; exec "$@"' in_group "$@")
    if [ "$BASHPID" != "$$" ]; then exec "${join[@]}"; fi
    "${join[@]}"
  }

  work=$(mktemp -d)
  chmod 755 "$work"
  declare -gA server_pid
  stacks=(one two)
  declare -gA pg_port=([one]=5441 [two]=5442) http_port=([one]=18591 [two]=18592) cpu_of=([one]=0 [two]=1)
  # shellcheck disable=SC2317 # run by the EXIT trap
  cleanup() {
    local s p
    set +e
    for s in "${server_pid[@]}"; do kill "$s" 2>/dev/null && wait "$s" 2>/dev/null; done
    # Whatever else still runs in a stack (a wrk cut short) goes too; the cluster stops below.
    for s in "${stacks[@]}"; do
      # shellcheck disable=SC2013 # a cgroup.procs file holds one pid a line
      for p in $(cat "$(join_files "$group_prefix-$s" | awk '{print $1}')" 2>/dev/null); do
        [ "$(ps -o comm= -p "$p" 2>/dev/null)" = postgres ] || kill "$p" 2>/dev/null
      done
    done
    for s in "${stacks[@]}"; do
      if [ -f "$work/pg-$s/postmaster.pid" ]; then
        runuser -u "$pg_user" -- "$pg_bin/pg_ctl" -D "$work/pg-$s" -m immediate -w stop >/dev/null 2>&1
      fi
      remove_group "$group_prefix-$s"
    done
    rm -rf "$work"
  }
  trap cleanup EXIT

  audit_bench_setup "$work"
  declare -gA bin_of=([audited]="$work/agentdesk" [unaudited]="$work/agentdesk-without-audit")

  # One PostgreSQL cluster per stack, inside the stack's group (its backends, WAL writer and
  # autovacuum workers are the postmaster's children and stay there).
  for s in "${stacks[@]}"; do
    make_group "$group_prefix-$s"
    mkdir -p "$work/pg-$s" && chown "$pg_user" "$work/pg-$s"
    runuser -u "$pg_user" -- "$pg_bin/initdb" -D "$work/pg-$s" -U postgres --auth=trust -E UTF8 \
      --locale=C.UTF-8 >/dev/null
    in_group "$group_prefix-$s" runuser -u "$pg_user" -- "$pg_bin/pg_ctl" -D "$work/pg-$s" -l "$work/pg-$s/server.log" -w \
      -o "-p ${pg_port[$s]} -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pg-$s -c autovacuum=$autovacuum -c fsync=on" \
      start >/dev/null
  done

  # start STACK VARIANT: the variant's server in the stack's group, on a fresh database of the
  # stack's cluster, with the seed clients.
  start() {
    local stack=$1 variant=$2 base url token
    url="postgres://postgres@127.0.0.1:${pg_port[$stack]}"
    "$psql" -q "$url/postgres" -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench" >/dev/null
    base="http://127.0.0.1:${http_port[$stack]}"
    rm -rf "${work:?}/data-$stack" && mkdir -p "$work/data-$stack"
    in_group "$group_prefix-$stack" env AGENTDESK_DATA_DIR="$work/data-$stack" \
      AGENTDESK_BIND="127.0.0.1:${http_port[$stack]}" AGENTDESK_DATABASE_URL="$url/bench" "${bin_of[$variant]}" serve \
      >"$work/server-$stack.log" 2>&1 &
    server_pid[$stack]=$!
    until curl -fs "$base/readyz" >/dev/null 2>&1; do
      kill -0 "${server_pid[$stack]}" 2>/dev/null || { cat "$work/server-$stack.log" >&2; exit 1; }
      sleep 0.05
    done
    token=$(bench_login "$base")
    echo "$token" >"$work/token-$stack"
    import_seed "$base" "$token" "$work/seed.csv" "$work/ids-$stack"
  }
  stop() { # stack
    if kill "${server_pid[$1]}"; then wait "${server_pid[$1]}" 2>/dev/null || true; fi
    unset "server_pid[$1]"
  }

  # pin_stacks: with the split `pin`, puts every thread of each stack on one CPU of its own, the two
  # swapping CPUs at every call (so that consecutive runs cancel a difference between the CPUs,
  # such as one that takes the machine's interrupts); processes started later inherit it.
  pins=0
  pin_stacks() {
    [ "${split}" = pin ] || return 0
    local s p
    cpu_of[one]=$((pins % 2)) cpu_of[two]=$(((pins + 1) % 2))
    pins=$((pins + 1))
    for s in "${stacks[@]}"; do
      # shellcheck disable=SC2013 # a cgroup.procs file holds one pid a line
      for p in $(cat "$(join_files "$group_prefix-$s" | awk '{print $1}')"); do
        taskset -a -p -c "${cpu_of[$s]}" "$p" >/dev/null 2>&1 || true
      done
    done
  }

  # load KIND: wrk in both stacks at once; writes per stack "req/s requests cpu_ns" to
  # $work/load.out, stack one first. Fails on a wrk that failed or any non-2xx answer.
  load() {
    local kind=$1 s p
    declare -A before wrk_pid
    for s in "${stacks[@]}"; do before[$s]=$(usage_ns "$group_prefix-$s"); done
    for s in "${stacks[@]}"; do
      in_group "$group_prefix-$s" env BENCH_IDS="$work/ids-$s" BENCH_RUN="$s-$(date +%s%N)" \
        wrk -t2 -c16 -d"${duration}s" -s "$work/$kind.lua" -H "Authorization: Bearer $(cat "$work/token-$s")" \
        "http://127.0.0.1:${http_port[$s]}/api/v1/clients" >"$work/wrk-$s.out" &
      wrk_pid[$s]=$!
    done
    for s in "${stacks[@]}"; do
      wait "${wrk_pid[$s]}" || { cat "$work/wrk-$s.out" >&2; echo "wrk failed in stack $s" >&2; exit 1; }
    done
    : >"$work/load.out"
    for s in "${stacks[@]}"; do
      if grep -q 'Non-2xx' "$work/wrk-$s.out"; then
        cat "$work/wrk-$s.out" >&2
        echo "non-2xx answers in stack $s: the run does not count" >&2
        exit 1
      fi
      echo "$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$s.out") $(awk '/requests in/ {print $1}' "$work/wrk-$s.out") $(($(usage_ns "$group_prefix-$s") - ${before[$s]}))" >>"$work/load.out"
    done
  }

  echo "commit $(git rev-parse --short HEAD), $(nproc) cores, cgroups $cgroup_mode, split $split, PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') (autovacuum $autovacuum), wrk -t2 -c16 -d${duration}s per stack, $passes passes × $runs measured runs of each write"
  echo
  echo "Each run: req/s (CPU µs of the whole stack per request). Audit adds: without/with − 1, by req/s and by CPU per request."
  echo
  echo "| pass | write | run | with audit | without audit | audit adds (req/s) | audit adds (CPU/request) | steal |"
  echo "|---|---|---|---|---|---|---|---|"
  declare -gA ratios_rate ratios_cpu
  for pass in $(seq "$passes"); do
    # Pass 1: stack one runs the audited build; each later pass swaps.
    if [ $((pass % 2)) = 1 ]; then declare -gA variant_of=([one]=audited [two]=unaudited)
    else declare -gA variant_of=([one]=unaudited [two]=audited); fi
    for s in "${stacks[@]}"; do start "$s" "${variant_of[$s]}"; done
    for kind in $writes; do
      pin_stacks
      load "$kind" # the first run after a start is not steady
      for run in $(seq "$runs"); do
        pin_stacks
        read -r steal0 total0 < <(cpu_ticks)
        load "$kind"
        mapfile -t lines <"$work/load.out"
        read -r steal1 total1 < <(cpu_ticks)
        declare -gA rate=() cpu=() on=()
        for i in 0 1; do
          s=${stacks[$i]}
          read -r r n ns <<<"${lines[$i]}"
          rate[${variant_of[$s]}]=$r
          cpu[${variant_of[$s]}]=$(awk -v ns="$ns" -v n="$n" 'BEGIN { printf "%.0f", ns / 1000 / n }')
          on[${variant_of[$s]}]=${cpu_of[$s]}
        done
        where=""
        [ "${split}" = pin ] && where=" on CPU ${on[audited]}"
        by_rate=$(awk -v u="${rate[unaudited]}" -v a="${rate[audited]}" 'BEGIN { print u / a - 1 }')
        by_cpu=$(awk -v u="${cpu[unaudited]}" -v a="${cpu[audited]}" 'BEGIN { print a / u - 1 }')
        ratios_rate[$kind]="${ratios_rate[$kind]:-} $by_rate"
        ratios_cpu[$kind]="${ratios_cpu[$kind]:-} $by_cpu"
        steal=$(steal_percent "$steal0" "$total0" "$steal1" "$total1")
        printf '| %s | %s | %s | %s (%s µs)%s | %s (%s µs) | %+.1f %% | %+.1f %% | %s %% |\n' "$pass" "$(write_label "$kind")" "$run" \
          "${rate[audited]}" "${cpu[audited]}" "$where" "${rate[unaudited]}" "${cpu[unaudited]}" \
          "$(awk -v r="$by_rate" 'BEGIN { print r * 100 }')" "$(awk -v r="$by_cpu" 'BEGIN { print r * 100 }')" "$steal"
      done
    done
    for s in "${stacks[@]}"; do stop "$s"; done
  done

  # The geometric mean of the runs' ratios, and the lowest and highest run.
  summary() { tr ' ' '\n' | grep -v '^$' | awk '{ s += log($1 + 1); if (NR == 1 || $1 < lo) lo = $1; if (NR == 1 || $1 > hi) hi = $1 }
    END { printf "%+.1f %% (runs %+.1f … %+.1f %%)", (exp(s / NR) - 1) * 100, lo * 100, hi * 100 }'; }
  echo
  echo "| write | audit adds, by req/s (geometric mean) | audit adds, by CPU per request (geometric mean) |"
  echo "|---|---|---|"
  for kind in $writes; do
    echo "| $(write_label "$kind") | $(echo "${ratios_rate[$kind]}" | summary) | $(echo "${ratios_cpu[$kind]}" | summary) |"
  done
}

# ---- block ----
# One server at a time, in blocks in the order with, without, without, with (BENCH_BLOCKS times,
# default 3), each block a fresh server and database (SQLite: its own data directory;
# PostgreSQL: the database given, and a second one beside it named with `_without_audit`, each
# made on first use) holding the same 10,000 imported clients; in each block one unmeasured run of
# each write, then `runs-per-block` measured runs of each back to back. Two servers side by side
# were not steady (a round's second run was up to ~20 % slower whichever binary it was); alone,
# a server's runs after its first one are, and the order of the blocks cancels a drift that is
# linear over the run. The summary gives the means and each cycle of four blocks. With
# PostgreSQL it also shows, per request, the server's and PostgreSQL's CPU time and the WAL.
# Needs wrk.
mode_block() {
  cd "$(dirname "$0")/.."
  duration=${1:-8}
  rounds=${2:-3}
  db=${3:-}
  blocks=${BENCH_BLOCKS:-3}
  port=${BENCH_PORT:-18582}
  command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

  work=$(mktemp -d)
  declare -gA pid_of port_of token_of db_of
  # shellcheck disable=SC2317 # run by the EXIT trap
  cleanup() {
    local p
    for p in "${pid_of[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    rm -rf "$work"
  }
  trap cleanup EXIT
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
    if [ -n "$db" ]; then database=("AGENTDESK_DATABASE_URL=${db_of[$variant]}"); fi
    env AGENTDESK_DATA_DIR="$work/$variant" AGENTDESK_BIND="127.0.0.1:$variant_port" "${database[@]}" \
      "$bin" serve >"$work/$variant.log" 2>&1 &
    pid_of[$variant]=$!
    port_of[$variant]=$variant_port
    until curl -fs "$base/readyz" >/dev/null 2>&1; do sleep 0.01; done
    token=$(bench_login "$base")
    token_of[$variant]=$token
    import_seed "$base" "$token" "$work/seed.csv" "$work/$variant.ids"
  }

  # CPU time (clock ticks) of a process.
  ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
  wal_lsn() { psql -Atq "$db" -c 'SELECT pg_current_wal_lsn()'; }

  # Prints req/s of one wrk run against a variant and fails on any non-2xx answer. With PostgreSQL
  # it also prints, per request, the server's and PostgreSQL's CPU time (µs) and the WAL (bytes).
  load() {
    local variant=$1 script=$2 out s0 p0 w0 rate steal0 total0 steal1 total1 steal
    read -r steal0 total0 < <(cpu_ticks)
    if [ -n "$db" ]; then s0=$(ticks "${pid_of[$variant]}"); p0=$(postgres_ticks); w0=$(wal_lsn); fi
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
      s1=$(ticks "${pid_of[$variant]}"); p1=$(postgres_ticks)
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
  # The cost audit adds per request, from req/s without and with it: (1/with - 1/without) / (1/without).
  adds() { awk -v u="$1" -v a="$2" 'BEGIN { printf "%+.1f %%", (u / a - 1) * 100 }'; }
  setup="commit $(git rev-parse --short HEAD), $(nproc) cores, database: ${db:-sqlite}, wrk -t2 -c16 -d${duration}s"

  declare -gA bin_of=([audited]="$work/agentdesk" [unaudited]="$work/agentdesk-without-audit")
  declare -gA runs_of cycle_of
  echo "$setup, $blocks × (with, without, without, with), $rounds measured runs of each write per block"
  echo
  if [ -n "$db" ]; then
    echo "Each run: req/s (server CPU µs / PostgreSQL CPU µs / WAL bytes, per request / CPU steal)." && echo
  else
    echo "Each run: req/s (CPU steal: the share of the machine's CPU time the hypervisor gave to others)." && echo
  fi
  echo "| block | binary | POST /clients req/s | PATCH /clients/{id} req/s |"
  echo "|---|---|---|---|"
  block=0
  for cycle in $(seq "$blocks"); do
    for variant in audited unaudited unaudited audited; do
      block=$((block + 1))
      rm -rf "${work:?}/$variant"
      start "$variant" "${bin_of[$variant]}" "$port"
      declare -gA line=()
      for kind in post patch; do
        load "$variant" "$work/$kind.lua" >/dev/null # the first run after a start is not steady
        for _ in $(seq "$rounds"); do
          read -r r d < <(load "$variant" "$work/$kind.lua")
          [ -n "$r" ] || exit 1
          line[$kind]="${line[$kind]:-} $r${d:+ ($d)}"
          runs_of[$variant,$kind]="${runs_of[$variant,$kind]:-} $r"
          cycle_of[$cycle,$variant,$kind]="${cycle_of[$cycle,$variant,$kind]:-} $r"
        done
      done
      echo "| $block | $variant |${line[post]} |${line[patch]} |"
      if kill "${pid_of[$variant]}"; then wait "${pid_of[$variant]}" 2>/dev/null || true; fi
      unset "pid_of[$variant]"
    done
  done
  echo
  echo "| write | without audit (mean req/s) | with audit (mean req/s) | audit adds (means) | audit adds, each cycle of four blocks |"
  echo "|---|---|---|---|---|"
  for kind in post patch; do
    without=$(echo "${runs_of[unaudited,$kind]}" | mean)
    with=$(echo "${runs_of[audited,$kind]}" | mean)
    each=
    for cycle in $(seq "$blocks"); do
      each="$each $(adds "$(echo "${cycle_of[$cycle,unaudited,$kind]}" | mean)" "$(echo "${cycle_of[$cycle,audited,$kind]}" | mean)"),"
    done
    echo "| $(write_label "$kind") | $without | $with | $(adds "$without" "$with") |${each%,} |"
  done
}

# ---- wal ----
# Where a client write's cost goes on PostgreSQL: for each binary given, `POST /api/v1/clients`
# (or with `-w patch`, `PATCH /api/v1/clients/{id}` over 200 of 10,000 imported clients, the
# PATCH load of the modes above) under wrk on a fresh schema, then per request the server's and
# PostgreSQL's CPU time and the WAL written, and the WAL's records by type (pg_waldump; bytes are
# each type's combined size, full-page images included). Compare binaries built from two commits,
# or one with and one without the `bench-without-audit` feature; they take turns, `rounds` times.
# Needs a local PostgreSQL whose WAL directory this user can read (pg_waldump), and wrk.
mode_wal() {
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
  [ $# -gt 0 ] || { echo "usage: $0 wal [-s seconds] [-r rounds] [-d database-url] [-w post|patch] BINARY..." >&2; exit 2; }
  case $write in post | patch) ;; *) echo "-w takes post or patch" >&2; exit 2 ;; esac
  port=${BENCH_PORT:-18590}
  # shellcheck disable=SC2012 # the folders' names are PostgreSQL's versions
  pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_waldump | sort -V | tail -n 1)")
  wal_dir=$(psql -Atq "$db" -c 'SHOW data_directory')/pg_wal
  hz=$(getconf CLK_TCK)
  # The server's settings, a scratch folder $work, and a trap that stops the server and removes
  # $work on exit.
  export AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
  export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
  work=$(mktemp -d)
  pid=
  trap '[ -n "$pid" ] && kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
  export PGOPTIONS="-c client_min_messages=warning"
  export AGENTDESK_DATABASE_URL=$db
  cp "$(dirname "$0")/${write}_client.lua" "$work/load.lua"
  if [ "$write" = patch ]; then write_seed_csv "$work/seed.csv"; fi

  # start_fresh BINARY DATA_DIR PORT: serves BINARY on an empty DATA_DIR (log beside it), waits
  # until it is ready and logs in as the admin; sets $pid and $token.
  start_fresh() {
    local bin=$1 data=$2 port=$3
    rm -rf "$data" && mkdir -p "$data"
    AGENTDESK_DATA_DIR=$data "$bin" serve >"$data.log" 2>&1 &
    pid=$!
    until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
    token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
      -d "{\"email\":\"$AGENTDESK_ADMIN_EMAIL\",\"password\":\"$AGENTDESK_ADMIN_PASSWORD\"}" \
      | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  }
  # stop_server: stops the server start_fresh started.
  stop_server() {
    if kill "$pid"; then wait "$pid" 2>/dev/null || true; fi
    pid=
  }
  server_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }

  measure() {
    local bin=$1 out w0 w1 s0 s1 p0 p1 n
    psql -q "$db" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public'
    start_fresh "$bin" "$work/data" "$port"
    if [ "$write" = patch ]; then import_seed "http://127.0.0.1:$port" "$token" "$work/seed.csv" "$work/ids"; fi
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
}

# ---- callgrind ----
# Instructions per client write under callgrind: where a build's work goes, counted, not timed
# (callgrind counts the same for the same binary and load whatever else the machine does).
#
#   callgrind server BINARY [post|patch] [seconds]
#     The server under callgrind on a fresh database of the local PostgreSQL (which runs
#     natively), 10,000 seed clients, an unmeasured warm-up, then wrk (-t1 -c4) for `seconds`
#     with instrumentation on. Prints the server's instructions per request; the profile stays in
#     OUT (callgrind_annotate OUT/callgrind.out).
#   callgrind postgres BINARY [post|patch] [short] [long]
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
mode_callgrind() {
  shopt -s inherit_errexit # a failure inside $(…) fails the script too
  cd "$(dirname "$0")/.."
  mode=${1:?server or postgres}
  bin=$(realpath "${2:?the binary}")
  kind=${3:-patch}
  out=${BENCH_OUT:-/tmp/agentdesk-callgrind-$mode-$kind}
  for tool in valgrind callgrind_annotate wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
  done
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
    if grep -q 'Non-2xx' "$5"; then cat "$5" >&2; echo "non-2xx answers" >&2; exit 1; fi
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
    if kill $server; then wait $server 2>/dev/null || true; fi
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
  cluster_port=${BENCH_PG_PORT:-5450}
  if "$pg_bin/pg_isready" -h 127.0.0.1 -p "$cluster_port" -q; then
    echo "port $cluster_port is taken (BENCH_PG_PORT names another)" >&2
    exit 1
  fi
  chmod 777 "$out"
  server='' cluster=''
  stop_all() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    [ -n "$cluster" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$cluster" -m fast -w stop >/dev/null 2>&1
    server='' cluster=''
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
    # shellcheck disable=SC2016 # $1, $2 and $3 are the inner shell's
    runuser -u postgres -- bash -c 'nohup valgrind --tool=callgrind --vgdb=no --trace-children=yes \
      --callgrind-out-file="$1/callgrind/cg.%p" "$2/postgres" -D "$1/pg" -p "$3" \
      -c listen_addresses=127.0.0.1 -c unix_socket_directories="$1/pg" >"$1/pg.log" 2>&1 &' \
      cluster "$w" "$pg_bin" "$cluster_port"
    cluster=$w/pg
    local tries=0
    until "$pg_bin/pg_isready" -h 127.0.0.1 -p "$cluster_port" -q; do
      tries=$((tries + 1))
      [ $tries -lt 120 ] || { cat "$w/pg.log" >&2; echo "the cluster did not start" >&2; exit 1; }
      sleep 1
    done
    psql -q "postgres://postgres@127.0.0.1:$cluster_port/postgres" -c "CREATE DATABASE bench" >/dev/null
    write_seed_csv "$w/seed.csv"
    head -n 1001 "$w/seed.csv" >"$w/seed-1000.csv"
    AGENTDESK_DATA_DIR=$w/data AGENTDESK_BIND=127.0.0.1:$port \
      AGENTDESK_DATABASE_URL=postgres://postgres@127.0.0.1:$cluster_port/bench "$bin" serve >"$w/server.log" 2>&1 &
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
}

# ---- export ----
# Exports a large audit log over HTTP and samples the server's memory while it streams, to show
# that an export's memory does not grow with the number of events (default: 1,000,000 events,
# SQLite; a database URL for PostgreSQL). Builds the release binary.
#
# The log is seeded straight into the database after `agentdesk migrate` (events shaped like the
# server's own client updates; their hashes are placeholders that still satisfy the chain
# trigger, so `verify` would flag them, but an export does not check the chain). Then the release
# binary serves, and `GET /api/v1/audit/export` runs as CSV and as JSON Lines over the whole log
# and over a 1 % slice (one client's events), with the server's resident memory (VmRSS) sampled
# every 50 ms. A log whose export fits in constant memory peaks at about the same RSS for both.
mode_export() {
  cd "$(dirname "$0")/.."
  events=${1:-1000000}
  db=${2:-}
  port=${BENCH_PORT:-18583}
  command -v sqlite3 >/dev/null || [ -n "$db" ] || { echo "sqlite3 is missing: apt-get install sqlite3" >&2; exit 1; }

  work=$(mktemp -d)
  pid=
  trap '[ -n "$pid" ] && kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
  cargo build --release -p agentdesk
  bin=target/release/agentdesk
  export AGENTDESK_DATA_DIR=$work/data AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
  export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
  export PGOPTIONS="-c client_min_messages=warning"
  mkdir -p "$work/data"
  if [ -n "$db" ]; then
    psql -q "$db" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public'
    export AGENTDESK_DATABASE_URL=$db
  fi
  "$bin" migrate >/dev/null

  # 100 clients; event n belongs to client n % 100. The placeholder hash of event n is n written
  # in 64 digits, so event 1's previous hash is the genesis hash (64 zeros) and each event
  # continues the one before, as the chain trigger demands.
  seed_start=$(date +%s%N)
  if [ -n "$db" ]; then
    psql -q "$db" <<SQL
INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id,
                          client_id, outcome, ip, user_agent, request_id, changes, prev_hash, hash)
SELECT gen_random_uuid(), n, now() - make_interval(secs => $events - n),
       '00000000-0000-7000-8000-000000000001', 'seed@example.com', 'client.update', 'client',
       c::text, c, 'success', '127.0.0.1', 'bench/1.0', 'req-' || n,
       jsonb_build_object('before', jsonb_build_object('notes', 'note ' || (n - 1)),
                          'after', jsonb_build_object('notes', 'note ' || n)),
       lpad((n - 1)::text, 64, '0'), lpad(n::text, 64, '0')
FROM generate_series(1, $events) AS n,
     LATERAL (SELECT ('00000000-0000-7000-8000-' || lpad((n % 100)::text, 12, '0'))::uuid AS c) AS client;
SQL
    slice_client=00000000-0000-7000-8000-000000000042
  else
    # UUIDs are 16-byte blobs on SQLite: the 100 clients' ids as literals in a scratch table.
    for c in $(seq 0 99); do
      printf "INSERT INTO bench_clients VALUES (%d, X'000000000000700080000000%08d', '00000000-0000-7000-8000-%012d');\n" "$c" "$c" "$c"
    done >"$work/clients.sql"
    sqlite3 "$work/data/agentdesk.db" <<SQL
CREATE TEMP TABLE bench_clients (k INTEGER PRIMARY KEY, id BLOB, txt TEXT);
.read $work/clients.sql
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $events)
INSERT INTO audit_events (id, seq, at, actor_id, actor_email, action, resource_type, resource_id,
                          client_id, outcome, ip, user_agent, request_id, changes, prev_hash, hash)
SELECT randomblob(16), n, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || ($events - n) || ' seconds'),
       X'00000000000070008000000000000001', 'seed@example.com', 'client.update', 'client',
       c.txt, c.id, 'success', '127.0.0.1', 'bench/1.0', 'req-' || n,
       json_object('before', json_object('notes', 'note ' || (n - 1)), 'after', json_object('notes', 'note ' || n)),
       printf('%064d', n - 1), printf('%064d', n)
FROM seq JOIN bench_clients AS c ON c.k = n % 100;
SQL
    slice_client=00000000-0000-7000-8000-000000000042
  fi
  seed_secs=$(( ($(date +%s%N) - seed_start) / 1000000000 ))

  rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
  # Each export gets a freshly started server, so that one's peak does not hide the next one's.
  serve() {
    "$bin" serve >"$work/serve.log" 2>&1 &
    pid=$!
    until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
    token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
      -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
    sleep 3 # the login's password-hashing area is released after 2 idle seconds
    idle=$(rss)
  }
  stop() { if kill "$pid"; then wait "$pid" 2>/dev/null || true; fi; pid=; }

  # One export: prints events, MB, seconds and the peak RSS (MB) sampled while it ran.
  export_once() {
    local query=$1 out=$work/export start secs peak=0 sampler
    serve
    (while :; do rss; sleep 0.05; done) >"$work/rss" &
    sampler=$!
    start=$(date +%s%N)
    curl -fsS -o "$out" "http://127.0.0.1:$port/api/v1/audit/export?$query" -H "Authorization: Bearer $token"
    secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { print (b - a) / 1e9 }')
    kill $sampler; wait $sampler 2>/dev/null || true
    peak=$(sort -n "$work/rss" | tail -n 1)
    local lines bytes
    lines=$(wc -l <"$out"); bytes=$(stat -c %s "$out")
    case $query in format=csv*) lines=$((lines - 1)) ;; esac
    rm -f "$out"
    stop
    awk -v l="$lines" -v b="$bytes" -v s="$secs" -v p="$peak" -v i="$idle" -v q="$query" \
      'BEGIN { printf "| `%s` | %d | %.0f MB | %.1f s | %.0f | %.1f MB | %+.1f MB |\n", q, l, b / 1e6, s, l / s, p / 1024, (p - i) / 1024 }'
  }

  echo "commit $(git rev-parse --short HEAD), $(nproc) cores, database: ${db:-sqlite}, $events events seeded in $seed_secs s"
  echo
  echo "| export | events | size | time | events/s | server's peak RSS | over its idle RSS |"
  echo "|---|---|---|---|---|---|---|"
  export_once "format=csv&client_id=$slice_client"
  export_once "format=csv"
  export_once "format=jsonl&client_id=$slice_client"
  export_once "format=jsonl"
}

bench_mode=${1:-}
case "$bench_mode" in
  paired | block | wal | callgrind | export) shift; "mode_$bench_mode" "$@" ;;
  *) usage ;;
esac

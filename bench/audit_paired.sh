#!/usr/bin/env bash
# What the audit log adds to a client write on PostgreSQL, as req/s with and without it, both
# measured at the same time, each on its own half of the machine.
#
# bench/audit.sh runs the two builds one after the other; on this shared machine the host's speed
# moves by a third within minutes (BENCHMARKS.md), more than the effect measured. Here the two
# builds run simultaneously, each as a whole stack of its own: its own PostgreSQL cluster
# (initdb in a scratch folder), its server (a fresh database with the same 10,000 imported
# clients) and its wrk, each stack in a CPU cgroup of its own, so that whatever slows the host
# slows both alike at every moment. After each pass the stacks swap binaries (fresh databases),
# so that neither stack's place favours one build. Per run it reports each build's req/s and,
# from the cgroups' CPU accounting, the CPU time its whole stack (server, every PostgreSQL
# process, wrk) spent per request; the summary gives the geometric mean of the runs' ratios.
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
# Usage: BENCH_AUDITED=bin BENCH_UNAUDITED=bin bash bench/audit_paired.sh [seconds-per-run] [runs-per-pass] [passes]
#   The binaries: `cargo build --release -p agentdesk` and the same with
#   `--features agentdesk/bench-without-audit`, each copied aside; without the variables the
#   script builds both. The same binary for both is the check of the method (expect ~0 %).
#   BENCH_AUTOVACUUM=off runs the clusters without autovacuum (PostgreSQL's default is on).
#   BENCH_WRITES="post patch" names the writes measured (default both).
set -euo pipefail
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

. bench/seed.sh
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
  local join=(bash -c 'for f in '"$(join_files "$name")"'; do echo $$ >"$f"; done; exec "$@"' in_group "$@")
  if [ "$BASHPID" != "$$" ]; then exec "${join[@]}"; fi
  "${join[@]}"
}

work=$(mktemp -d)
chmod 755 "$work"
declare -A server_pid
stacks=(one two)
declare -A pg_port=([one]=5441 [two]=5442) http_port=([one]=18591 [two]=18592) cpu_of=([one]=0 [two]=1)
cleanup() {
  local s p
  set +e
  for s in "${server_pid[@]}"; do kill "$s" 2>/dev/null && wait "$s" 2>/dev/null; done
  # Whatever else still runs in a stack (a wrk cut short) goes too; the cluster stops below.
  for s in "${stacks[@]}"; do
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
declare -A bin_of=([audited]="$work/agentdesk" [unaudited]="$work/agentdesk-without-audit")

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
  kill "${server_pid[$1]}" && wait "${server_pid[$1]}" 2>/dev/null || true
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
declare -A ratios_rate ratios_cpu
for pass in $(seq "$passes"); do
  # Pass 1: stack one runs the audited build; each later pass swaps.
  if [ $((pass % 2)) = 1 ]; then declare -A variant_of=([one]=audited [two]=unaudited)
  else declare -A variant_of=([one]=unaudited [two]=audited); fi
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
      declare -A rate=() cpu=() on=()
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

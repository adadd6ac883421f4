#!/usr/bin/env bash
# Blue/green upgrade under load: Caddy (the rendered deploy/caddy configuration) in front of a
# client's two slots on loopback, a bounded wrk load through it, and deploy/upgrade --plain to a
# build that adds a migration; zero failed requests and zero connection errors, asserted.
#
#   deploy/test-upgrade.sh
#
#   AGENTDESK_BIN                the old release (default target/debug/agentdesk)
#   AGENTDESK_NEXT_BIN           the new release, a build with the cargo feature
#                                agentdesk/upgrade-probe (one more migration, m9000_upgrade_probe).
#                                Unset: built here with `cargo build --workspace --features
#                                agentdesk/ocr,agentdesk/upgrade-probe --bin agentdesk`, copied to
#                                target/agentdesk-next, and target/debug/agentdesk restored with
#                                `cargo build --workspace --features agentdesk/ocr --bin agentdesk`
#                                (the test suite's features, so that only the binary compiles once
#                                and the restore finds the test suite's binary up to date).
#   AGENTDESK_TEST_POSTGRES_URL  postgres://USER@HOST:PORT (a role that may create databases): the
#                                test runs on SQLite, then again on PostgreSQL in a new database
#                                (dropped at the end).
#   AGENTDESK_DEPLOY_VENV        the venv with ansible-core (default /tmp/agentdesk-deploy-venv,
#                                shared with deploy/test.sh)
#   AGENTDESK_DEPLOY_KEEP=1      keep the temporary folder (it is kept anyway when a check fails)
#
# For each database: the playbook (deploy/ansible/site.yml) renders the client into a temporary
# root without systemd, the old release's blue slot starts from its env file (migrate, serve) with
# Caddy in front; wrk (2 threads, 12 connections) sends deploy/testing/upgrade-load.lua's mix of
# authenticated reads (GET /api/v1/clients) and writes (POST /api/v1/clients, each a unique name)
# through Caddy; after 5 s deploy/upgrade --plain (with its backup) switches the client to the new
# release in green; 5 s after it returns wrk stops (SIGINT). Then: the upgrade exited 0; every
# response was 200 or 201 and wrk counted no connect, read, write or timeout error; /version
# through Caddy says schema_version and database_schema_version m9000_upgrade_probe; the old slot
# exited 0; every acknowledged write is in the database, and none twice; the upgrade_probe table
# exists. One summary line per database at the end (requests, req/s, latency, writes, upgrade time).
#
# etc is read and env_args filled by the functions loaded from deploy/upgrade.
# shellcheck disable=SC2034,SC2154 source-path=SCRIPTDIR
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
# shellcheck source=testing/lib.sh
. "$deploy/testing/lib.sh"

venv=${AGENTDESK_DEPLOY_VENV:-/tmp/agentdesk-deploy-venv}
pg_url=${AGENTDESK_TEST_POSTGRES_URL:-}
load_threads=2
load_connections=12
load_settle=5     # seconds of load before the upgrade starts and after it returns
load_max=240      # wrk's own bound, should the upgrade hang
admin_email=admin@upgrade.test
admin_password=upgrade-admin-password-1234
probe=m9000_upgrade_probe

need_tools curl jq caddy wrk sqlite3 python3 flock setsid sha256sum
if [ -n "$pg_url" ]; then
  need_tools psql pg_dump
  [[ $pg_url =~ ^(postgres(ql)?://[^/?]+)(/[^?]*)?(\?.*)?$ ]] \
    || die "AGENTDESK_TEST_POSTGRES_URL is not postgres://USER@HOST:PORT[/DB][?PARAMS]: $pg_url"
  pg_server=${BASH_REMATCH[1]}
  pg_params=${BASH_REMATCH[4]}
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/agentdesk-upgrade-test.XXXXXX")
root=$work/root
etc=$root/etc/agentdesk
slots=$root/opt/agentdesk/slots
run_dir=$root/run/agentdesk
export XDG_DATA_HOME=$work/xdg XDG_CONFIG_HOME=$work/xdg PYTHONWARNINGS=ignore

children=()
caddy_pid=
wrk_pid=
pg_db=
cleanup() {
  local rc=$?
  stop_processes "$wrk_pid" "${children[@]}" "$caddy_pid" "$run_dir"/*.pid
  if [ -n "$pg_db" ]; then
    psql "$pg_server/postgres$pg_params" -qXc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 \
      || echo "test-upgrade.sh: could not drop the database $pg_db"
  fi
  if [ "${AGENTDESK_DEPLOY_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    rm -rf "$root/opt/agentdesk/releases" "$work/agentdesk" "$work/agentdesk-next"
    echo "test-upgrade.sh: kept $work (without the release binaries)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_env_functions

# --- the two releases -------------------------------------------------------------------------------
old_bin=${AGENTDESK_BIN:-$repo/target/debug/agentdesk}
next_bin=${AGENTDESK_NEXT_BIN:-}
if [ -z "$next_bin" ]; then
  section "build the next release (agentdesk/upgrade-probe), then the normal binary again"
  (cd "$repo" && cargo build --workspace --features agentdesk/ocr,agentdesk/upgrade-probe --bin agentdesk) >"$work/build-next.log" 2>&1 \
    || { tail -n 30 "$work/build-next.log"; die "the build with agentdesk/upgrade-probe failed"; }
  cp "$repo/target/debug/agentdesk" "$repo/target/agentdesk-next"
  (cd "$repo" && cargo build --workspace --features agentdesk/ocr --bin agentdesk) >"$work/build-restore.log" 2>&1 \
    || { tail -n 30 "$work/build-restore.log"; die "the build that restores target/debug/agentdesk failed"; }
  next_bin=$repo/target/agentdesk-next
  if grep -q "$probe" "$repo/target/debug/agentdesk"; then
    die "target/debug/agentdesk still has $probe after the second build: it was not restored"
  fi
  echo "built $next_bin; restored $repo/target/debug/agentdesk (crates compiled again: $(grep -c '^ *Compiling' "$work/build-restore.log" || true))"
fi
[ -x "$old_bin" ] || die "no agentdesk binary at $old_bin (cargo build, or set AGENTDESK_BIN)"
[ -x "$next_bin" ] || die "no agentdesk binary at $next_bin (AGENTDESK_NEXT_BIN)"
# Cheap checks first (the /version checks below are the real ones).
grep -q "$probe" "$next_bin" || die "$next_bin has no migration $probe: build it with --features agentdesk/upgrade-probe"
if grep -q "$probe" "$old_bin"; then
  die "$old_bin has the migration $probe already: it must be a build without agentdesk/upgrade-probe (cargo test --workspace --features agentdesk/ocr --no-run restores it)"
fi
copy_binary "$old_bin" "$work/agentdesk"
copy_binary "$next_bin" "$work/agentdesk-next"
echo "old: $("$work/agentdesk" --version) ($(realpath "$old_bin"))"
echo "new: $("$work/agentdesk-next" --version) ($(realpath "$next_bin"))"

# --- render the clients -----------------------------------------------------------------------------
section "ansible: render the clients into $root (venv $venv)"
ensure_venv "$venv"
base=$(free_port_base 30) || die "found no free range of ports"
caddy_port=$((base + 1))
backends=(sqlite)
declare -A port=([sqlite]=$((base + 10)) [postgres]=$((base + 20)))
declare -A database=([sqlite]=sqlite)
if [ -n "$pg_url" ]; then
  pg_db=agentdesk_upgrade_test_$$_$RANDOM
  psql "$pg_server/postgres$pg_params" -qXv ON_ERROR_STOP=1 -c "CREATE DATABASE $pg_db" >/dev/null \
    || { pg_db=; die "cannot create a database with $pg_server"; }
  database[postgres]=$pg_server/$pg_db$pg_params
  backends+=(postgres)
fi
{
  cat <<EOF
agentdesk:
  vars:
    ansible_connection: local
    ansible_python_interpreter: $venv/bin/python
    agentdesk_become: false
    agentdesk_root: $root
    agentdesk_manage_services: false
    agentdesk_caddy_http_only: true
    agentdesk_caddy_http_port: $caddy_port
    agentdesk_caddy_admin: "off"
    agentdesk_prometheus_targets_path: $work/prometheus-targets.json
  hosts:
    testhost:
      agentdesk_clients:
EOF
  for b in "${backends[@]}"; do
    cat <<EOF
        - name: upg_$b
          domain: $b.test
          port: ${port[$b]}
          version: "0.1.0"
          binary: $work/agentdesk
          admin_email: $admin_email
          database: "${database[$b]}"
          secrets:
            admin_password: $admin_password
EOF
  done
} >"$work/inventory.yml"
export ANSIBLE_CONFIG=$deploy/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP=$work/ansible-tmp
export ANSIBLE_HOME=$work/ansible-home ANSIBLE_PIPELINING=1
if "$venv/bin/ansible-playbook" -i "$work/inventory.yml" "$deploy/ansible/site.yml" >"$work/ansible.log" 2>&1; then
  pass "ansible-playbook: $(grep -E '^testhost' "$work/ansible.log" | tr -s ' ')"
else
  tail -n 40 "$work/ansible.log"
  die "ansible-playbook failed (log: $work/ansible.log)"
fi

caddy run --adapter caddyfile --config "$root/etc/caddy/Caddyfile" >"$work/caddy.log" 2>&1 &
caddy_pid=$!

# --- one upgrade under load -------------------------------------------------------------------------
summaries=()
secs() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1e6 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1e3 }'; }

upgrade_under_load() { # BACKEND
  local b=$1 client=upg_$1 host=$1.test
  local caddy=http://127.0.0.1:$caddy_port slot_log=$work/upg_$1-blue.log
  local blue_pid token version report=$work/$1.wrk prefix=load-$1-$$ rc rc_wrk t0 t1 upgrade_s
  local -a via=(-H "Host: $host")

  section "$b: $client-blue live on the old release, behind Caddy"
  mkdir -p "$run_dir"
  instance_env "$client-blue"
  env -i "${env_args[@]}" "$slots/$client-blue" migrate >"$slot_log" 2>&1 \
    || { tail -n 20 "$slot_log"; die "$client-blue: agentdesk migrate failed"; }
  env -i "${env_args[@]}" "$slots/$client-blue" serve >>"$slot_log" 2>&1 &
  blue_pid=$!
  children+=("$blue_pid")
  echo "$blue_pid" >"$run_dir/$client-blue.pid"
  wait_code 200 120 "http://127.0.0.1:${port[$b]}/readyz" || { tail -n 20 "$slot_log"; die "$client-blue: /readyz never answered 200"; }
  wait_code 200 15 "${via[@]}" "$caddy/readyz" || { tail -n 20 "$work/caddy.log"; die "$b: /readyz through Caddy never answered 200"; }
  version=$(curl -fsS --max-time 5 "${via[@]}" "$caddy/version") || die "$b: GET /version through Caddy failed"
  if [ "$(jq -r .schema_version <<<"$version")" != "$probe" ]; then
    pass "$b: the old release serves, without $probe: $version"
  else
    die "$b: the old release's /version says $probe already: $version"
  fi
  token=$(curl -fsS --max-time 10 "${via[@]}" -H 'Content-Type: application/json' \
    -d "$(jq -cn --arg e "$admin_email" --arg p "$admin_password" '{email: $e, password: $p}')" \
    "$caddy/api/v1/auth/login" | jq -er .access_token) || die "$b: login as $admin_email through Caddy failed"

  section "$b: wrk through Caddy ($load_threads threads, $load_connections connections); deploy/upgrade after ${load_settle}s"
  LOAD_TOKEN=$token LOAD_PREFIX=$prefix LOAD_REPORT=$report \
    wrk -t "$load_threads" -c "$load_connections" -d "${load_max}s" --timeout 10s --latency \
    -s "$deploy/testing/upgrade-load.lua" -H "Host: $host" "$caddy" >"$work/$b.wrk.log" 2>&1 &
  wrk_pid=$!
  sleep "$load_settle"
  kill -0 "$wrk_pid" 2>/dev/null || { cat "$work/$b.wrk.log"; die "$b: wrk ended early"; }
  t0=$(date +%s%N)
  if "$deploy/upgrade" --plain --root "$root" --ready-timeout 120 "$client" "$work/agentdesk-next" >"$work/$b.upgrade.log" 2>&1; then
    rc=0
  else
    rc=$?
  fi
  t1=$(date +%s%N)
  upgrade_s=$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f", ns / 1e9 }')
  sleep "$load_settle"
  kill -0 "$wrk_pid" 2>/dev/null || { cat "$work/$b.wrk.log"; die "$b: wrk ended before the upgrade was over (its bound is ${load_max}s)"; }
  kill -INT "$wrk_pid"
  if wait "$wrk_pid"; then wrk_pid=; else
    rc_wrk=$?
    wrk_pid=
    cat "$work/$b.wrk.log"
    die "$b: wrk exited $rc_wrk"
  fi
  [ -s "$report" ] || { cat "$work/$b.wrk.log"; die "$b: wrk's script wrote no report ($report)"; }
  sed 's/^/  /' "$work/$b.upgrade.log"

  section "$b: checks"
  if [ "$rc" = 0 ]; then pass "$b: deploy/upgrade exited 0 after ${upgrade_s}s"; else fail "$b: deploy/upgrade exited $rc"; fi
  val() { sed -n "s/^$1=//p" "$report" | sed -n 1p; }
  local requests acked reads_ok statuses bad kind
  requests=$(val requests)
  acked=$(val acked)
  reads_ok=$(val status_200)
  statuses=$(sed -n 's/^status_\([0-9]*\)=\(.*\)/\1: \2/p' "$report" | paste -sd, - | sed 's/,/, /g')
  if [ "${requests:-0}" -ge 200 ] && [ "${acked:-0}" -gt 0 ] && [ "${reads_ok:-0}" -gt 0 ]; then
    pass "$b: $requests requests through Caddy ($(val reads_sent) reads, $(val writes_sent) writes sent; by status: $statuses)"
  else
    fail "$b: too little load to mean anything: ${requests:-0} requests, ${acked:-0} writes acknowledged, ${reads_ok:-0} reads answered"
  fi
  bad=$(sed -n 's/^status_\([0-9]*\)=\(.*\)/\1 \2/p' "$report" | awk '$1 != 200 && $1 != 201 { printf "%s%s x%s", sep, $1, $2; sep = ", " }')
  if [ -z "$bad" ] && [ "$(val errors_status)" = 0 ]; then
    pass "$b: every response 200 (read) or 201 (write)"
  else
    fail "$b: failed responses: ${bad:-none counted by the script} (wrk's non-2xx-or-3xx count: $(val errors_status))"
  fi
  for kind in connect read write timeout; do
    if [ "$(val "errors_$kind")" = 0 ]; then pass "$b: wrk: 0 $kind errors"; else fail "$b: wrk: $(val "errors_$kind") $kind errors"; fi
  done
  version=$(curl -fsS --max-time 5 "${via[@]}" "$caddy/version" || true)
  if jq -e --arg p "$probe" '.schema_version == $p and .database_schema_version == $p' <<<"$version" >/dev/null 2>&1; then
    pass "$b: /version through Caddy: $version"
  else
    fail "$b: /version through Caddy says ${version:-nothing} (want schema_version and database_schema_version $probe)"
  fi
  expect "$b: $client.live says green" [ "$(cat "$slots/$client.live")" = green ]
  # How many API requests the old slot answered after SIGTERM, before Caddy's health check saw it
  # draining (from its log; for information).
  local after_term
  after_term=$(awk '/draining: \/readyz answers 503/ { d = 1 } d && /"path":"\/api\/v1\// { n++ } END { print n + 0 }' "$slot_log")
  if wait "$blue_pid"; then
    pass "$b: the old slot $client-blue drained and exited 0 (it answered $after_term API requests after SIGTERM)"
  else
    fail "$b: the old slot $client-blue exited $?"
  fi
  expect "$b: a backup was taken before the switch" [ -n "$(find "$root/var/lib/agentdesk-backups/$client" -type f 2>/dev/null)" ]

  # The database itself: every acknowledged write is there, none twice, and the probe's table.
  local names=$work/$b.names acked_names=$work/$b.acked missing twice rows table
  cat "$report".acked.* | sort >"$acked_names"
  instance_env "$client-green"
  if [ "$b" = sqlite ]; then
    local db
    db=$(env_value AGENTDESK_DATA_DIR)/agentdesk.db
    sqlite3 "$db" "SELECT name FROM clients WHERE name LIKE '$prefix-%'" | sort >"$names"
    table=$(sqlite3 "$db" "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'upgrade_probe'")
  else
    psql "${database[$b]}" -qXAt -c "SELECT name FROM clients WHERE name LIKE '$prefix-%'" | sort >"$names"
    table=$(psql "${database[$b]}" -qXAt -c "SELECT count(*) FROM pg_tables WHERE tablename = 'upgrade_probe'")
  fi
  rows=$(grep -c . "$names" || true)
  missing=$(comm -23 "$acked_names" "$names" | wc -l)
  twice=$(uniq -d "$names" | wc -l)
  if [ "$(wc -l <"$acked_names")" = "$acked" ] && [ "$rows" -ge "$acked" ] && [ "$missing" = 0 ]; then
    pass "$b: $rows clients in the database, each of the $acked acknowledged writes among them"
  else
    comm -23 "$acked_names" "$names" | sed -n '1,5s/^/  missing: /p'
    fail "$b: $rows clients in the database for $acked acknowledged writes ($(wc -l <"$acked_names") names listed), $missing of them missing"
  fi
  if [ "$twice" = 0 ]; then pass "$b: no write was applied twice"; else fail "$b: $twice names are in the database twice (a write applied twice)"; fi
  if [ "$table" = 1 ]; then pass "$b: the table upgrade_probe exists"; else fail "$b: no table upgrade_probe in the database"; fi

  summaries+=("$(printf '%s: %s requests in %ss (%s req/s), latency p50 %s ms, p99 %s ms, max %s ms; %s writes acknowledged (%s rows); upgrade %ss (%s)' \
    "$b" "$requests" "$(secs "$(val duration_us)")" "$(awk -v n="$requests" -v us="$(val duration_us)" 'BEGIN { printf "%.0f", n / (us / 1e6) }')" \
    "$(ms "$(val latency_p50_us)")" "$(ms "$(val latency_p99_us)")" "$(ms "$(val latency_max_us)")" "$acked" "$rows" "$upgrade_s" \
    "$(grep -o 'ready after [0-9]*s' "$work/$b.upgrade.log" | sed 's/^/new slot /')")")

  # The new slot goes, so that the next database's run has the machine to itself.
  stop_processes "$run_dir/$client-green.pid"
  rm -f "$run_dir/$client-green.pid"
}

for b in "${backends[@]}"; do upgrade_under_load "$b"; done
[ -n "$pg_url" ] || skip "PostgreSQL (AGENTDESK_TEST_POSTGRES_URL is not set)"

section "summary"
for s in "${not_checked[@]}"; do echo "not checked: $s"; done
for s in "${summaries[@]}"; do echo "upgrade under load, $s"; done
echo "deploy upgrade: $passed passed, $failed failed"
[ "$failed" = 0 ]

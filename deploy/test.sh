#!/usr/bin/env bash
# The test of deploy/, on a machine without systemd running and without Docker:
#
#   deploy/test.sh                  # AGENTDESK_BIN=path/to/agentdesk (default target/debug/agentdesk)
#
# 1. installs ansible-core and the linters from PyPI into a venv (AGENTDESK_DEPLOY_VENV, default
#    /tmp/agentdesk-deploy-venv; reused when present);
# 2. runs the playbook (deploy/ansible/site.yml) with -c local for three clients into a temporary
#    root, without systemd (agentdesk_manage_services=false);
# 3. checks what it rendered: `systemd-analyze verify` of every unit instance (no output allowed),
#    `systemd-analyze security --offline=true` (exposure at most 2.5), `caddy validate`, the
#    Prometheus targets, and `agentdesk config check` of every env file (valid, no unknown keys);
# 4. starts the three clients' blue slots (and one client's worker) as processes from their env
#    files and credentials, behind Caddy on loopback; checks /readyz, /livez, /version, /metrics
#    directly and through Caddy, and `agentdesk healthcheck`;
# 5. upgrades one client with deploy/upgrade --plain while requests go through Caddy (all must
#    succeed; the old slot must drain and exit 0; a backup must be taken and verify), and tries an
#    upgrade to a binary that never gets ready (it must fail and leave the old slot live);
# 6. stops everything with SIGTERM (/readyz turns 503 at once; every process exits 0);
#    then runs the role again with agentdesk_manage_services=true and deploy/testing/fake-systemctl
#    as systemctl: it starts the live slots, upgrades one client to a new release and another to a
#    new configuration (blue/green, no failed request through Caddy), and a further run changes
#    nothing;
# 7. lints: shellcheck, hadolint, the compose file against the compose-spec schema, the Caddyfiles,
#    an Ansible syntax check of the example inventory. What cannot run here is listed at the end.
#
# AGENTDESK_DEPLOY_KEEP=1 keeps the temporary folder.
#
# etc and env_args are used by the functions loaded from deploy/upgrade below.
# shellcheck disable=SC2034,SC2154 source-path=SCRIPTDIR
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
bin=${AGENTDESK_BIN:-$repo/target/debug/agentdesk}
venv=${AGENTDESK_DEPLOY_VENV:-/tmp/agentdesk-deploy-venv}

# shellcheck source=testing/lib.sh
. "$deploy/testing/lib.sh"
[ -x "$bin" ] || die "no agentdesk binary at $bin (cargo build, or set AGENTDESK_BIN)"
bin=$(realpath "$bin")
need_tools curl jq caddy systemd-analyze python3 flock setsid

work=$(mktemp -d "${TMPDIR:-/tmp}/agentdesk-deploy-test.XXXXXX")
root=$work/root
copy_binary "$bin" "$work/agentdesk"
bin=$work/agentdesk
etc=$root/etc/agentdesk
slots=$root/opt/agentdesk/slots
run_dir=$root/run/agentdesk
export XDG_DATA_HOME=$work/xdg XDG_CONFIG_HOME=$work/xdg PYTHONWARNINGS=ignore

children=()
caddy_pid=
cleanup() {
  local rc=$?
  stop_processes "${children[@]}" $caddy_pid "$run_dir"/*.pid "$work"/systemd-state/*.pid
  if [ "${AGENTDESK_DEPLOY_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    rm -rf "$root/opt/agentdesk/releases" "$work/agentdesk" "$work/agentdesk-next"
    echo "test.sh: kept $work (without the release binaries)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_env_functions
has_command() { "$bin" --help 2>/dev/null | grep -qE "^  $1 "; }

# --- tools ----------------------------------------------------------------------------------------
section "tools (venv $venv)"
ensure_venv "$venv"
"$venv/bin/ansible-playbook" --version | sed -n 1p
echo "agentdesk: $("$bin" --version) ($bin)"

# --- ports and inventory ----------------------------------------------------------------------------
base=$(free_port_base 40) || die "found no free range of ports"
caddy_port=$((base + 1))
declare -A port=([alpha]=$((base + 10)) [beta]=$((base + 20)) [gamma]=$((base + 30)))
# shellcheck disable=SC2016
gamma_name='Gamma "Labs" & Co \ $HOME `x`'

cat >"$work/inventory.yml" <<EOF
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
    agentdesk_metrics_allow: [192.0.2.1/32]
    agentdesk_prometheus_targets_path: $work/prometheus-targets.json
  hosts:
    testhost:
      agentdesk_clients:
        - name: alpha
          domain: alpha.test
          port: ${port[alpha]}
          version: "0.1.0"
          binary: $bin
          admin_email: admin@alpha.test
          secrets:
            admin_password: alpha-admin-password-1234
            smtp_url: smtp://127.0.0.1:2525
          env:
            AGENTDESK_MAIL_FROM: Alpha Reports <reports@alpha.test>
          resources: {memory_max: 1G, cpu_quota: 100%}
        - name: beta
          domain: beta.test
          port: ${port[beta]}
          version: "0.1.0"
          binary: $bin
          worker: {agents: all}
          backup: {dest: $root/var/lib/agentdesk-backups/beta, keep: 3, schedule: "*-*-* 00/6:00:00"}
        - name: gamma
          domain: gamma.test
          aliases: [www.gamma.test]
          port: ${port[gamma]}
          version: "0.1.0"
          binary: $bin
          instance_name: '$(printf '%s' "$gamma_name" | sed "s/'/''/g")'
          resources: {memory_max: 512M}
          backup: {enabled: false}
EOF

# --- ansible ---------------------------------------------------------------------------------------
section "ansible: render three clients into $root"
export ANSIBLE_CONFIG=$deploy/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP=$work/ansible-tmp
export ANSIBLE_HOME=$work/ansible-home ANSIBLE_PIPELINING=1 ANSIBLE_LOG_PATH=$work/ansible-timing.log
playbook() { "$venv/bin/ansible-playbook" -i "$work/inventory.yml" "$deploy/ansible/site.yml"; }
if playbook >"$work/ansible-1.log" 2>&1; then
  pass "ansible-playbook (first run): $(grep -E '^testhost' "$work/ansible-1.log" | tr -s ' ')"
else
  tail -n 40 "$work/ansible-1.log"
  die "ansible-playbook failed (log: $work/ansible-1.log)"
fi

# --- systemd units -----------------------------------------------------------------------------------
section "systemd units"
vdir=$work/verify
mkdir -p "$vdir/bin"
cp -r "$root/etc/systemd/system" "$vdir/units"
# The units run /opt/agentdesk/slots/INSTANCE; verify wants that executable to exist here.
sed -i "s#/opt/agentdesk/slots/#$vdir/bin/#g" "$vdir/units/"*.service
units=()
services=()
for c in alpha beta gamma; do
  units+=("agentdesk@$c-blue.service" "agentdesk@$c-green.service" "agentdesk-worker@$c.service"
    "agentdesk-backup@$c.service" "agentdesk-backup@$c.timer")
  services+=("agentdesk@$c-blue.service" "agentdesk-worker@$c.service" "agentdesk-backup@$c.service")
  for i in "$c-blue" "$c-green" "$c"; do ln -sf "$bin" "$vdir/bin/$i"; done
done
# A single-instance client without drop-ins (agentdesk@CLIENT), straight from deploy/systemd.
units+=(agentdesk@delta.service)
services+=(agentdesk@delta.service)
ln -sf "$bin" "$vdir/bin/delta"
if out=$(SYSTEMD_UNIT_PATH=$vdir/units: systemd-analyze verify --man=no "${units[@]}" 2>&1) && [ -z "$out" ]; then
  pass "systemd-analyze verify: ${#units[@]} units and their drop-ins, no warnings"
else
  printf '%s\n' "$out"
  fail "systemd-analyze verify"
fi
for u in "${services[@]}"; do
  out=$(SYSTEMD_UNIT_PATH=$vdir/units: systemd-analyze security --offline=true --threshold=25 "$u" 2>&1) && rc=0 || rc=$?
  line=$(printf '%s\n' "$out" | grep 'Overall exposure level' || true)
  score=$(printf '%s' "$line" | sed -E 's/.*: ([0-9.]+).*/\1/')
  if [ "$rc" = 0 ] && [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }'; then
    pass "systemd-analyze security $u: exposure $score"
  else
    printf '%s\n' "$out" | grep -E '✗|Overall|rror' || true
    fail "systemd-analyze security $u: exposure ${score:-?} (at most 2.5)"
  fi
done

# --- Caddy and Prometheus --------------------------------------------------------------------------
section "Caddy and Prometheus"
if out=$(caddy validate --adapter caddyfile --config "$root/etc/caddy/Caddyfile" 2>&1); then
  pass "caddy validate (rendered: $(cd "$root/etc/caddy/agentdesk.d" && echo *))"
else
  printf '%s\n' "$out" | tail -n 5
  fail "caddy validate (rendered)"
fi
if jq -e 'length == 3 and (map(.labels.client) | sort == ["alpha", "beta", "gamma"])
    and all(.[]; .labels.__metrics_path__ == "/metrics" and (.targets | length) == 1)' \
    "$work/prometheus-targets.json" >/dev/null; then
  pass "prometheus-targets.json: one target per client"
else
  fail "prometheus-targets.json"
fi

# --- env files -------------------------------------------------------------------------------------
section "env files and credentials (agentdesk config check)"
for i in alpha alpha-blue alpha-green beta beta-blue gamma-green; do
  instance_env "$i"
  if out=$(env -i "${env_args[@]}" "$bin" config check 2>&1) && ! grep -q 'warning' <<<"$out"; then
    pass "config check $i.env"
  else
    printf '%s\n' "$out" | grep -vE '^  "' | tail -n 5
    fail "config check $i.env (valid, and no unknown setting)"
  fi
done
instance_env gamma-blue
if [ "$(env -i "${env_args[@]}" "$bin" config check 2>/dev/null | sed '$d' | jq -r .instance_name)" = "$gamma_name" ]; then
  pass "an instance name with quotes, \$, \\ and backticks arrives intact"
else
  fail "an instance name with quotes, \$, \\ and backticks arrives intact"
fi
instance_env alpha-blue
if [ "$(env -i "${env_args[@]}" "$bin" config check 2>/dev/null | sed '$d' | jq -r '.smtp_url, .admin_password')" = $'********\n********' ]; then
  pass "secrets reach the binary as AGENTDESK_<KEY>_FILE credentials"
else
  fail "secrets reach the binary as AGENTDESK_<KEY>_FILE credentials"
fi

# --- start -----------------------------------------------------------------------------------------
section "start the blue slots, a worker and Caddy"
mkdir -p "$run_dir"
declare -A pid
start() { # INSTANCE ARGS...: a child process from the instance's env file
  local instance=$1
  shift
  instance_env "$instance"
  env -i "${env_args[@]}" "$slots/$instance" "$@" >"$work/$instance.log" 2>&1 &
  pid[$instance]=$!
  children+=("$!")
  echo "$!" >"$run_dir/$instance.pid"
}
for c in alpha beta gamma; do start "$c-blue" serve; done
# beta's env file has the client's worker bind; its slots run no agents (AGENTDESK_AGENTS=none).
instance_env beta
env -i "${env_args[@]}" "$slots/beta" worker --agents all >"$work/beta-worker.log" 2>&1 &
pid[beta-worker]=$!
children+=("$!")
caddy run --adapter caddyfile --config "$root/etc/caddy/Caddyfile" >"$work/caddy.log" 2>&1 &
caddy_pid=$!

for c in alpha beta gamma; do
  direct=http://127.0.0.1:${port[$c]}
  if wait_code 200 120 "$direct/readyz"; then pass "$c-blue: /readyz 200"; else
    tail -n 20 "$work/$c-blue.log"
    fail "$c-blue: /readyz 200"
    continue
  fi
  code=$(http_code "$direct/livez")
  if [ "$code" = 200 ]; then pass "$c-blue: /livez 200"; elif [ "$code" = 404 ]; then skip "/livez (not in this binary)"; else fail "$c-blue: /livez $code"; fi
  if curl -fsS --max-time 5 "$direct/version" | jq -e 'type == "object"' >/dev/null; then pass "$c-blue: /version JSON"; else fail "$c-blue: /version JSON"; fi
  if [ "$(http_code "$direct/metrics")" = 200 ]; then pass "$c-blue: /metrics 200 on the slot"; else fail "$c-blue: /metrics on the slot"; fi
  if wait_code 200 15 -H "Host: $c.test" "http://127.0.0.1:$caddy_port/readyz"; then pass "$c: /readyz 200 through Caddy"; else fail "$c: /readyz through Caddy"; fi
  if [ "$(http_code -H "Host: $c.test" "http://127.0.0.1:$caddy_port/metrics")" = 403 ]; then
    pass "$c: /metrics refused through Caddy to an address not in agentdesk_metrics_allow"
  else
    fail "$c: /metrics refused through Caddy"
  fi
done
if [ "$(http_code -H "Host: www.gamma.test" "http://127.0.0.1:$caddy_port/readyz")" = 200 ]; then pass "gamma: its alias is served"; else fail "gamma: its alias is served"; fi
if wait_code 200 60 "http://127.0.0.1:$((port[beta] + 2))/readyz"; then pass "beta's worker: /readyz 200 on its worker bind"; else
  tail -n 20 "$work/beta-worker.log"
  fail "beta's worker: /readyz 200"
fi

if has_command healthcheck; then
  instance_env alpha-blue
  if env -i "${env_args[@]}" "$bin" healthcheck >/dev/null 2>&1; then pass "agentdesk healthcheck (alpha-blue): 0"; else fail "agentdesk healthcheck (alpha-blue)"; fi
  if ! env -i "${env_args[@]}" "$bin" healthcheck --url "http://127.0.0.1:$((port[alpha] + 1))/readyz" >/dev/null 2>&1; then
    pass "agentdesk healthcheck of a stopped slot: non-zero"
  else
    fail "agentdesk healthcheck of a stopped slot: non-zero"
  fi
else
  skip "agentdesk healthcheck (not in this binary)"
fi

# --- upgrade ---------------------------------------------------------------------------------------
section "deploy/upgrade --plain: alpha blue -> green while requests go through Caddy"
cp "$bin" "$work/agentdesk-next"
backup_args=()
has_command backup || { backup_args=(--no-backup); skip "backup before the upgrade (no 'backup' command in this binary)"; }
: >"$work/probe.codes"
touch "$work/probe.run"
(
  end=$((SECONDS + 180))
  while [ -e "$work/probe.run" ] && [ "$SECONDS" -lt "$end" ]; do
    http_code -H "Host: alpha.test" "http://127.0.0.1:$caddy_port/version" >>"$work/probe.codes"
    echo >>"$work/probe.codes"
    sleep 0.05
  done
) &
probe_pid=$!
if "$deploy/upgrade" --plain --root "$root" --ready-timeout 120 "${backup_args[@]}" alpha "$work/agentdesk-next" >"$work/upgrade-alpha.log" 2>&1; then
  pass "upgrade alpha: $(tail -n 1 "$work/upgrade-alpha.log")"
else
  cat "$work/upgrade-alpha.log"
  fail "upgrade alpha"
fi
sleep 1
rm -f "$work/probe.run"
wait "$probe_pid" || true
total=$(grep -c . "$work/probe.codes" || true)
bad=$(grep -vc '^200$' "$work/probe.codes" || true)
if [ "$total" -ge 20 ] && [ "$bad" = 0 ]; then
  pass "$total requests through Caddy during the upgrade, all 200"
else
  sort "$work/probe.codes" | uniq -c
  fail "requests through Caddy during the upgrade: $bad of $total not 200"
fi
if wait "${pid[alpha-blue]}"; then pass "the old slot alpha-blue drained and exited 0"; else fail "alpha-blue exited $?"; fi
expect "alpha.live says green" [ "$(cat "$slots/alpha.live")" = green ]
target=$(readlink "$slots/alpha")
case $target in
  ../releases/0.1.0-*/agentdesk) pass "the client's live link points at the new release ($target)" ;;
  *) fail "the client's live link: $target" ;;
esac
expect "alpha-green: /readyz 200" [ "$(http_code "http://127.0.0.1:$((port[alpha] + 1))/readyz")" = 200 ]
expect "alpha-blue: no longer listening" [ "$(http_code "http://127.0.0.1:${port[alpha]}/readyz")" = 000 ]
expect "alpha through Caddy: 200" [ "$(http_code -H "Host: alpha.test" "http://127.0.0.1:$caddy_port/readyz")" = 200 ]
if has_command backup; then
  backup_file=$(find "$root/var/lib/agentdesk-backups/alpha" -type f | sed -n 1p)
  if [ -n "$backup_file" ]; then
    pass "a backup was taken before the switch ($(basename "$backup_file"))"
    instance_env alpha
    if env -i "${env_args[@]}" "$bin" backup verify "$backup_file" >"$work/backup-verify.log" 2>&1; then
      pass "agentdesk backup verify: 0"
    else
      tail -n 5 "$work/backup-verify.log"
      fail "agentdesk backup verify"
    fi
  else
    fail "a backup was taken before the switch"
  fi
fi

section "deploy/upgrade --plain: beta to a binary that never gets ready"
cat >"$work/never-ready" <<'EOF'
#!/bin/sh
# Runs, migrates, but never listens.
case "$1" in serve) exec sleep 300 ;; *) exit 0 ;; esac
EOF
chmod +x "$work/never-ready"
if "$deploy/upgrade" --plain --root "$root" --no-backup --ready-timeout 5 beta "$work/never-ready" >"$work/upgrade-beta.log" 2>&1; then
  fail "upgrade to a binary that never gets ready must fail"
else
  if grep -q "never became ready; beta-blue stays live" "$work/upgrade-beta.log"; then
    pass "upgrade beta fails: $(tail -n 1 "$work/upgrade-beta.log")"
  else
    cat "$work/upgrade-beta.log"
    fail "upgrade beta's message"
  fi
fi
expect "beta.live still says blue" [ "$(cat "$slots/beta.live")" = blue ]
expect "the failed slot beta-green was stopped" [ ! -e "$run_dir/beta-green.pid" ]
expect "beta through Caddy: 200" [ "$(http_code -H "Host: beta.test" "http://127.0.0.1:$caddy_port/readyz")" = 200 ]

# --- stop ------------------------------------------------------------------------------------------
section "SIGTERM"
kill -TERM "${pid[gamma-blue]}"
code=$(curl -s -o "$work/draining.json" -w '%{http_code}' --max-time 2 "http://127.0.0.1:${port[gamma]}/readyz" || true)
if [ "$code" = 503 ]; then pass "gamma-blue: /readyz 503 at once after SIGTERM ($(tr -d "\n" <"$work/draining.json" | cut -c1-120))"; else fail "gamma-blue: /readyz $code after SIGTERM (want 503)"; fi
if [ "$code" = 503 ] && grep -q draining "$work/draining.json"; then pass "gamma-blue: its body says draining"; else fail "gamma-blue: draining in the 503 body"; fi
if [ "$(http_code "http://127.0.0.1:${port[gamma]}/version")" = 200 ]; then pass "gamma-blue: still serves requests while it drains"; else fail "gamma-blue: serves while it drains"; fi
kill -TERM "${pid[beta-blue]}" "${pid[beta-worker]}"
for i in gamma-blue beta-blue beta-worker; do
  if wait "${pid[$i]}"; then pass "$i exited 0"; else fail "$i exited $?"; fi
done
green=$(cat "$run_dir/alpha-green.pid")
kill -TERM "$green"
for _ in $(seq 1 240); do kill -0 "$green" 2>/dev/null || break; sleep 0.25; done
if ! kill -0 "$green" 2>/dev/null; then pass "alpha-green (started by deploy/upgrade) exited after SIGTERM"; else fail "alpha-green still runs 60s after SIGTERM"; fi
rm -f "$run_dir"/*.pid

# --- the role with services -----------------------------------------------------------------------
section "ansible with agentdesk_manage_services=true (deploy/testing/fake-systemctl as systemctl)"
# The stand-in starts and stops the slots as systemd would (ExecStartPre migrate, env file,
# credentials, SIGTERM), so the role's service tasks and deploy/upgrade's systemd mode run for real.
mkdir -p "$work/fakebin"
ln -s "$deploy/testing/fake-systemctl" "$work/fakebin/systemctl"
export FAKE_SYSTEMD_STATE=$work/systemd-state FAKE_SYSTEMD_ROOT=$root
managed_playbook() {
  PATH=$work/fakebin:$PATH "$venv/bin/ansible-playbook" -i "$work/inventory.yml" "$deploy/ansible/site.yml" \
    -e agentdesk_manage_services=true -e agentdesk_install_packages=false
}
live_ready() { # CLIENT SLOT: the slot is live, its process runs, and it answers through Caddy
  local port_of=$((port[$1] + $([ "$2" = green ] && echo 1 || echo 0)))
  [ "$(cat "$slots/$1.live")" = "$2" ] \
    && kill -0 "$(cat "$FAKE_SYSTEMD_STATE/$1-$2.pid" 2>/dev/null || echo 0)" 2>/dev/null \
    && wait_code 200 60 "http://127.0.0.1:$port_of/readyz" \
    && wait_code 200 15 -H "Host: $1.test" "http://127.0.0.1:$caddy_port/readyz"
}
if managed_playbook >"$work/ansible-3.log" 2>&1; then
  pass "ansible-playbook starts the clients: $(grep -E '^testhost' "$work/ansible-3.log" | tr -s ' ')"
else
  tail -n 40 "$work/ansible-3.log"
  fail "ansible-playbook starts the clients"
fi
expect "alpha's live slot (green, since the upgrade) started, on the inventory's release" live_ready alpha green
expect "beta-blue started" live_ready beta blue
expect "gamma-blue started" live_ready gamma blue
expect "the slots, backup timers and beta's worker are enabled" test -e "$FAKE_SYSTEMD_STATE/agentdesk@alpha-green.service.enabled" \
  -a -e "$FAKE_SYSTEMD_STATE/agentdesk-backup@alpha.timer.enabled" -a -e "$FAKE_SYSTEMD_STATE/agentdesk-worker@beta.service.enabled" \
  -a ! -e "$FAKE_SYSTEMD_STATE/agentdesk-backup@gamma.timer.enabled" -a ! -e "$FAKE_SYSTEMD_STATE/agentdesk-worker@alpha.service.enabled"

# A new release for alpha and a configuration change for gamma: both go blue/green.
sed -i -e '0,/version: "0.1.0"/s//version: "0.1.1"/' -e "0,\#binary: $bin\$#s##binary: $work/agentdesk-next#" "$work/inventory.yml"
sed -i 's/^\(          instance_name: .*\)$/\1\n          env: {AGENTDESK_MAX_UPLOAD_MB: "20"}/' "$work/inventory.yml"
backups_before=$(find "$root/var/lib/agentdesk-backups/alpha" -type f | wc -l)
: >"$work/probe.codes"
touch "$work/probe.run"
(
  end=$((SECONDS + 300))
  while [ -e "$work/probe.run" ] && [ "$SECONDS" -lt "$end" ]; do
    for c in alpha gamma; do
      http_code -H "Host: $c.test" "http://127.0.0.1:$caddy_port/version" >>"$work/probe.codes"
      echo >>"$work/probe.codes"
    done
    sleep 0.05
  done
) &
probe_pid=$!
if managed_playbook >"$work/ansible-4.log" 2>&1; then
  pass "ansible-playbook with alpha on 0.1.1 and gamma reconfigured"
else
  tail -n 40 "$work/ansible-4.log"
  fail "ansible-playbook with alpha on 0.1.1 and gamma reconfigured"
fi
sleep 1
rm -f "$work/probe.run"
wait "$probe_pid" || true
total=$(grep -c . "$work/probe.codes" || true)
bad=$(grep -vc '^200$' "$work/probe.codes" || true)
if [ "$total" -ge 20 ] && [ "$bad" = 0 ]; then
  pass "$total requests to alpha and gamma through Caddy meanwhile, all 200"
else
  sort "$work/probe.codes" | uniq -c
  fail "requests through Caddy during the role's upgrades: $bad of $total not 200"
fi
expect "alpha switched to blue" live_ready alpha blue
expect "alpha-blue runs release 0.1.1" [ "$(readlink "$slots/alpha-blue")" = ../releases/0.1.1/agentdesk ]
expect "alpha-green stopped" [ "$(http_code "http://127.0.0.1:$((port[alpha] + 1))/readyz")" = 000 ]
expect "gamma switched to green for its new configuration" live_ready gamma green
instance_env gamma-green
expect "gamma-green has the new setting" [ "$(env -i "${env_args[@]}" "$bin" config check 2>/dev/null | sed '$d' | jq -r .max_upload_mb)" = 20 ]
if has_command backup; then
  expect "agentdesk-backup@alpha ran before alpha's release changed" [ "$(find "$root/var/lib/agentdesk-backups/alpha" -type f | wc -l)" -gt "$backups_before" ]
fi
left_alone() { [ "$(grep -c '^start agentdesk@beta-' "$FAKE_SYSTEMD_STATE/calls.log")" = 1 ] && ! grep -q '^stop agentdesk@beta-' "$FAKE_SYSTEMD_STATE/calls.log"; }
expect "beta, unchanged, was left alone (started once, never stopped)" left_alone
if managed_playbook >"$work/ansible-5.log" 2>&1 && grep -qE '^testhost .* changed=0 .* failed=0' "$work/ansible-5.log"; then
  pass "ansible-playbook once more changes nothing"
else
  grep -E '^(changed|testhost)' "$work/ansible-5.log" || tail -n 20 "$work/ansible-5.log"
  fail "ansible-playbook once more changes nothing"
fi
for i in alpha-blue beta-blue gamma-green; do
  PATH=$work/fakebin:$PATH systemctl stop "agentdesk@$i.service"
done
expect "systemctl stop: every slot exited" [ -z "$(find "$FAKE_SYSTEMD_STATE" -name '*.pid')" ]

# --- lint ------------------------------------------------------------------------------------------
section "lint"
if "$venv/bin/shellcheck" -x "$deploy/upgrade" "$deploy/test.sh" "$deploy/test-upgrade.sh" "$deploy/testing/lib.sh" \
  "$deploy/testing/fake-systemctl" "$deploy/docker/gen-secrets.sh"; then
  pass "shellcheck upgrade, test.sh, test-upgrade.sh, testing/lib.sh, testing/fake-systemctl, docker/gen-secrets.sh"
else
  fail "shellcheck"
fi
if "$venv/bin/hadolint" "$deploy/docker/Dockerfile"; then pass "hadolint docker/Dockerfile"; else fail "hadolint docker/Dockerfile"; fi
if "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$deploy/docker/compose.yaml" >/dev/null; then
  pass "docker/compose.yaml against the compose-spec schema"
else
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$deploy/docker/compose.yaml" || true
  fail "docker/compose.yaml against the compose-spec schema"
fi
if out=$(AGENTDESK_DOMAIN=desk.example.com caddy validate --adapter caddyfile --config "$deploy/docker/Caddyfile" 2>&1); then
  pass "caddy validate docker/Caddyfile"
else
  printf '%s\n' "$out" | tail -n 3
  fail "caddy validate docker/Caddyfile"
fi
mkdir -p "$work/caddy-example"
cp -r "$deploy/caddy/." "$work/caddy-example/"
cp "$work/caddy-example/agentdesk.d/acme.caddy.example" "$work/caddy-example/agentdesk.d/acme.caddy"
cp "$work/caddy-example/agentdesk-options.d/email.caddy.example" "$work/caddy-example/agentdesk-options.d/email.caddy"
if out=$(caddy validate --adapter caddyfile --config "$work/caddy-example/Caddyfile" 2>&1); then
  pass "caddy validate caddy/Caddyfile with its examples"
else
  printf '%s\n' "$out" | tail -n 3
  fail "caddy validate caddy/Caddyfile with its examples"
fi
if (cd "$deploy/ansible" && "$venv/bin/ansible-playbook" -i inventory.example.yml site.yml --syntax-check >"$work/syntax.log" 2>&1); then
  pass "ansible-playbook --syntax-check with inventory.example.yml"
else
  tail -n 10 "$work/syntax.log"
  fail "ansible-playbook --syntax-check"
fi
if "$venv/bin/ansible-inventory" -i "$deploy/ansible/inventory.example.yml" --list >/dev/null 2>&1; then
  pass "inventory.example.yml parses"
else
  fail "inventory.example.yml parses"
fi
if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
  skip "docker build of docker/Dockerfile (a full release build: run it by hand)"
else
  skip "docker build of docker/Dockerfile (no Docker daemon)"
fi
if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
  mkdir -p "$work/compose"
  cp "$deploy/docker/compose.yaml" "$deploy/docker/Caddyfile" "$deploy/docker/gen-secrets.sh" "$work/compose/"
  "$work/compose/gen-secrets.sh" >/dev/null
  if docker compose -f "$work/compose/compose.yaml" config -q; then pass "docker compose config"; else fail "docker compose config"; fi
else
  skip "docker compose config (the compose plugin is not installed; checked against the schema instead)"
fi
skip "systemd itself running the units: DynamicUser=, LoadCredential=, the sandbox at run time (no systemd here; a stand-in started the processes)"
skip "Caddy's automatic TLS (no public DNS here; the test serves plain HTTP on loopback)"

section "summary"
for s in "${not_checked[@]}"; do echo "not checked: $s"; done
echo "deploy: $passed passed, $failed failed"
[ "$failed" = 0 ]

